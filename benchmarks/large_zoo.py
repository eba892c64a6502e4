"""The large benchmark zoo (`digits-large`, issue 16): how long it took to build on this machine and what it holds.

    .venv/bin/python benchmarks/large_zoo.py            # builds (or finishes) the zoo first if it is not complete

The build time is read from the zoo's own log (`log.jsonl`: the builder stamps every start, finish and gate
verdict): the wall time from its first event to its last, and the sum over builds when it was resumed (a gap of
more than 10 minutes between two events starts a new build). Writes benchmarks/results/large_zoo.json: models
planned, built and rejected by the quality gate, per trigger kind (held-out trojans among them) and per level of
each difficulty axis (poison rate, mode, training epochs and learning rate), with the trojans' mean ASR and the
models' mean clean accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

GAP = 600.0  # seconds between two log events that mark separate builds


def build_seconds(log: Path) -> tuple[float, int]:
    """(wall seconds spent building, number of builds) from a zoo's log."""
    times = sorted(json.loads(line)["time"] for line in log.read_text().splitlines() if line.strip())
    total, builds = 0.0, 1
    for a, b in itertools.pairwise(times):
        if b - a > GAP:
            builds += 1
        else:
            total += b - a
    return total, builds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-large")
    ap.add_argument("--out", default="large_zoo", help="result name under benchmarks/results/ (or a .json path)")
    args = ap.parse_args()

    from trojanbench.results.provenance import write_benchmark
    from trojanbench.zoo.build import Zoo, build_zoo, cache_folder
    from trojanbench.zoo.plan import load_zoo_config

    started = time.time()
    cfg = load_zoo_config(args.config)
    root = cache_folder(cfg)
    zoo = Zoo(root)
    if not zoo.exists or zoo.status()["pending"]:
        build_zoo(cfg, root, executor="pool", jobs=2)
    status = zoo.status()
    state = {rec.id: s for s, recs in status.items() for rec in recs}
    cards = {j.id: c for j, _, c in zoo.models()}
    plan = zoo.plan()
    seconds, builds = build_seconds(root / "log.jsonl")

    def tally(jobs) -> dict:
        done = [j for j in jobs if state[j.id] == "done"]
        out = {"planned": len(jobs), "built": len(done), "rejected": sum(state[j.id] == "rejected" for j in jobs),
               "failed": sum(state[j.id] == "failed" for j in jobs),
               "held_out_built": sum(j.split == "test" for j in done)}
        asr = [cards[j.id].metrics["attack_success_rate"] for j in done if j.trojaned]
        if asr:
            out["mean_asr"] = round(sum(asr) / len(asr), 4)
        return out

    trojans = [j for j in plan if j.trojaned]
    axes = {"kind": lambda j: j.trojan.trigger.kind, "rate": lambda j: j.trojan.poison.rate,
            "mode": lambda j: j.trojan.poison.mode, "insidious": lambda j: j.trojan.insidious,
            "epochs": lambda j: (j.intensity or {}).get("epochs", cfg.train.epochs),
            "lr": lambda j: (j.intensity or {}).get("lr", cfg.train.lr)}
    by_axis = {}
    for axis, key in axes.items():
        groups = defaultdict(list)
        for j in trojans:
            groups[key(j)].append(j)
        by_axis[axis] = {str(level): {"level": level, **tally(groups[level])} for level in sorted(groups)}
    clean = [j for j in plan if not j.trojaned]
    accs = [c.metrics["clean_accuracy"] for c in cards.values()]
    result = {"zoo_config": args.config, "zoo": str(root), "models_planned": len(plan),
              "models_built": len(cards), "held_out_built": sum(j.split == "test" for j in plan if j.id in cards),
              "clean": tally(clean), "trojaned": tally(trojans), "by_axis": by_axis,
              "mean_clean_accuracy": round(sum(accs) / len(accs), 4),
              "min_held_out_trojans_per_kind": min(v["held_out_built"] for v in by_axis["kind"].values()),
              "build_seconds": round(seconds, 1), "builds": builds,
              "models_per_minute": round(len(cards) / (seconds / 60), 2),
              "gate": cfg.gate.model_dump()}
    path = write_benchmark(args.out, result, config=vars(args), started=started)
    print(json.dumps({k: v for k, v in result.items() if k != "by_axis"}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
