"""The repair track on the default digits zoo: every repairer, clean budgets of 1%, 5% and 10% of the
training set, on the zoo's trojaned models (by default the patch ones; `--kinds all` for every kind).

    python benchmarks/repair_digits.py --zoo zoos/digits                      # patch trojans, all budgets
    python benchmarks/repair_digits.py --zoo zoos/digits --kinds all --budgets 0.05 --label all

Numbers go to benchmarks/results/repair_digits.json under `--label` (other labels in the file are kept),
the frontier plot beside it. Seconds per model are wall time on whatever machine runs this.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from trojanbench.tasks.repair import frontier_plot, run_repair_track


def _num(v: float):
    return None if math.isnan(v) else round(v, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="zoos/digits")
    ap.add_argument("--kinds", default="patch", help="comma-separated trigger kinds, or 'all'")
    ap.add_argument("--budgets", default="0.01,0.05,0.10")
    ap.add_argument("--tools", default=None)
    ap.add_argument("--label", default=None, help="key in the JSON file (default: the kinds)")
    ap.add_argument("--results", default=None, help="also write rows to this results store")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "repair_digits.json"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kinds = None if a.kinds == "all" else a.kinds.split(",")
    budgets = tuple(float(b) for b in a.budgets.split(","))
    start = time.perf_counter()
    scores = run_repair_track(a.zoo, a.results, a.tools.split(",") if a.tools else None, budgets=budgets, kinds=kinds)
    wall = time.perf_counter() - start
    out = Path(a.out)
    label = a.label or a.kinds
    frontier_plot(scores, out.with_name(f"repair_digits_{label}.png"))
    section = {"zoo": str(a.zoo), "kinds": a.kinds, "budgets": list(budgets), "wall_seconds": round(wall, 1),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}, no GPU",
               "methods": {}}
    for b, rows in scores.items():
        for s in rows:
            section["methods"].setdefault(s.tool, {"baseline": s.is_baseline, "anchor": s.anchor})[f"{b:g}"] = {
                k: {"value": _num(e.value), "low": _num(e.low), "high": _num(e.high), "n": e.n} for k, e in s.metrics.items()}
    data = json.loads(out.read_text()) if out.exists() else {}
    data[label] = section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    for b, rows in scores.items():
        for s in rows:
            m = s.metrics
            print(f"{b:>5g} {s.tool:<20} ASR {m['asr'].value:6.3f}  clean {m['clean_acc'].value:6.3f}  "
                  f"robust {m['robust_acc'].value:6.3f}  {m['seconds_per_model'].value:6.2f} s  beats FT {m['beats_finetune']}")
    print(f"wall {wall:.0f} s -> {out}")


if __name__ == "__main__":
    main()
