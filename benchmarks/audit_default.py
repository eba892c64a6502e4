"""Audits on the digits-bench zoo, and how well calibrated every model-level detector is there.

    .venv/bin/python benchmarks/audit_default.py          # about 15 minutes on 2 cores with the zoo cached

1. One benchmark run of the detect and repair tracks on the digits-bench zoo (built or reused from the
   cache) into runs/audit-default/reference.sqlite: the reference every audit below calibrates on.
2. `calibration.json`: per model-level detector on the zoo's held-out split, the out-of-fold Platt probabilities'
   cross-entropy, Brier score and ECE with bootstrap intervals (audit/calibrate.py; a trojan and its clean twin
   are left out of the fit that scores them), beside the raw-score AUROC and the TrojAI cross-entropy bar.
3. `audit_default.json`: `trojanbench audit` (the library call) on every held-out trojan and its clean twin, each
   with its own unit left out of the reference: the verdict, P(trojaned), the headline detector, the predicted
   target against the true one. The first held-out trojan in plan order (and its twin) get the full audit
   (synthesized triggers, attribution maps, repairs; their reports in runs/audit-default/); that trojan is also
   audited as a bare safetensors state dict with an import-path architecture and as a BackdoorBench attack
   result, which must give the same scores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from trojanbench.audit import _units, audit, reference_stats
from trojanbench.audit.calibrate import TROJAI_CE_BAR
from trojanbench.bench import run_benchmark, zoo_cache_dir
from trojanbench.results import ResultsStore
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import wilson
from trojanbench.tools.detect import DETECTORS
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model


def est(e) -> dict | None:
    return None if e is None else {"value": round(e.value, 6), "low": round(e.low, 6), "high": round(e.high, 6),
                                   "n": e.n, "method": e.method}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/audit-default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    out = Path(args.out)
    started = time.time()
    cfg = load_zoo_config("digits-bench")
    ref = run_benchmark(out / "reference", config="digits-bench", tracks=["detect", "repair"], seed=args.seed,
                        report=False, results=out / "reference.sqlite")
    zoo = Zoo(ref.zoo)
    assert Path(ref.zoo) == zoo_cache_dir(cfg)
    with ResultsStore(ref.results) as store:
        rows = store.rows(ref.run_id)
    units = _units(zoo)
    names = DETECTORS.names()
    config = {"zoo": cfg.name, "zoo_folder": str(zoo.root), "seed": args.seed, "n_boot": args.n_boot, "detectors": names}

    calib = []
    for name in names:
        s = reference_stats(rows, name, units, (), args.n_boot, args.seed)
        calib.append({"tool": name, "role": "baseline" if getattr(DETECTORS.get(name), "is_baseline", False) else "tool",
                      "n_clean": s["n_clean"], "n_trojaned": s["n_trojaned"], "auroc": round(s["auroc"], 6),
                      **{k: est(v) for k, v in s["calibration"].items()}, "target_accuracy": est(s["target_accuracy"])})
    calib.sort(key=lambda r: r["cross_entropy"]["value"])
    write_benchmark("calibration", {
        "reference_run": ref.run_id, "population": f"zoo {cfg.name}, held-out split", "trojai_ce_bar": TROJAI_CE_BAR,
        "method": "Platt scaling with smoothed targets; each model's probability from a curve fitted without it and "
                  "its clean twin; 95% bootstrap intervals stratified by label", "detectors": calib},
        config=config, run_id=ref.run_id, seed=args.seed, started=started)

    test = zoo.models(split="test")
    by_id = {j.id: (j, f, c) for j, f, c in test}
    trojans = [(j, f, c) for j, f, c in test if j.trojaned and j.twin in by_id]
    audits = []
    first, foreign = True, []
    for job, folder, card in trojans:
        twin_job, twin_folder, twin_card = by_id[job.twin]
        for j, f, c in ((job, folder, card), (twin_job, twin_folder, twin_card)):
            full = first
            res = audit(f, "digits", out / ("first-" + ("trojan" if j.trojaned else "twin") if full else f"m-{c.id}"),
                        zoo=zoo.root, reference=ref.results, seed=args.seed, n_boot=args.n_boot,
                        synthesizers=None if full else [], attributors=None if full else [])
            true_target = j.trojan.poison.target if j.trojaned else None
            audits.append({"model": c.id, "job": j.id, "trojaned": j.trojaned,
                           "kind": j.trojan.trigger.kind if j.trojaned else None,
                           "insidious": bool(j.trojaned and j.trojan.insidious), "p_trojaned": round(res.p_trojaned, 6),
                           "verdict": res.verdict, "right": res.verdict == ("trojaned" if j.trojaned else "clean"),
                           "headline": res.headline, "left_out": res.left_out,
                           "target": None if res.target is None else res.target["label"], "true_target": true_target,
                           "target_right": None if true_target is None or res.target is None else res.target["label"] == true_target,
                           "reconstructions": [{"tool": r.tool, "transfer_asr": round(r.transfer_asr, 6)} for r in res.reconstructions],
                           "repairs": [{"tool": r["tool"], "asr": est(r["asr"]), "clean_cost": est(r["clean_cost"])}
                                       for r in res.repairs[:3]],
                           "seconds": round(res.seconds, 2), "full": full})
            print(f"{c.id} trojaned={j.trojaned} P={res.p_trojaned:.3f} {res.verdict} target={audits[-1]['target']}")
            if full and j.trojaned:
                first_trojan = res
        if first:  # the same trojan as a bare state dict (import-path architecture) and as a BackdoorBench file
            model, _ = load_model(folder)
            files = out / "foreign"
            files.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, files / "model.safetensors")
            torch.save({"model_name": card.arch, "num_classes": 10, "img_size": [16, 16, 1], "clean_data": "digits",
                        "model": model.state_dict()}, files / "attack_result.pt")
            store_scores = [(d.tool, d.score) for d in first_trojan.detectors]
            foreign = []
            for fmt, path, kw in (("safetensors", files / "model.safetensors",
                                   {"arch": "trojanbench.models.cnn:cnn", "arch_params": card.arch_kwargs}),
                                  ("backdoorbench", files / "attack_result.pt",
                                   {"arch_params": {k: v for k, v in card.arch_kwargs.items() if k in ("width", "depth")}})):
                r = audit(path, "digits", out / f"foreign-{fmt}", zoo=zoo.root, reference=ref.results, seed=args.seed,
                          n_boot=args.n_boot, synthesizers=[], attributors=[], **kw)
                foreign.append({"format": fmt, "arch": r.model["arch"], "p_trojaned": round(r.p_trojaned, 6),
                                "verdict": r.verdict, "target": None if r.target is None else r.target["label"],
                                "recognised_as": r.left_out,
                                "same_scores_as_store_format": [(d.tool, d.score) for d in r.detectors] == store_scores})
            first = False
    n = len(audits)
    right = sum(a["right"] for a in audits)
    targets = [a["target_right"] for a in audits if a["target_right"] is not None]
    summary = {"audits": n, "verdicts_right": right, "verdict_accuracy": est(wilson(right, n)),
               "trojans_right": sum(a["right"] for a in audits if a["trojaned"]),
               "clean_right": sum(a["right"] for a in audits if not a["trojaned"]),
               "targets_right": sum(targets), "target_accuracy": est(wilson(sum(targets), len(targets))),
               "first_pair_right": all(a["right"] for a in audits[:2]),
               "first_trojan_target_right": audits[0]["target_right"]}
    path = write_benchmark("audit_default", {"reference_run": ref.run_id, "population": f"zoo {cfg.name}, held-out split: "
                                             f"{len(trojans)} trojans and their clean twins", "summary": summary,
                                             "foreign_formats": foreign, "audits": audits},
                           config=config, run_id=ref.run_id, seed=args.seed, started=started)
    print(summary, "\n->", path)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
