"""Run the studies and store what docs/studies.md quotes: each study's findings and its stored tables.

    .venv/bin/python benchmarks/studies.py [--studies text,width-depth,subnetworks,continuum] [--quick]

Each study runs as `trojanbench study NAME` does (one run of runs/study-NAME/results.sqlite); its findings (the
lines the CLI prints), the study's configuration as its run recorded it, every aggregate row of its run
(value, 95% CI, n; NaN stored as null) and, for a study that runs tracks (text), every board of its run go to benchmarks/results/study_<name>.json with the run id:
study_text.json, study_width-depth.json, study_subnetworks.json, study_continuum.json. The measured blocks
`study-<name>` of docs/studies.md render them (benchmarks/blocks/studies.py).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from trojanbench.results import ResultsStore
from trojanbench.results.boards import board_json, boards_of_run
from trojanbench.results.provenance import write_benchmark
from trojanbench.studies import run_study


def _num(x):
    """A float for JSON, None for a missing or undefined (NaN) value."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default="text,width-depth,subnetworks,continuum")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for name in args.studies.split(","):
        started = time.time()
        summary = run_study(name, Path("runs") / f"study-{name}", seed=args.seed, quick=args.quick,
                            progress=lambda m: print(m, flush=True))
        with ResultsStore(summary.results) as store:
            rows = store.rows(summary.run_id)
            study_config = store.run(summary.run_id).info.get("config")
        tables = [{"task": r.task, "tool": r.tool, "metric": r.metric, "value": _num(r.value),
                   "low": _num(r.extra.get("low")), "high": _num(r.extra.get("high")), "n": r.extra.get("n"),
                   "method": r.extra.get("method")}
                  for r in rows if "low" in r.extra and r.value is not None]
        boards = [board_json(b) for b in boards_of_run(rows, seed=args.seed)]
        path = write_benchmark(f"study_{name}", {"study": name, "seconds": round(summary.seconds, 1),
                                                 "findings": summary.findings, "study_config": study_config,
                                                 "tables": tables, "boards": boards},
                               config={"study": name, "seed": args.seed, "quick": args.quick}, run_id=summary.run_id,
                               seed=args.seed, started=started)
        print(f"{name}: {len(summary.findings)} findings, {len(tables)} table cells, {len(boards)} boards -> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
