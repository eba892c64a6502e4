"""Feature synthesis on every all-to-one trojan of a patch-heavy digits zoo (both splits: no synthesizer or judge is
fitted on the zoo): the specificity board (transfer ASR on the trojan minus on its clean twin, paired) and the
multiple-choice board of the independent judge, per method and per trigger kind, with 95% intervals and each
method's verdict against the strongest baseline.

    .venv/bin/python benchmarks/synthesize_digits.py [ZOO_DIR] [--tools a,b] [--max-models N]

ZOO_DIR defaults to a zoo built from benchmarks/synth-zoo.toml under $TROJANBENCH_CACHE (built on first use,
about 2 minutes). Writes benchmarks/results/synthesize_digits.json (the two boards as `results.boards.board_json`
gives them, with provenance; docs/diagnose.md renders them as the block `synthesize-patch-zoo`), and the survey
question bank (about 12 MB of PNGs) to runs/synthesize_digits-bank/, which `trojanbench survey serve` can show to
people. About 45 minutes for 22 trojans and their twins on 2 shared cores.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from trojanbench.bench import zoo_cache_dir
from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.synthesize import run_synthesize_track
from trojanbench.zoo.build import build_zoo
from trojanbench.zoo.plan import load_zoo_config

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--tools", default=None)
    ap.add_argument("--max-models", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="synthesize_digits", help="a name under benchmarks/results/, or a .json path")
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = args.zoo
    started, start = time.time(), time.perf_counter()
    if zoo is None:
        cfg = load_zoo_config(HERE / "synth-zoo.toml")
        zoo = zoo_cache_dir(cfg)
        build_zoo(cfg, zoo)  # resumable: finished models are kept
    built = time.perf_counter() - start
    bank = Path("runs") / (Path(args.out).stem + "-bank")
    shutil.rmtree(bank, ignore_errors=True)
    boards = run_synthesize_track(zoo, None, tools=args.tools.split(",") if args.tools else None, seed=args.seed,
                                  max_models=args.max_models, bank=bank)
    result = {"zoo": str(zoo), "zoo_config": "benchmarks/synth-zoo.toml" if args.zoo is None else None,
              "split": "both", "trojans": max(s.n_models for s in boards[0].scores),
              "boards": [board_json(b) for b in boards], "bank": str(bank),
              "seconds_zoo": round(built, 1), "seconds_total": round(time.perf_counter() - start, 1)}
    path = write_benchmark(args.out, result, config=vars(args), seed=args.seed, started=started)
    for b in boards:
        print(b.title)
        for rank, s in enumerate(b.scores, 1):
            print(f"{rank:2d} {s.tool:22s} {b.spec.key} {s.metrics.get(b.spec.key)}  {s.verdict}")
    print(f"written {path}; survey bank {bank}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
