"""Do repairs hold? Every repairer on the digits-bench zoo's held-out trojans, with the retuning attack and the probe.

    .venv/bin/python benchmarks/repair_holds.py     # about 15 minutes on 2 cores with the zoo cached
    .venv/bin/python benchmarks/repair_holds.py --results runs/audit-default/reference.sqlite   # reuse that run

One run of the repair track (5% clean budget, every registered repairer, `holds=True`) on the held-out split of
the digits-bench zoo, stored in runs/repair-holds/results.sqlite. Writes
benchmarks/results/repair_holds.json:
- the board: per repairer ASR, P-ASR, probe AUROC, robust accuracy, DER, clean cost, target-class cost, with
  intervals, by trigger kind and crude vs insidious, the clean-accuracy gate, and the clean twins' control row;
- the question the project started with: does self-distillation scrub trojans better than fine-tuning of equal
  budget (`finetune-matched`)? A paired test (sign-flip, `stats.paired_test`) over the same trojans on ASR, on
  P-ASR and on probe AUROC, Holm-corrected over the three;
- per method, how many trojans counted as removed (ASR < 5%) come back above 50% under the retuning attack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from trojanbench.bench import zoo_cache_dir
from trojanbench.results import ResultsStore
from trojanbench.results.boards import board_json, board_specs, compute_board
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import holm, paired_test
from trojanbench.tasks.repair import CAME_BACK_ABOVE, REMOVED_BELOW, run_repair_track
from trojanbench.zoo.build import build_zoo
from trojanbench.zoo.plan import load_zoo_config

QUESTION = ("self-distill", "finetune-matched")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-bench")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/repair-holds")
    ap.add_argument("--results", help="read the latest complete run of this store that repaired the zoo (as "
                                      "benchmarks/audit_default.py leaves in runs/audit-default/reference.sqlite) "
                                      "instead of running the repair track again")
    args = ap.parse_args()
    started = time.time()
    cfg = load_zoo_config(args.config)
    zoo = zoo_cache_dir(cfg)
    task = f"repair@{args.budget:g}"
    if args.results:
        with ResultsStore(args.results) as s:
            run = s.latest_complete()
            rows = [r for r in s.rows(run.run_id) if r.task == task]
        if not rows or run.info.get("zoo") != str(zoo):
            raise SystemExit(f"{args.results} run {run.run_id} holds no {task} board of zoo {zoo}")
        board = compute_board(rows, board_specs(rows)[task], 2000, run.seed)
    else:
        build_zoo(cfg, zoo)  # reused from the cache when it is complete
        store = Path(args.out) / "results.sqlite"
        board = run_repair_track(zoo, store, budgets=(args.budget,), seed=args.seed, split="test")[args.budget]
        with ResultsStore(store) as s:
            run = s.runs()[-1]
            rows = [r for r in s.rows(run.run_id) if r.task == task]

    def per_model(tool: str, metric: str) -> dict[str, float]:
        return {r.model_id: (np.nan if r.value is None else r.value) for r in rows if r.tool == tool and r.metric == metric}

    a, b = QUESTION
    comparisons = {}
    for metric in ("asr", "p_asr", "probe_auroc"):
        va, vb = per_model(a, metric), per_model(b, metric)
        common = sorted(set(va) & set(vb))
        comparisons[metric] = paired_test(np.array([va[m] for m in common]), np.array([vb[m] for m in common]),
                                          "mean", None, 2000, args.seed)
    holm(list(comparisons.values()), higher_is_better=False)
    question = {metric: {"diff": c.diff.value, "low": c.diff.low, "high": c.diff.high, "n": c.diff.n, "p": c.p,
                         "p_holm": c.p_holm, "verdict": c.verdict} for metric, c in comparisons.items()}

    came_back = {}
    for tool in sorted({r.tool for r in rows if r.metric == "asr"}):
        asr, p_asr = per_model(tool, "asr"), per_model(tool, "p_asr")
        removed = [m for m, v in asr.items() if v < REMOVED_BELOW]
        came_back[tool] = {"removed": len(removed), "came_back": sum(p_asr.get(m, np.nan) > CAME_BACK_ABOVE for m in removed),
                           "trojans": len(asr)}
    path = write_benchmark("repair_holds", {
        "zoo": cfg.name, "budget": args.budget, "run_id": run.run_id, "board": board_json(board),
        "question": {"a": a, "b": b, "lower_is_better": True,
                     "what": f"{a} minus {b} (equal budget), paired over the same held-out trojans, Holm over 3",
                     "comparisons": question},
        "removed_below": REMOVED_BELOW, "came_back_above": CAME_BACK_ABOVE, "came_back": came_back},
        config=vars(args), run_id=run.run_id, seed=args.seed, started=started)
    for metric, q in question.items():
        print(f"{a} - {b} on {metric}: {q['diff']:+.3f} [{q['low']:+.3f}, {q['high']:+.3f}] p_holm={q['p_holm']:.3g} "
              f"-> {q['verdict']}")
    print("->", path)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
