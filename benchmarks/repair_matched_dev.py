"""Fine-tuning with the strongest method's budget (`finetune-matched`) beside plain fine-tuning and
self-distillation, on the DEV zoo (informational: nothing is tuned on it; the matched settings follow
self-distillation by construction).

    .venv/bin/python benchmarks/repair_matched_dev.py [ZOO_DIR] [--budget 0.05] [--tools self-distill]

ZOO_DIR defaults to /work/zoos/digits-dev. Runs `run_repair_track` on every trojaned model of the zoo at one
clean budget (the fine-tuning baselines are always added) and writes the board (ASR after repair, clean cost,
robust accuracy, per trigger kind and crude / insidious, 95% CIs over models) to
benchmarks/results/repair_matched_dev.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.repair import run_repair_track


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default="/work/zoos/digits-dev")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--tools", default="self-distill")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="repair_matched_dev", help="a name under benchmarks/results/, or a .json path")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started, start = time.time(), time.perf_counter()
    boards = run_repair_track(a.zoo, None, a.tools.split(","), budgets=(a.budget,))
    wall = time.perf_counter() - start
    board = boards[a.budget]
    path = write_benchmark(a.out, {"zoo": a.zoo, "budget": a.budget, "wall_seconds": round(wall, 1),
                                   "board": board_json(board)}, config=vars(a), started=started)
    for s in board.scores:
        m = s.metrics
        cells = "  ".join(f"{k} {m[k].value:.3f}" for k in ("asr", "clean_cost", "robust_acc", "asr[kind=patch]")
                          if k in m)
        print(f"{s.tool:<18} {s.role:<8} {s.verdict:<8} {cells}")
    print(f"wall {wall:.0f} s -> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
