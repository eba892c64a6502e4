"""Batched Neural Cleanse (all K classes in one optimisation) vs the same optimisation run class by class,
timed in one run on the same models, with the target-label accuracy of each.

    .venv/bin/python benchmarks/nc_batched.py [--zoo DIR] [--models N]

Without --zoo it trains a few patch-trojaned digits CNNs first. Writes benchmarks/results/nc_batched.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trojanbench.data import load_dataset
from trojanbench.implant import implant
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.detect.neural_cleanse import NeuralCleanse
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.utils import library_versions
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model


def trojaned_models(zoo: str | None, n: int):
    if zoo:
        picked = [(j, f) for j, f, _ in Zoo(zoo).models() if j.trojaned and j.trojan.trigger.kind == "patch"
                  and not j.trojan.insidious][:n]
        return [(load_model(f)[0], j.trojan.poison.target) for j, f in picked]
    ds = load_dataset("digits")
    out = []
    for i in range(n):
        spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=i % 10, rate=0.05))
        out.append((implant(ds, "cnn", {"width": 16}, spec, seed=i).model, i % 10))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nc_batched.json"))
    args = ap.parse_args()
    ds = load_dataset("digits")
    ctx = DetectContext(ds.x_test[:200], ds.y_test[:200], ds.num_classes)
    models = trojaned_models(args.zoo, args.models)
    nc = NeuralCleanse()
    times = {"batched": 0.0, "per_class": 0.0}
    hits = {"batched": 0, "per_class": 0}
    for model, target in models:
        start = time.perf_counter()
        masks, _ = nc.reverse_engineer(model, ctx)
        times["batched"] += time.perf_counter() - start
        hits["batched"] += int(masks.sum((1, 2)).argmin()) == target
        start = time.perf_counter()
        masks = torch.cat([nc.reverse_engineer(model, ctx, classes=[k])[0] for k in range(ctx.num_classes)])
        times["per_class"] += time.perf_counter() - start
        hits["per_class"] += int(masks.sum((1, 2)).argmin()) == target
    result = {
        "models": len(models), "classes": ctx.num_classes, "steps": nc.steps, "batch_size": nc.batch_size,
        "seconds_batched": round(times["batched"], 2), "seconds_per_class_loop": round(times["per_class"], 2),
        "speedup": round(times["per_class"] / times["batched"], 2),
        "target_accuracy_batched": hits["batched"] / len(models),
        "target_accuracy_per_class": hits["per_class"] / len(models),
        "torch_threads": torch.get_num_threads(), "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
