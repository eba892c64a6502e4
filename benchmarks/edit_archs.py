"""Causal tracing + one rank-one edit on a patch trojan in each architecture (digits): where the trace points,
which layer it names, and what one edit of that layer does to ASR and clean accuracy -- reported whether or
not the edit works.

    .venv/bin/python benchmarks/edit_archs.py

Writes benchmarks/results/edit_archs.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from trojanbench.config import default_train_config
from trojanbench.data import load_dataset
from trojanbench.implant import implant, prepare
from trojanbench.tasks.repair import draw_budget
from trojanbench.tools.edit import rank_one_edit
from trojanbench.tools.locate import causal_trace
from trojanbench.train.evaluate import clean_accuracy, predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.utils import library_versions

ARCHS = {"cnn": {"width": 16, "depth": 3}, "mlp": {"width": 256}, "resnet18": {"width": 16}, "vit": {"dim": 64, "depth": 3}}
EPOCHS = {"cnn": 25, "mlp": 25, "resnet18": 12, "vit": 40}


def main() -> None:
    ds = load_dataset("digits")
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=0.1))
    budget = ds.x_train[draw_budget(ds.y_train, 0.05, ds.num_classes)]
    out = {}
    for arch, kwargs in ARCHS.items():
        start = time.perf_counter()
        cfg = default_train_config(arch).model_copy(update={"epochs": EPOCHS[arch]})
        model = implant(ds, arch, kwargs, spec, cfg, seed=0).model
        trigger = prepare(ds, arch, kwargs, spec, seed=0).trigger
        xc = ds.x_test[ds.y_test != 3]
        asr = lambda m: float((predict(m, trigger.apply(xc)) == 3).float().mean())  # noqa: E731
        trace = causal_trace(model, trigger.apply(xc[:32]), xc[:32], target=3)
        layer = trace.best
        edited = rank_one_edit(model, layer, trigger.apply(budget), budget, budget)
        out[arch] = {"layer": layer, "trace_peak": {k: round(v, 3) for k, v in trace.peak.items()},
                     "asr_before": asr(model), "asr_after": asr(edited),
                     "clean_before": clean_accuracy(model, ds.x_test, ds.y_test),
                     "clean_after": clean_accuracy(edited, ds.x_test, ds.y_test),
                     "per_layer_edit": {}, "seconds": 0.0}
        for name in trace.effects:  # every layer, to show whether the trace's choice is a good one
            e = rank_one_edit(model, name, trigger.apply(budget), budget, budget)
            out[arch]["per_layer_edit"][name] = {"asr": asr(e), "clean": clean_accuracy(e, ds.x_test, ds.y_test)}
        out[arch]["seconds"] = round(time.perf_counter() - start, 1)
        print(arch, {k: v for k, v in out[arch].items() if k != "per_layer_edit"}, flush=True)
    result = {"trigger": "3x3 checkerboard patch, bottom-right, 10% poison, target 3", "budget": "5% of the training set",
              "archs": out, "versions": library_versions()}
    path = Path(__file__).parent / "results" / "edit_archs.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
