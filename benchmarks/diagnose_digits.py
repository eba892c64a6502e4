"""Attribution on the default digits zoo: does each map point at the trigger, and does it depend on the model?

    .venv/bin/python benchmarks/diagnose_digits.py [ZOO_DIR] [--images N] [--max-models N]

ZOO_DIR defaults to /tmp/digits-zoo (build one with `trojanbench zoo build --config digits-zoo --out DIR`).
Runs `run_diagnose_track` on every trojaned model of the zoo and writes
benchmarks/results/diagnose_digits.json (per method: correlation, pointing game, mask AUROC overall and per
trigger kind / crude / insidious with 95% bootstrap CIs over models, the randomized-model sanity check, seconds
per model) and one PNG panel per trigger kind under benchmarks/results/diagnose_digits/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from trojanbench.tasks.diagnose import SANITY_THRESHOLD, run_diagnose_track

HERE = Path(__file__).parent


def _est(e):
    f = (lambda v: None if math.isnan(v) else round(v, 4))
    return {"value": f(e.value), "low": f(e.low), "high": f(e.high), "n": e.n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default="/tmp/digits-zoo")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-models", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "diagnose_digits.json"))
    args = ap.parse_args()
    out = Path(args.out)
    images = out.with_suffix("")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scores = run_diagnose_track(args.zoo, Path(tmp) / "r.sqlite", n_images=args.images, images_dir=images,
                                    max_models=args.max_models)
    wall = time.perf_counter() - start
    methods = {}
    for s in scores:
        m = s.metrics
        methods[s.tool] = {
            "baseline": s.is_baseline,
            "seconds_per_model": round(m["seconds_per_model"].value, 4),
            "sanity_similarity": _est(m["sanity_similarity"]),
            "sanity_pass": bool(m["sanity_pass"].value == 1.0),
            "metrics": {k: _est(v) for k, v in sorted(m.items()) if k not in ("seconds_per_model", "sanity_similarity",
                                                                                 "sanity_pass")},
        }
    key = "pointing_game[kind=patch]"
    ranked = sorted(methods, key=lambda t: -(methods[t]["metrics"].get(key, {}).get("value") or -1))
    result = {
        "zoo": args.zoo, "n_images_per_model": args.images, "sanity_threshold": SANITY_THRESHOLD,
        "wall_seconds": round(wall, 1), "torch_threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "ranked_by": key, "ranking": ranked, "methods": methods,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'method':22s} {'corr patch':>11s} {'PG patch':>9s} {'PG strict':>9s} {'AUROC patch':>11s} {'corr other':>11s} "
          f"{'sanity sim':>10s} {'s/model':>8s}")
    for t in ranked:
        mm = methods[t]["metrics"]
        other = [mm[k]["value"] for k in mm if k.startswith("correlation[kind=") and k != "correlation[kind=patch]"
                 and mm[k]["value"] is not None]
        print(f"{t:22s} {mm['correlation[kind=patch]']['value']:11.3f} {mm[key]['value']:9.3f} "
              f"{mm['pointing_game_strict[kind=patch]']['value']:9.3f} "
              f"{mm['mask_auroc[kind=patch]']['value']:11.3f} {sum(other) / max(len(other), 1):11.3f} "
              f"{methods[t]['sanity_similarity']['value']:10.3f} {methods[t]['seconds_per_model']:8.3f}")
    print(f"wall {wall:.0f} s; written {out} and {images}/")


if __name__ == "__main__":
    main()
