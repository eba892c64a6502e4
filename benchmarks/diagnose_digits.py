"""Attribution on every trojaned model of a digits zoo, both splits (the diagnose track fits nothing, so there is
nothing to hold out): does each map point at the trigger, and does it depend on the model?

    .venv/bin/python benchmarks/diagnose_digits.py [ZOO_DIR] [--config digits-bench] [--images N] [--max-models N]

Without ZOO_DIR the zoo of `--config` (default digits-bench) is built once under $TROJANBENCH_CACHE and reused.
Runs `run_diagnose_track` with split=None and writes benchmarks/results/diagnose_digits.json (the board as
`results.boards.board_json` gives it: per method correlation, pointing game, mask AUROC overall and per trigger
kind / crude / insidious with 95% bootstrap CIs over models, the randomized-model sanity check, seconds per model,
and the verdict against the strongest baseline) with its provenance, and one PNG panel per trigger kind under
benchmarks/results/diagnose_digits/. About 12 minutes for 30 trojaned CNNs at 32 images on 2 shared cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trojanbench.bench import zoo_cache_dir
from trojanbench.results.boards import board_json
from trojanbench.results.provenance import RESULTS_DIR, write_benchmark
from trojanbench.tasks.diagnose import run_diagnose_track
from trojanbench.zoo.build import build_zoo
from trojanbench.zoo.plan import load_zoo_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--config", default="digits-bench", help="zoo config to build (or reuse) when no ZOO_DIR is given")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-models", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="diagnose_digits", help="a name under benchmarks/results/, or a .json path")
    args = ap.parse_args()
    started, start = time.time(), time.perf_counter()
    zoo = args.zoo
    if zoo is None:
        cfg = load_zoo_config(args.config)
        zoo = zoo_cache_dir(cfg)
        build_zoo(cfg, zoo)  # resumable: finished models are kept
    images = Path(args.out).with_suffix("") if args.out.endswith(".json") else RESULTS_DIR / args.out
    board = run_diagnose_track(zoo, None, seed=args.seed, n_images=args.images, images_dir=images,
                               max_models=args.max_models)
    wall = time.perf_counter() - start
    path = write_benchmark(args.out, {"zoo": str(zoo), "n_images_per_model": args.images, "split": "both",
                                      "boards": [board_json(board)], "seconds_total": round(wall, 1)},
                           config=vars(args), seed=args.seed, started=started)
    for rank, s in enumerate(board.scores, 1):
        cells = "  ".join(f"{k} {s.metrics[k]}" for k in board.spec.main if k in s.metrics)
        print(f"{rank:2d} {s.tool:22s} {cells}  {s.verdict}")
    print(f"wall {wall:.0f} s; written {path} and {images}/")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
