"""MNTD (Xu et al. 2021, `mntd` and its one-class variant `mntd-oc`) and `output-stats-meta` (the detector
registered as "mntd" before) on the digits zoos: held-out model-detection AUROC with bootstrap 95% CIs.

    .venv/bin/python benchmarks/mntd_digits.py                       # dev + bench zoos, the defaults
    .venv/bin/python benchmarks/mntd_digits.py --sweep               # also the dev-zoo study behind the defaults
    .venv/bin/python benchmarks/mntd_digits.py --cold                # only: time a cold build of the default MNTD

Zoos: `--dev` (default /work/zoos/digits-dev, else the cached `digits-dev`) is where MNTD's scale-downs were
chosen (`--sweep`: shadow recipe x number of shadows, scored on every model of the dev zoo, which MNTD may use
since it never reads a zoo label, and on its held-out split); `--bench` (default: `digits-bench` as `trojanbench
run` caches it) is scored with those defaults and nothing is chosen from it. MNTD and MNTD-OC are built from
their own shadow models only; output-stats-meta (and the learned baselines) are fitted on each zoo's training
split, as the detect track does. Writes benchmarks/results/mntd_digits.json (`--cold`: mntd_digits_cold.json) with
its provenance (`write_benchmark`: run id, commit, config, cores, torch threads, date). A run without --sweep keeps
the dev study of an earlier run that recorded provenance, under that run's provenance (`sweep_provenance`).

Run time (1 torch thread, loaded 2-core machine): with the shadow cache warm (`$TROJANBENCH_CACHE/shadows`), a few
minutes for both zoos; cold, add the default MNTD's shadows (320, about 1.2 CPU-seconds each: 6-7 CPU-minutes, about
half an hour wall on a machine shared with other jobs) and output-stats-meta's shadow zoo. `--sweep` adds the Adam
recipe's shadows (another 320 when cold) and 5 meta-classifier seeds per variant (seconds each, warm).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from trojanbench.data import load_dataset
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import auroc, bootstrap
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect import DETECTORS
from trojanbench.tools.detect.jumbo import JumboConfig, shadow_states, shadow_trojan
from trojanbench.tools.detect.mntd import DEFAULT_SHADOWS, MNTD, MetaConfig, MNTDOneClass
from trojanbench.tools.detect.shadow import fresh_copy
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model

OUT = Path(__file__).parent / "results" / "mntd_digits.json"
OUT_COLD = Path(__file__).parent / "results" / "mntd_digits_cold.json"
PAPER = {"shadows_train_per_kind": 2048, "shadows_val_per_kind": 256, "shadow_epochs": 100,
         "shadow_optimizer": "Adam lr 1e-3, batch 100, no augmentation", "defender_data": "2% of the training set",
         "queries": 10, "hidden": 20, "meta_epochs": 10, "meta_optimizer": "Adam lr 1e-3, one shadow per step",
         "query_tuning": True, "outputs": "raw logits, concatenated"}
# Shadow recipes compared on the dev zoo (`--sweep`): the paper's Adam (lr 1e-3, no augmentation) with batch 32
# and 30 epochs (at batch 100 it needs 60 epochs for 96% accuracy, twice the cost), and SGD as the audited CNNs
# are trained (momentum, weight decay, 1-pixel shifts; the default).
RECIPES = {
    "adam-b32-e30": JumboConfig(epochs=30, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.0, translate=0),
    "sgd-b32-e30-t1": JumboConfig(epochs=30, batch_size=32, optimizer="sgd", lr=0.05, weight_decay=5e-4, translate=1),
}
SWEEP_COUNTS = [16, 32, 64, 128]
BASELINES = ["entropy", "final-layer-outlier", "weight-stats", "random"]


def cached_zoo(name: str) -> Path:
    from trojanbench.bench import zoo_cache_dir
    from trojanbench.zoo.plan import load_zoo_config

    return zoo_cache_dir(load_zoo_config(name))


def estimate(labels, scores, keep=None) -> list[float]:
    labels, scores = np.asarray(labels), np.asarray(scores)
    if keep is not None:
        labels, scores = labels[keep], scores[keep]
    est = bootstrap(auroc, labels, scores, n_boot=1000, seed=0, stratify=labels)
    return [round(est.value, 3), round(est.low, 3), round(est.high, 3)]


def aurocs(jobs, scores) -> dict:
    labels = np.array([int(j.trojaned) for j in jobs])
    crude = np.array([j.trojaned and not j.trojan.insidious for j in jobs])
    out = {"all": estimate(labels, scores), "crude": estimate(labels, scores, (labels == 0) | crude),
           "insidious": estimate(labels, scores, (labels == 0) | (labels == 1) & ~crude)}
    for kind in sorted({j.trojan.trigger.kind for j in jobs if j.trojaned}):
        keep = np.array([not j.trojaned or j.trojan.trigger.kind == kind for j in jobs])
        out[f"kind={kind}"] = round(auroc(labels[keep], np.asarray(scores)[keep]), 3)
    return out


def run_mntd(det, models, ctx) -> tuple[list[float], dict]:
    """Scores of a shadow-trained detector; the first call builds (or loads) the meta-classifier and is timed apart."""
    cpu, start = time.process_time(), time.perf_counter()
    scores = [det.detect(models[0], ctx).score]
    build = {"wall_seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
             **{k: v for k, v in asdict(det.builds[-1]).items() if k in ("shadows_trained", "meta_cached", "val_auroc")}}
    per_model = []
    for m in models[1:]:
        t = time.perf_counter()
        scores.append(det.detect(m, ctx).score)
        per_model.append(time.perf_counter() - t)
    build["seconds_per_model_after_build"] = round(float(np.median(per_model)), 4)
    return scores, build


def load_split(zoo: Zoo, split: str | None):
    rows = zoo.models(split=split)
    return [j for j, _, _ in rows], [load_model(f)[0] for _, f, _ in rows]


def score_zoo(zoo_dir: Path, sweep: bool) -> dict:
    zoo = Zoo(zoo_dir)
    _, ctx = detection_context(zoo)
    test_jobs, test_models = load_split(zoo, "test")
    train_jobs, train_models = load_split(zoo, "train")
    entry = {"path": str(zoo_dir), "test_models": len(test_jobs), "test_trojaned": sum(j.trojaned for j in test_jobs),
             "test_clean": sum(not j.trojaned for j in test_jobs), "all_models": len(test_jobs) + len(train_jobs),
             "test_crude_trojaned": sum(j.trojaned and not j.trojan.insidious for j in test_jobs),
             "train_models": len(train_jobs), "detectors": {}}
    for name in ["mntd", "mntd-oc"]:
        det = DETECTORS.get(name)()
        scores, build = run_mntd(det, test_models, ctx)
        entry["detectors"][name] = {"held_out": aurocs(test_jobs, scores), "build": build}
        # MNTD never reads a label, so every model of the zoo is a fair test set for it
        all_scores = scores + [det.detect(m, ctx).score for m in train_models]
        entry["detectors"][name]["all_models"] = aurocs(test_jobs + train_jobs, all_scores)
        print(zoo.config().name, name, entry["detectors"][name], flush=True)
    for name in ["output-stats-meta", *[b for b in BASELINES if b in DETECTORS.names()]]:
        det = DETECTORS.get(name)()
        start = time.perf_counter()
        if det.learned:
            det.fit(train_models, [int(j.trojaned) for j in train_jobs], ctx)
        fit = time.perf_counter() - start
        scores = [det.detect(m, ctx).score for m in test_models]
        entry["detectors"][name] = {"held_out": aurocs(test_jobs, scores), "fit_seconds": round(fit, 1),
                                    "learned": det.learned}
        print(zoo.config().name, name, entry["detectors"][name], flush=True)
    if sweep:
        entry["sweep"] = dev_sweep(test_jobs, test_models, train_jobs, train_models, ctx)
    return entry


def dev_sweep(test_jobs, test_models, train_jobs, train_models, ctx) -> dict:
    """Shadow recipe x shadow count (5 meta-classifier seeds at 32 and 128 per kind, 1 elsewhere), and at the
    defaults MNTD without query tuning and MNTD-OC: AUROC over every dev model (MNTD reads no label) and over
    the held-out split."""
    out = {}
    jobs, models = test_jobs + train_jobs, test_models + train_models
    variants = [(f"{recipe}/{n}", MNTD, replace(cfg, train=n, val=32), MetaConfig(), range(5 if n in (32, 128) else 1))
                for recipe, cfg in RECIPES.items() for n in SWEEP_COUNTS]
    variants += [("default/no-query-tuning", MNTD, DEFAULT_SHADOWS, MetaConfig(query_tuning=False), range(5)),
                 ("default/mntd-oc", MNTDOneClass, DEFAULT_SHADOWS, MetaConfig(), range(5))]
    for name, cls, shadows, meta, seeds in variants:
        runs = []
        for seed in seeds:
            det = cls(shadows=shadows, meta=meta)
            scores, build = run_mntd(det, models, replace(ctx, seed=seed))
            runs.append({"seed": seed, "all_models": aurocs(jobs, scores)["all"][0],
                         "held_out": aurocs(test_jobs, scores[:len(test_jobs)])["all"][0],
                         "best_val_auroc": round(max(build["val_auroc"]), 3) if build["val_auroc"] else None,
                         "build_cpu_seconds": build["cpu_seconds"]})
        all_models = [r["all_models"] for r in runs]
        out[name] = {"all_models_mean": round(float(np.mean(all_models)), 3),
                     "all_models_sd": round(float(np.std(all_models)), 3), "runs": runs}
        print("sweep", name, out[name], flush=True)
    for recipe, cfg in RECIPES.items():
        out[f"{recipe}/shadow_quality"] = shadow_quality(test_models[0], ctx, cfg)
    return out


def shadow_quality(template, ctx, cfg: JumboConfig, n: int = 16) -> dict:
    """Clean accuracy of the first n benign and n jumbo shadows on the digits test images the auditor does not
    hold, and the jumbo shadows' attack success rate there (non-target images, stamped)."""
    ds = load_dataset("digits")
    x, y = ds.x_test[len(ctx.x_clean):], ds.y_test[len(ctx.x_clean):]
    base = fresh_copy(template, 0).eval()
    acc, asr = [], []
    for kind in ("benign", "jumbo"):
        states, _ = shadow_states(template, ctx.x_clean, ctx.y_clean, ctx.num_classes, cfg, kind, n)
        for i, state in enumerate(states):
            base.load_state_dict(state)
            with torch.no_grad():
                acc.append(float((base(x).argmax(1) == y).float().mean()))
                if kind == "jumbo":
                    trojan = shadow_trojan(cfg, kind, i, tuple(x.shape[1:]), ctx.num_classes)
                    keep = y != trojan.target
                    asr.append(float((base(trojan.apply(x[keep])).argmax(1) == trojan.target).float().mean()))
    return {"shadows": 2 * n, "clean_accuracy": round(float(np.mean(acc)), 3),
            "jumbo_attack_success_rate": round(float(np.mean(asr)), 3),
            "jumbo_asr_below_0.5": int(np.sum(np.array(asr) < 0.5))}


def cold_build(zoo_dir: Path) -> dict:
    """The default MNTD built from nothing (a fresh cache): the one-off cost a first run pays."""
    zoo = Zoo(zoo_dir)
    _, ctx = detection_context(zoo)
    model = load_model(zoo.models(split="test")[0][1])[0]
    with tempfile.TemporaryDirectory() as tmp:
        det = MNTD(cache=tmp)
        cpu, start = time.process_time(), time.perf_counter()
        det.detect(model, ctx)
        return {"shadows_trained": det.builds[-1].shadows_trained, "wall_seconds": round(time.perf_counter() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu, 1), "load_average_after": os.getloadavg(),
                "note": "wall time on a machine shared with other jobs; cpu_seconds is the work done by this process"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", default=None, help="the dev zoo (default /work/zoos/digits-dev or the cached one)")
    ap.add_argument("--bench", default=None, help="the scored zoo (default: digits-bench as `trojanbench run` caches it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="also the dev-zoo study behind the defaults")
    ap.add_argument("--cold", action="store_true", help=f"only time a cold build of the default MNTD (into {OUT_COLD.name})")
    ap.add_argument("--out", default=None, help=f"default {OUT.name}, with --cold {OUT_COLD.name}")
    args = ap.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    dev = Path(args.dev) if args.dev else next((p for p in [Path("/work/zoos/digits-dev"), cached_zoo("digits-dev")]
                                                if (p / "models").is_dir()), None)
    bench = Path(args.bench) if args.bench else cached_zoo("digits-bench")
    zoos = [("digits-dev", dev), ("digits-bench", bench)]
    for name, path in zoos[:1] if args.cold else zoos:
        if path is None or not (path / "models").is_dir():
            raise SystemExit(f"zoo {name} not found at {path}: build it (`trojanbench zoo build --config {name}`)")
    config = {"dev": str(dev), "bench": str(bench) if not args.cold else None, "threads": args.threads,
              "sweep": args.sweep, "cold": args.cold,
              "ours": {"shadows": asdict(DEFAULT_SHADOWS), "meta": asdict(MetaConfig())}}
    out = Path(args.out) if args.out else (OUT_COLD if args.cold else OUT)
    load_at_start = os.getloadavg()
    if args.cold:
        result = {"load_average_at_start": load_at_start, "threads": args.threads, "cold_build": cold_build(dev)}
    else:
        result = {"load_average_at_start": load_at_start, "paper": PAPER,
                  "ours": {"shadows": asdict(DEFAULT_SHADOWS), "meta": asdict(MetaConfig())}, "zoos": {}}
        for name, path in zoos:
            result["zoos"][name] = score_zoo(path, args.sweep and name == "digits-dev")
        previous = json.loads(out.read_text()) if out.is_file() else {}
        if "provenance" in previous:  # the dev study of an earlier run, kept under that run's provenance
            for name, entry in result["zoos"].items():
                old = previous.get("zoos", {}).get(name, {})
                if "sweep" not in entry and "sweep" in old:
                    entry["sweep"] = old["sweep"]
                    entry["sweep_provenance"] = old.get("sweep_provenance", previous["provenance"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark(out, result, config=config, started=started)
    print(f"wrote {out}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
