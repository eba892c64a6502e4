"""Batched Neural Cleanse (all K classes in one optimisation, one forward of ~B images per step shared by the
classes) vs the original algorithm run class by class (B images per step for each class), timed in one run
on the same models, with the target-label accuracy and trigger IoU of each.

    .venv/bin/python benchmarks/nc_batched.py [--zoo DIR] [--models N] [--threads T]

Without --zoo it trains a few crude patch-trojaned digits CNNs first (5% poison, targets cycling over 0-9).
Writes benchmarks/results/nc_batched.json.
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
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec, make_trigger
from trojanbench.utils import library_versions
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model


def trojaned_models(zoo: str | None, n: int, image_shape):
    """(model, target, ground-truth trigger mask) for `n` crude patch trojans."""
    if zoo:
        picked = [(j, f) for j, f, _ in Zoo(zoo).models() if j.trojaned and j.trojan.trigger.kind == "patch"
                  and not j.trojan.insidious][:n]
        return [(load_model(f)[0], j.trojan.poison.target, make_trigger(j.trojan.trigger, image_shape).mask())
                for j, f in picked]
    ds = load_dataset("digits")
    out = []
    for i in range(n):
        spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=i % 10, rate=0.05))
        out.append((implant(ds, "cnn", {"width": 16}, spec, seed=i).model, i % 10,
                    make_trigger(spec.trigger, image_shape).mask()))
    return out


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    pred, truth = mask >= 0.5 * mask.max(), truth > 0.5  # as the detect track scores it
    return float((pred & truth).sum() / (pred | truth).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nc_batched.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    ctx = DetectContext(ds.x_test[:200], ds.y_test[:200], ds.num_classes)
    models = trojaned_models(args.zoo, args.models, ds.image_shape)
    nc = NeuralCleanse()  # the detect track's default: 24 images a step shared by the K classes
    # the reference: one optimisation per label with the settings this repo used for it before (version 1):
    # 16 images a step, lr 0.1, the same number of steps
    ref = NeuralCleanse(steps=nc.steps, lr=0.1, l1_weight=nc.l1_weight, batch_size=16)
    times = {"batched": 0.0, "per_class": 0.0}
    hits = {"batched": [], "per_class": []}
    ious = {"batched": [], "per_class": []}
    for model, target, truth in models:
        for way in ("batched", "per_class"):
            start = time.perf_counter()
            if way == "batched":
                masks, _ = nc.reverse_engineer(model, ctx)
            else:  # the original algorithm: one optimisation per label, each with its own batch of B images
                masks = torch.cat([ref.reverse_engineer(model, ctx, classes=[k])[0] for k in range(ctx.num_classes)])
            times[way] += time.perf_counter() - start
            norms = masks.sum((1, 2))
            hits[way].append(int(norms.argmin()) == target)
            ious[way].append(_iou(masks[target], truth))  # the target's own mask, found or not
    k = ctx.num_classes
    result = {
        "models": len(models), "classes": k, "steps": nc.steps, "lr": {"batched": nc.lr, "per_class": ref.lr},
        "images_per_step_per_class": {"batched": -(-nc.batch_size // k), "per_class": ref.batch_size},
        "images_per_step": {"batched": k * -(-nc.batch_size // k), "per_class": ref.batch_size},
        "seconds_batched": round(times["batched"], 2), "seconds_per_class_loop": round(times["per_class"], 2),
        "speedup": round(times["per_class"] / times["batched"], 2), "goal_speedup": k / 2,
        "target_accuracy_batched": sum(hits["batched"]) / len(models),
        "target_accuracy_per_class": sum(hits["per_class"]) / len(models),
        "trigger_iou_batched": round(sum(ious["batched"]) / len(models), 3),
        "trigger_iou_per_class": round(sum(ious["per_class"]) / len(models), 3),
        "torch_threads": torch.get_num_threads(), "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
