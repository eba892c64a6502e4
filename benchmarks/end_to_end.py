"""Time the main job end to end: `trojanbench run` on the default config from an empty cache (zoo and MNTD's shadow
models built), stage by stage (zoo build, each track, report), then again with everything cached; and store the
cold run's leaderboards.

    .venv/bin/python benchmarks/end_to_end.py [--config digits-quick] [--no-warm] [--cold-runs 3]

Writes benchmarks/results/end_to_end.json for the default (`make run`: digits-quick with its quick tool set;
timings of both runs, with their run ids), end_to_end_<config>.json for another config, and
benchmarks/results/board_<config>.json (the cold run's boards). `--config digits-bench` writes
end_to_end_digits-bench.json and board_digits-bench.json (every tool; the boards README.md quotes). The text
benchmarks: `--config sst2-bench --no-warm` writes end_to_end_sst2-bench.json and board_sst2-bench.json,
`--config sst2-jailbreak --no-warm` end_to_end_sst2-jailbreak.json and board_sst2-jailbreak.json (README.md,
docs/zoo.md).
Run it on an otherwise idle machine: these are wall-clock seconds. They vary from run to run on a shared machine;
`--cold-runs N` times N cold runs, each from its own empty cache (rows cold, cold 2, ...), and stores their median
and slowest beside them. The boards come from the first cold run; the warm run reuses the first cold run's cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from trojanbench.bench import DEFAULT_CONFIG

    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the cold run's folder (results store, report) here")
    ap.add_argument("--no-warm", dest="warm", action="store_false", help="time the cold run only")
    ap.add_argument("--cold-runs", type=int, default=1, help="how many cold runs to time, each from an empty cache")
    ap.add_argument("--device", default="cpu", help="as `trojanbench run --device`; a GPU run writes "
                    "end_to_end[_<config>]-cuda.json and board_<config>-cuda.json")
    args = ap.parse_args()
    if args.cold_runs < 1:
        ap.error("--cold-runs must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        from trojanbench.bench import run_benchmark
        from trojanbench.results.boards import board_json
        from trojanbench.results.provenance import write_benchmark

        runs, boards, first = {}, None, None
        suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
        labels = ["cold"] + [f"cold {i}" for i in range(2, args.cold_runs + 1)] + (["warm"] if args.warm else [])
        for label in labels:
            # a fresh machine for each cold run (zoo and shadow models are built); the warm run reuses the first's
            cache = "cache" if label in ("cold", "warm") else f"cache-{label.split()[-1]}"
            os.environ["TROJANBENCH_CACHE"] = str(Path(tmp) / cache)
            out = Path(args.keep) if (args.keep and label == "cold") else Path(tmp) / label.replace(" ", "-")
            started = time.time()
            start = time.perf_counter()
            run = run_benchmark(out, config=args.config, seed=args.seed, track_executor="pool", jobs=2,  # as `run` does
                                device=args.device)
            runs[label] = {"run_id": run.run_id, "total_s": round(time.perf_counter() - start, 1),
                           "stages_s": {k: round(v, 1) for k, v in run.seconds.items()}}
            print(label, runs[label], flush=True)
            if label == "cold":
                first, boards = started, [board_json(b) for _, b in run.boards]
                board_path = write_benchmark(f"board_{args.config}{suffix}", {
                    "zoo_config": args.config, "boards": boards, "seconds": runs[label]["stages_s"],
                    **({"skipped": run.skipped} if run.skipped else {})},
                    config=vars(args), run_id=run.run_id, seed=args.seed, started=started)
                print("boards ->", board_path, flush=True)
        name = ("end_to_end" if args.config == DEFAULT_CONFIG else f"end_to_end_{args.config}") + suffix
        colds = [r["total_s"] for label, r in runs.items() if label.startswith("cold")]
        summary = {"cold_runs": len(colds), "cold_median_s": round(statistics.median(colds), 1), "cold_max_s": max(colds)}
        path = write_benchmark(name, {"zoo_config": args.config, "runs": runs, **summary}, config=vars(args),
                               run_id=runs["cold"]["run_id"], seed=args.seed, started=first)
    print("timings ->", path)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
