"""The repair track over several clean budgets: every repairer at 1%, 5% and 10% of the training set, on a zoo's
trojaned models (by default the patch ones; `--kinds all` for every kind), all splits unless `--split`.

    python benchmarks/repair_digits.py --zoo ZOO_DIR                                   # patch trojans, all budgets
    python benchmarks/repair_digits.py --zoo ZOO_DIR --kinds all --budgets 0.05 --out repair_digits_all

Writes one board per budget (task `repair@<budget>`: ASR after repair, clean accuracy and cost, robust accuracy,
per trigger kind and crude / insidious, 95% CIs over models, each tool's verdict against the strongest fine-tuning
baseline) with its provenance to benchmarks/results/repair_digits.json (or `--out`), the frontier plot beside it.
The file holds one run only. Seconds per model are wall time on whatever machine runs this.
"""

from __future__ import annotations

import argparse
import time

import torch

from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.repair import frontier_plot, run_repair_track


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", required=True, help="a built zoo folder")
    ap.add_argument("--kinds", default="patch", help="comma-separated trigger kinds, or 'all'")
    ap.add_argument("--budgets", default="0.01,0.05,0.10")
    ap.add_argument("--split", default=None, help="train or test (default: both)")
    ap.add_argument("--tools", default=None)
    ap.add_argument("--results", default=None, help="also write rows to this results store")
    ap.add_argument("--out", default="repair_digits", help="a name under benchmarks/results/, or a .json path")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kinds = None if a.kinds == "all" else a.kinds.split(",")
    budgets = tuple(float(b) for b in a.budgets.split(","))
    started, start = time.time(), time.perf_counter()
    boards = run_repair_track(a.zoo, a.results, a.tools.split(",") if a.tools else None, budgets=budgets, kinds=kinds,
                              split=a.split)
    wall = time.perf_counter() - start
    path = write_benchmark(a.out, {"zoo": str(a.zoo), "kinds": a.kinds, "budgets": list(budgets), "wall_seconds": round(wall, 1),
                                   "boards": [board_json(b) for b in boards.values()]}, config=vars(a), started=started)
    frontier_plot(boards, path.with_suffix(".png"))
    for b, board in boards.items():
        for s in board.scores:
            m = s.metrics
            print(f"{b:>5g} {s.tool:<20} {s.role:<8} {s.verdict:<8} ASR {m['asr'].value:6.3f}  clean {m['clean_acc'].value:6.3f}  "
                  f"robust {m['robust_acc'].value:6.3f}  {m['seconds_per_model'].value:6.2f} s")
    print(f"wall {wall:.0f} s -> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
