"""Does a board's ranking carry over to a zoo with other seeds, targets, trigger variants and placements?

    .venv/bin/python benchmarks/carry_over.py   # reads board_digits-bench.json and board_digits-eval2.json

For every board present in both files: Kendall's tau-b between the two rankings of the tools both ran (by the
board's ranking metric, scipy.stats.kendalltau), with its p-value, the number of tools, and every tool whose
verdict against the strongest baseline differs between the zoos. Writes benchmarks/results/carry_over.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import kendalltau

from trojanbench.errors import UserError
from trojanbench.results.provenance import write_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="board_digits-bench.json")
    ap.add_argument("--b", default="board_digits-eval2.json")
    args = ap.parse_args()
    a, b = (json.loads((RESULTS / f).read_text()) for f in (args.a, args.b))
    boards_b = {x["task"]: x for x in b["boards"]}
    out = []
    for board_a in a["boards"]:
        board_b = boards_b.get(board_a["task"])
        if board_b is None:
            continue
        key = board_a["key"]
        tests = {board_a.get("verdict_test"), board_b.get("verdict_test")}  # None: a file from before it was recorded
        if len(tests) > 1:
            raise UserError(f"{board_a['task']}: the two files' verdicts come from different tests ({args.a}: "
                            f"{board_a.get('verdict_test')}, {args.b}: {board_b.get('verdict_test')}); re-run the older")
        value = lambda board: {t["tool"]: t["metrics"].get(key, {}).get("value") for t in board["tools"]}
        va, vb = value(board_a), value(board_b)
        tools = sorted(t for t in va if t in vb and va[t] is not None and vb[t] is not None)
        tau = kendalltau([va[t] for t in tools], [vb[t] for t in tools]) if len(tools) >= 3 else None
        # the verdict itself, not its detail: "too few models (n=7 for 12 comparisons)" and "(n=6 ...)" are one verdict
        verdict = lambda board: {t["tool"]: t["verdict"].split(" (")[0] for t in board["tools"]}
        da, db = verdict(board_a), verdict(board_b)
        changed = [{"tool": t, "default": da[t], "eval2": db[t]} for t in tools if da.get(t) != db.get(t)]
        out.append({"task": board_a["task"], "key": key, "n_tools": len(tools), "verdict_test": tests.pop(),
                    "kendall_tau": None if tau is None else round(float(tau.statistic), 4),
                    "p_value": None if tau is None else round(float(tau.pvalue), 4),
                    "values": {t: [va[t], vb[t]] for t in tools}, "verdict_changes": changed})
    path = write_benchmark("carry_over", {"a": args.a, "b": args.b, "run_a": a["provenance"]["run_id"],
                                          "run_b": b["provenance"]["run_id"], "boards": out}, config=vars(args))
    for x in out:
        print(f"{x['task']:>22}  tau {x['kendall_tau']}  (n={x['n_tools']})  verdict changes: {len(x['verdict_changes'])}")
    print(f"-> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
