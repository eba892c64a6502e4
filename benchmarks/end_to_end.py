"""Time the main job end to end: `trojanbench run` on the default config from an empty zoo cache, stage by stage
(zoo build, each track, report), then again with the zoo cached.

    .venv/bin/python benchmarks/end_to_end.py [--config digits-bench]

Writes benchmarks/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-bench")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "end_to_end.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TROJANBENCH_CACHE"] = str(Path(tmp) / "cache")  # a fresh machine: the zoo is built
        from trojanbench.bench import run_benchmark
        from trojanbench.utils import library_versions

        runs = {}
        for label in ("cold (zoo built)", "warm (zoo cached)"):
            start = time.perf_counter()
            run = run_benchmark(Path(tmp) / label.split()[0], config=args.config)
            runs[label] = {"total_s": round(time.perf_counter() - start, 1),
                           "stages_s": {k: round(v, 1) for k, v in run.seconds.items()}}
            print(label, runs[label], flush=True)
    result = {"config": args.config, "runs": runs, "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
