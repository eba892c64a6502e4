"""Can the boards tell tools apart? For the default benchmark and the large zoo: per board, the models per cell
and every interval's half-width, and the paired, Holm-corrected verdicts among each board's top tools.

    .venv/bin/python benchmarks/power.py      # after benchmarks/boards.py and benchmarks/detect_rss.py

For the large zoo, also each board in full and its key column per level of each difficulty axis (poison rate,
mode, training epochs, learning rate: the curves of the run's report, as numbers).

Reads stored runs, never reruns them: the default benchmark's run (every track) named by
benchmarks/results/board_digits-bench.json, the large zoo's detect run named by benchmarks/results/detect_rss.json
and, where benchmarks/results/board_digits-large.json exists, the large zoo's run of the other tracks it names
(`benchmarks/boards.py --config digits-large --tracks repair`: section `digits-large-repair`; or, with
`--large-repair-store`, that run's store even if it was stopped). In a run stopped before the end, each board
keeps only the models every one of its tools was scored on, so every tool is read on the same models. Each section
carries its run id; nothing mixes runs. A section whose run's store is gone from this machine (runs/ is not kept)
is carried over unchanged from the previous power.json if that one was computed from the same run, with
`computed_by`: the run id, commit and date of the power.py run that computed it. Writes
benchmarks/results/power.json, with, for the large zoo's model-detection board, whether every AUROC interval's
half-width is at most 0.06 (issue 16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LIMIT = 0.06  # the model-detection AUROC half-width the large zoo must reach


def _store_source(store: Path) -> tuple[str, Path, dict, str]:
    """(run id, store, provenance, zoo folder) of the newest run in a results store, finished or not."""
    from trojanbench.results.store import ResultsStore

    if not store.is_file():
        sys.exit(f"{store} is not a results store")
    with ResultsStore(store) as s:
        run = s.runs()[-1]
    prov = {"commit": run.info.get("commit"), "status": run.status, "seconds": run.info.get("seconds")}
    return run.run_id, store, prov, run.info["zoo"]


def _source(name: str, section: str | None) -> tuple[str, Path, dict, str]:
    """(run id, results store, provenance, zoo folder) of the run a benchmark file names."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    if section is None:
        run_id, store = data["provenance"]["run_id"], Path(f"runs/board-{data['zoo_config']}/results.sqlite")
        zoo = data.get("zoo")
    else:
        run_id, store = data["zoos"][section]["run_id"], Path(data["zoos"][section]["run_folder"]) / "results.sqlite"
        zoo = data["zoos"][section]["zoo"]
    return run_id, store, data["provenance"], zoo


def _carried(previous: dict, config: str, run_id: str) -> dict | None:
    """`config`'s section of the previous power.json if it was computed from run `run_id`, with who computed it."""
    section = previous.get(config)
    if not section or section.get("run_id") != run_id:
        return None
    by = section.get("computed_by") or {k: previous["provenance"][k] for k in ("run_id", "commit", "date")}
    return {**section, "computed_by": by}


def common_models(rows: list) -> list:
    """The rows of models that every tool of their task was scored on (a stopped run's last models may have been
    scored by some tools only); rows that are not per-model (board specs, tool notes, figures) are kept."""
    tools, seen = {}, {}
    per_model = [r for r in rows if "role" in r.extra]  # model_row's rows
    for r in per_model:
        tools.setdefault(r.task, set()).add(r.tool)
        seen.setdefault((r.task, r.model_id), set()).add(r.tool)
    return [r for r in rows if "role" not in r.extra or seen[(r.task, r.model_id)] == tools[r.task]]


def curves(zoo_dir: str, rows, board, n_boot: int, seed: int) -> dict:
    """The board's key column per level of every difficulty axis on which its models vary (`results.axes`)."""
    from trojanbench.results.axes import AXES, axis_curves, axis_levels
    from trojanbench.zoo.build import Zoo

    zoo, out = Zoo(zoo_dir), {}
    for axis in AXES:
        levels = axis_levels(zoo, axis)
        found = axis_curves([r for r in rows if r.task == board.spec.task], board.spec, levels, n_boot, seed)
        points = {tool: [{"level": p.level, "value": round(p.estimate.value, 4), "n_trojaned": p.n_trojaned,
                          "n_clean": p.n_clean, **({"low": round(p.estimate.low, 4), "high": round(p.estimate.high, 4)}
                                                   if p.estimate.has_interval else {})} for p in pts]
                  for tool, pts in found.items()}
        if any(len(pts) > 1 for pts in points.values()):
            out[axis] = points
    return out


def board_power(rows, board, top: int, n_boot: int, seed: int) -> dict:
    from trojanbench.results.boards import pairwise, verdict_test

    key = board.spec.key
    tools = []
    for s in board.scores:
        cells = {m: {"n": e.n, **({"half_width": round((e.high - e.low) / 2, 4)} if e.has_interval else {})}
                 for m, e in sorted(s.metrics.items())}
        tools.append({"tool": s.tool, "role": s.role, "n_models": s.n_models, "cells": cells})
    halves = [t["cells"][key]["half_width"] for t in tools if "half_width" in t["cells"].get(key, {})]
    verdicts = [s.verdict for s in board.scores if s.role == "tool"]
    return {"task": board.spec.task, "title": board.title, "key": key, "tools": tools,
            "key_half_width": {"max": max(halves), "median": round(statistics.median(halves), 4)} if halves else None,
            "vs_strongest_baseline": {v: verdicts.count(v) for v in sorted(set(verdicts))},
            "reference": board.reference, "verdict_test": verdict_test(board.spec),
            "top_pairs": pairwise(rows, board, top, n_boot, seed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=3, help="pairwise verdicts among this many top tools per board")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large-store", default=None,
                    help="read the large zoo's detect run from this results store (its newest run, even one that was "
                         "stopped before the end) instead of the run detect_rss.json names")
    ap.add_argument("--large-repair-store", default=None,
                    help="read the large zoo's repair run from this results store (its newest run, even one that was "
                         "stopped before the end) instead of the run board_digits-large.json names")
    ap.add_argument("--out", default="power", help="result name under benchmarks/results/ (or a .json path)")
    args = ap.parse_args()

    from trojanbench.results.boards import board_json, boards_of_run
    from trojanbench.results.provenance import write_benchmark
    from trojanbench.results.store import ResultsStore

    started = time.time()
    path = Path(args.out) if args.out.endswith(".json") else RESULTS / f"{args.out}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    sources = {"digits-bench": ("board_digits-bench", None), "digits-large": ("detect_rss", "digits-large")}
    if (RESULTS / "board_digits-large.json").is_file() or args.large_repair_store:
        sources["digits-large-repair"] = ("board_digits-large", None)
    stores = {"digits-large": args.large_store, "digits-large-repair": args.large_repair_store}
    out = {}
    for config, (name, section) in sources.items():
        if stores.get(config):
            run_id, store, prov, zoo = _store_source(Path(stores[config]))
            name = str(store)
        else:
            run_id, store, prov, zoo = _source(name, section)
            prov = {**prov, "status": "complete"}
        if not store.is_file():
            out[config] = _carried(previous, config, run_id)
            if out[config] is None:
                sys.exit(f"{store} (run {run_id}, named by {name}.json) is missing and {path.name} holds no section "
                         f"computed from it: rerun the script that wrote {name}.json")
            print(f"{config}: run {run_id}'s store is not here; its section is carried over from {path.name} "
                  f"(computed by run {out[config]['computed_by']['run_id']})")
            continue
        with ResultsStore(store) as s:
            rows = s.rows(run_id)
            jobs = len(s.jobs(run_id))
        if prov["status"] != "complete":
            rows = common_models(rows)
        boards = boards_of_run(rows, args.n_boot, args.seed)
        out[config] = {"run_id": run_id, "source": name if name.endswith(".sqlite") else f"{name}.json",
                       "source_commit": prov["commit"], "run_status": prov["status"], "jobs_finished": jobs, "zoo": zoo,
                       "boards": [board_power(rows, b, args.top, args.n_boot, args.seed) for b in boards]}
        if config.startswith("digits-large"):  # the curves over the axes are nowhere else (nor the detect boards)
            for entry, b in zip(out[config]["boards"], boards):
                entry.update(board=board_json(b), curves=curves(zoo, rows, b, args.n_boot, args.seed))
    model = next(b for b in out["digits-large"]["boards"] if b["task"] == "detect-model")
    widest = model["key_half_width"]["max"]
    out["large_model_detection"] = {"max_auroc_half_width": widest, "limit": LIMIT, "met": widest <= LIMIT}
    path = write_benchmark(path, out, config=vars(args), started=started)
    print(f"large zoo, model detection: widest AUROC half-width {widest} (limit {LIMIT}) -> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
