"""Causal tracing and every registered editor on one patch trojan per architecture (digits: CNN, MLP, ViT,
ResNet-18): which layer the trace names, what each editor and control does to ASR and clean accuracy, and
the same edits at every layer in turn (is the traced layer a good choice? the mean over layers is what a
uniformly drawn layer gets on average) -- reported whether or not the edits work.

    .venv/bin/python benchmarks/edit_archs.py [--archs cnn,mlp] [--threads 1]

Every editor gets the same `EditInputs`, as the edit task builds them: the 5% clean budget stamped with the
trigger and its true labels, the budget as the clean twins, the budget itself. Writes
benchmarks/results/edit_archs.json with its provenance (`write_benchmark`: run id, commit, config, cores, torch
threads, date); the file holds one run only, so a partial run (`--archs cnn`) should write elsewhere
(`--out edit_archs_cnn`). About 16 minutes on one CPU thread for the four architectures (training included).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from trojanbench.config import default_train_config
from trojanbench.data import load_dataset
from trojanbench.implant import implant, prepare
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.repair import draw_budget
from trojanbench.tools.edit import EDITORS, EditInputs
from trojanbench.tools.edit.finetune import FineTuneLayer
from trojanbench.tools.edit.projection import TriggerKeyProjection
from trojanbench.tools.edit.rome import Rome
from trojanbench.tools.locate import causal_trace
from trojanbench.train.evaluate import clean_accuracy, predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

ARCHS = {"cnn": {"width": 16, "depth": 3}, "mlp": {"width": 256}, "resnet18": {"width": 16}, "vit": {"dim": 64, "depth": 3}}
EPOCHS = {"cnn": 25, "mlp": 25, "resnet18": 12, "vit": 40}
PER_LAYER = {"rome": Rome, "trigger-key-projection": TriggerKeyProjection, "finetune-layer": FineTuneLayer}


def _r(v: float) -> float:
    return round(float(v), 4)


def one_arch(ds, arch: str, spec: TrojanSpec, x_budget, y_budget) -> dict:
    start = time.perf_counter()
    cfg = default_train_config(arch).model_copy(update={"epochs": EPOCHS[arch]})
    model = implant(ds, arch, ARCHS[arch], spec, cfg, seed=0).model
    trigger = prepare(ds, arch, ARCHS[arch], spec, seed=0).trigger
    train_s = time.perf_counter() - start
    xc = ds.x_test[ds.y_test != spec.poison.target]
    x_trig_test = trigger.apply(xc)

    def measure(m) -> dict:
        return {"asr": _r((predict(m, x_trig_test) == spec.poison.target).float().mean()),
                "clean_acc": _r(clean_accuracy(m, ds.x_test, ds.y_test))}

    start = time.perf_counter()
    trace = causal_trace(model, trigger.apply(xc[:32]), xc[:32], target=spec.poison.target)
    trace_s = time.perf_counter() - start
    inputs = EditInputs(trace.best, trigger.apply(x_budget), y_budget, x_budget, x_budget, y_budget, seed=0)
    out = {"traced_layer": trace.best, "trace_peak": {k: round(v, 3) for k, v in trace.peak.items()},
           "before": measure(model), "train_seconds": round(train_s, 1), "trace_seconds": round(trace_s, 2),
           "editors": {}, "per_layer": {}}
    for name in EDITORS.names():
        editor = EDITORS.get(name)()
        start = time.perf_counter()
        edited = editor.edit(model, inputs)
        out["editors"][name] = {"layer": editor.layer_for(model, inputs), **measure(edited),
                                "seconds": round(time.perf_counter() - start, 2)}
        print(arch, name, out["editors"][name], flush=True)
    for name, cls in PER_LAYER.items():  # every layer in turn: is the traced one a good choice?
        rows = {}
        for layer in trace.effects:
            start = time.perf_counter()
            rows[layer] = {**measure(cls().edit(model, replace(inputs, layer=layer))),
                           "seconds": round(time.perf_counter() - start, 2)}
        n = len(rows)
        out["per_layer"][name] = {"layers": rows, "mean_over_layers": {
            "asr": _r(sum(r["asr"] for r in rows.values()) / n), "clean_acc": _r(sum(r["clean_acc"] for r in rows.values()) / n)},
            "best_layer": min(rows, key=lambda k: (rows[k]["asr"], -rows[k]["clean_acc"]))}
        print(arch, name, "per layer", {k: (v["asr"], v["clean_acc"]) for k, v in rows.items()}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="edit_archs", help="a name under benchmarks/results/, or a .json path")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = load_dataset("digits")
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=0.1))
    idx = draw_budget(ds.y_train, 0.05, ds.num_classes)
    started, start = time.time(), time.perf_counter()
    archs = {arch: one_arch(ds, arch, spec, ds.x_train[idx], ds.y_train[idx]) for arch in a.archs.split(",")}
    result = {"trigger": "3x3 checkerboard patch, bottom-right, 10% poison, target 3",
              "budget": "5% of the training set (class-balanced, seed 0); every editor gets the same EditInputs",
              "wall_seconds": round(time.perf_counter() - start, 1), "archs": archs}
    path = write_benchmark(a.out, result, config=vars(a), started=started)
    print(f"wrote {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
