"""Neural Cleanse batched over labels (one forward pass a step for all K labels) vs the same algorithm run label
by label (K searches, one forward pass each a step), timed in one run on the same models, interleaved. Both
see the same stream of clean mini-batches, so they must give the same masks (up to float rounding): the JSON
holds the largest mask difference, and each way's target-label accuracy, trigger IoU and anomaly indices.

    .venv/bin/python benchmarks/nc_batched.py [--zoo DIR] [--models N] [--threads T]

With --zoo it takes that zoo's first N crude patch trojans; without, it trains N crude patch-trojaned digits
CNNs (width 16, depth 3, 5% poison, targets cycling over 0-9). The detector's default settings either way.
Writes benchmarks/results/nc_batched.json with its provenance (`write_benchmark`: run id, commit, config, cores,
torch threads, date).

Run time (defaults, 1 torch thread, loaded 2-core machine): training the 6 CNNs, then about 5 minutes of searches
(both ways together).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from trojanbench.data import load_dataset
from trojanbench.implant import implant
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.detect import _iou
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.detect.neural_cleanse import NeuralCleanse, anomaly_indices
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec, make_trigger
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model


def trojaned_models(zoo: str | None, n: int, image_shape):
    """(model, target, ground-truth trigger mask) for `n` crude patch trojans."""
    if zoo:
        picked = [(j, f) for j, f, _ in Zoo(zoo).models() if j.trojaned and j.trojan.trigger.kind == "patch"
                  and not j.trojan.insidious and j.trojan.trigger.params.get("location") != "random"][:n]
        return [(load_model(f)[0], j.trojan.poison.target, make_trigger(j.trojan.trigger, image_shape).mask())
                for j, f in picked]
    ds = load_dataset("digits")
    out = []
    for i in range(n):
        spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=i % 10, rate=0.05))
        out.append((implant(ds, "cnn", {"width": 16, "depth": 3}, spec, seed=i).model, i % 10,
                    make_trigger(spec.trigger, image_shape).mask()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nc_batched.json"))
    args = ap.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    ctx = DetectContext(ds.x_test[:200], ds.y_test[:200], ds.num_classes)  # the detect track's auditor sample
    models = trojaned_models(args.zoo, args.models, ds.image_shape)
    nc = NeuralCleanse()
    ways = ("batched", "per_label")
    seconds = {w: 0.0 for w in ways}
    hits = {w: [] for w in ways}
    ious = {w: [] for w in ways}
    scores = {w: [] for w in ways}
    epochs = {w: [] for w in ways}
    max_mask_diff = 0.0
    for model, target, truth in models:
        masks = {}
        for way in ways:
            start = time.perf_counter()
            if way == "batched":
                inv = nc.search(model, ctx)
                masks[way], ep = inv.masks, inv.epochs
            else:  # the original's loop: one search per label, each with its own forward pass a step
                invs = [nc.search(model, ctx, classes=[k]) for k in range(ctx.num_classes)]
                masks[way], ep = torch.cat([i.masks for i in invs]), torch.cat([i.epochs for i in invs])
            seconds[way] += time.perf_counter() - start
            norms = masks[way].flatten(1).sum(1)
            found = int(norms.argmin())
            hits[way].append(found == target)
            ious[way].append(_iou(masks[way][found], truth))
            scores[way].append(round(float(anomaly_indices(norms)[found]), 4))
            epochs[way].append(ep.tolist())
        max_mask_diff = max(max_mask_diff, float((masks["batched"] - masks["per_label"]).abs().max()))
    n = len(models)
    result = {
        "load_average_at_end": os.getloadavg(),
        "models": n, "source": args.zoo or "trained here", "classes": ctx.num_classes, "settings": vars(nc),
        "seconds_batched": round(seconds["batched"], 2), "seconds_per_label_loop": round(seconds["per_label"], 2),
        "speedup": round(seconds["per_label"] / seconds["batched"], 2),
        "max_mask_difference": max_mask_diff,
        "target_accuracy_batched": sum(hits["batched"]) / n, "target_accuracy_per_label": sum(hits["per_label"]) / n,
        "trigger_iou_batched": round(sum(ious["batched"]) / n, 4),
        "trigger_iou_per_label": round(sum(ious["per_label"]) / n, 4),
        "anomaly_index_batched": scores["batched"], "anomaly_index_per_label": scores["per_label"],
        "epochs_per_label": epochs["batched"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_benchmark(Path(args.out), result, started=started,
                    config={"zoo": args.zoo, "models": args.models, "threads": args.threads, "settings": vars(nc)})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
