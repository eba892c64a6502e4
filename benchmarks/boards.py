"""Run the benchmark (every track, every registered tool) on one zoo config and store its boards with provenance.

    .venv/bin/python benchmarks/boards.py --config digits-bench    # -> benchmarks/results/board_digits-bench.json
    .venv/bin/python benchmarks/boards.py --config digits-eval2    # -> benchmarks/results/board_digits-eval2.json
    .venv/bin/python benchmarks/boards.py --config sst2-large --tracks detect --track-executor pool --tools TOOLS
                                                # -> benchmarks/results/board_sst2-large.json (TOOLS: docs/zoo.md)

The boards are those of one `trojanbench run` (its run id is recorded): held-out models only, cells with 95%
intervals, each tool's paired, Holm-corrected verdict against the strongest baseline of its board. The run's
results store and report stay in runs/board-<config>/ for inspection. README.md and docs/ quote these files
(benchmarks/render_docs.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trojanbench.bench import run_benchmark
from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracks", default=None, help="comma-separated (default: every track)")
    ap.add_argument("--out", default=None, help="run folder (default: runs/board-<config>)")
    ap.add_argument("--tools", default=None, help="comma-separated (default: every tool of the config)")
    ap.add_argument("--track-executor", default="serial", help="where the tracks' jobs run: serial, pool, ray")
    ap.add_argument("--jobs", type=int, default=2, help="workers for the pool (and the zoo build)")
    args = ap.parse_args()
    out = Path(args.out or f"runs/board-{args.config}")
    started = time.time()
    run = run_benchmark(out, config=args.config, seed=args.seed,
                        tracks=args.tracks.split(",") if args.tracks else None,
                        tools=args.tools.split(",") if args.tools else None, track_executor=args.track_executor,
                        jobs=args.jobs)
    boards = [board_json(b) for _, b in run.boards]
    path = write_benchmark(f"board_{args.config}", {"zoo_config": args.config, "zoo": str(run.zoo), "boards": boards,
                                                   "seconds": {k: round(v, 1) for k, v in run.seconds.items()}},
                           config=vars(args), run_id=run.run_id, seed=args.seed, started=started)
    print(f"run {run.run_id}: {len(boards)} boards -> {path}; report {run.report}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
