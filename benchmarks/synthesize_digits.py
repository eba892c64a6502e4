"""Feature synthesis on every trojan of a patch-heavy digits zoo: transfer ASR (with the clean-twin control) and
the 8-way multiple-choice accuracy of the independent judge, per method and per trigger kind, with 95% CIs.

    .venv/bin/python benchmarks/synthesize_digits.py [ZOO_DIR] [--tools a,b] [--max-models N]

ZOO_DIR defaults to a zoo built from benchmarks/synth-zoo.toml under $TROJANBENCH_CACHE (built on first use,
about 2 minutes). No synthesizer or judge is fitted on the zoo, so every trojan is scored (both splits).
Writes benchmarks/results/synthesize_digits.json, and the survey question bank (about 12 MB of PNGs) to
runs/synthesize_digits-bank/, which `trojanbench survey serve` can show to people.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from trojanbench.bench import zoo_cache_dir
from trojanbench.tasks.synthesize import run_synthesize_track
from trojanbench.utils import library_versions
from trojanbench.zoo.build import build_zoo
from trojanbench.zoo.plan import load_zoo_config

HERE = Path(__file__).parent


def _est(e):
    f = (lambda v: None if math.isnan(v) else round(v, 4))
    return {"value": f(e.value), "low": f(e.low), "high": f(e.high), "n": e.n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--tools", default=None)
    ap.add_argument("--max-models", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "synthesize_digits.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = args.zoo
    start = time.perf_counter()
    if zoo is None:
        cfg = load_zoo_config(HERE / "synth-zoo.toml")
        zoo = zoo_cache_dir(cfg)
        build_zoo(cfg, zoo)  # resumable: finished models are kept
    built = time.perf_counter() - start
    out = Path(args.out)
    bank = Path("runs") / (out.stem + "-bank")
    shutil.rmtree(bank, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        scores = run_synthesize_track(zoo, Path(tmp) / "r.sqlite", tools=args.tools.split(",") if args.tools else None,
                                      max_models=args.max_models, bank=bank)
    methods = {s.tool: {"baseline": s.is_baseline, "seconds_per_model": round(s.metrics["seconds_per_model"].value, 3),
                        "metrics": {k: _est(v) for k, v in sorted(s.metrics.items()) if k != "seconds_per_model"}}
               for s in scores}
    result = {
        "command": "python benchmarks/synthesize_digits.py" + (f" {args.zoo}" if args.zoo else ""),
        "zoo": str(zoo), "trojans": scores[0].metrics["transfer_asr"].n, "chance_mc": 1 / 8,
        "ranked_by_mc_patch": sorted(methods, key=lambda t: -(methods[t]["metrics"].get("mc_accuracy[kind=patch]", {})
                                                              .get("value") or -1)),
        "methods": methods, "seconds_zoo": round(built, 1), "seconds_total": round(time.perf_counter() - start, 1),
        "device": "cpu", "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "versions": library_versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for t in result["ranked_by_mc_patch"]:
        m = methods[t]["metrics"]
        print(f"{t:22s} MC {m['mc_accuracy']['value']:.2f} (patch {m.get('mc_accuracy[kind=patch]', {}).get('value')}) "
              f"transfer {m['transfer_asr']['value']:.2f} twin {m['transfer_asr_clean_twin']['value']}")


if __name__ == "__main__":
    main()
