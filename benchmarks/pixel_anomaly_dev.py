"""Which clean-image statistic should the model-free pixel-anomaly baseline use? Decided on the DEV zoo only.

    .venv/bin/python benchmarks/pixel_anomaly_dev.py [ZOO_DIR] [--images N]

ZOO_DIR defaults to /work/zoos/digits-dev (`trojanbench zoo build --config digits-dev`). For every trojaned model
it draws the triggered images exactly as the diagnose track does (`n_images` clean test images the attack applies
to, triggered with the same generator), hands the attributors the clean reference sample the track hands them
(`reference_sample` of the clean training images) and scores each statistic of `pixel-anomaly` (mean, median,
z-score) beside the Sobel baseline with the track's metrics (`score_maps`): mean per model, then mean over models
with a 95% bootstrap CI, overall and per trigger kind. The rule, fixed before looking: the default statistic is
the one with the highest mean correlation over all trojaned models (the track's headline metric), strict pointing
game breaking ties within 0.01. Writes benchmarks/results/pixel_anomaly_dev.json.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np
import torch

from trojanbench.implant import prepare
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import bootstrap, mean
from trojanbench.tasks.diagnose import METRICS, footprints, score_maps
from trojanbench.tools.attribute import ATTRIBUTORS, reference_sample
from trojanbench.tools.attribute.baselines import STATISTICS
from trojanbench.train.evaluate import clean_test_mask
from trojanbench.trojans.poison import attack_mask, relabel
from trojanbench.zoo.build import Zoo


def _est(values: list[float]) -> dict:
    v = np.asarray([x for x in values if not math.isnan(x)])
    e = bootstrap(mean, v, n_boot=1000, seed=0)
    f = (lambda x: None if math.isnan(x) else round(float(x), 4))
    return {"value": f(e.value), "low": f(e.low), "high": f(e.high), "n": e.n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default="/work/zoos/digits-dev")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="pixel_anomaly_dev", help="a name under benchmarks/results/, or a .json path")
    args = ap.parse_args()
    started, start = time.time(), time.perf_counter()
    zoo = Zoo(args.zoo)
    ds = zoo.dataset()
    ref = reference_sample(ds.x_train, seed=args.seed)
    tools = {f"pixel-anomaly[{s}]": ATTRIBUTORS.get("pixel-anomaly")(seed=args.seed, statistic=s).fit_reference(ref)
             for s in STATISTICS}
    tools["sobel"] = ATTRIBUTORS.get("sobel")(seed=args.seed)
    rows: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    models = [(j, c) for j, _, c in zoo.models() if j.trojaned]
    for job, card in models:
        trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
        poison = job.trojan.poison
        keep = attack_mask(ds.y_test, poison) & clean_test_mask(trigger, ds.x_test)
        idx = torch.nonzero(keep).flatten()
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(args.seed))[:args.images]]
        x, y = ds.x_test[idx], ds.y_test[idx]
        x_trig, mask = trigger.apply_with_mask(x, generator=torch.Generator().manual_seed(args.seed))
        target = relabel(y, poison, ds.num_classes)
        soft, binary = footprints(x, x_trig, mask)
        for name, tool in tools.items():
            scores = score_maps(tool.attribute(None, x_trig, target), soft, binary)
            rows[name].append((job.trojan.trigger.kind, {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                                                         for m, v in scores.items()}))
    result = {}
    for name, per_model in rows.items():
        kinds = sorted({k for k, _ in per_model})
        result[name] = {m: {"all": _est([r[m] for _, r in per_model]),
                            **{f"kind={k}": _est([r[m] for kk, r in per_model if kk == k]) for k in kinds}}
                        for m in METRICS}
    corr = {s: result[f"pixel-anomaly[{s}]"]["correlation"]["all"]["value"] for s in STATISTICS}
    strict = {s: result[f"pixel-anomaly[{s}]"]["pointing_game_strict"]["all"]["value"] or 0.0 for s in STATISTICS}
    best = max(corr.values())
    chosen = max((s for s in STATISTICS if corr[s] >= best - 0.01), key=lambda s: (strict[s], corr[s]))
    out = {"zoo": str(args.zoo), "trojaned_models": len(models), "images_per_model": args.images,
           "reference": f"reference_sample(x_train, n={len(ref)}, seed={args.seed})", "methods": result,
           "rule": "highest mean correlation over all trojaned models; strict pointing game breaks ties within 0.01",
           "chosen_statistic": chosen, "seconds": round(time.perf_counter() - start, 1)}
    path = write_benchmark(args.out, out, config=vars(args), seed=args.seed, started=started)
    for name, r in result.items():
        print(f"{name:24s} " + "  ".join(f"{m} {r[m]['all']['value']}" for m in METRICS))
    print("chosen:", chosen, "->", path)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
