"""Neural Cleanse's scale settings (epochs, batch size, learning rate, clean images), chosen on the DEV zoo only.

Each configuration runs on every model of one split; per model the K mask norms, the anomaly index, the label
found and the trigger IoU are kept, so any summary can be recomputed from the JSON.

    .venv/bin/python benchmarks/nc_dev.py --zoo ZOO --split train --config "steps=100,batch_size=16" \
        --config "steps=100,batch_size=32" --out benchmarks/results/nc_dev_sweep.json
    .venv/bin/python benchmarks/nc_dev.py --zoo ZOO --heldout --out benchmarks/results/nc_dev_heldout.json

ZOO: a built digits-dev zoo (`trojanbench zoo build --config digits-dev --out ZOO`); any other zoo is refused.

No --config: the detector's defaults. Models already measured in --out are skipped (a rerun resumes). Each run's
`by_cap` gives the metrics of the same runs cut after fewer epochs. --heldout: the detect task's own scoring
(`score_model_detectors` and its board, bootstrap CIs) of the registered detector with its defaults on the zoo's
held-out split. Writes --out only, never a results store, with its provenance (`write_benchmark`: run id, commit,
config, cores, torch threads, date); a rerun resumes only from a file written by the same commit.

Run time (1 torch thread, loaded 2-core machine): the sweep above, 28 models x 2 configurations at 100 epochs, about
200 s a model and configuration at batch 16 (about 3 hours in all); --heldout, 13 models at the default 30 epochs,
about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from trojanbench.results.boards import compute_board
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import auroc
from trojanbench.results.store import machine_info
from trojanbench.tasks import population
from trojanbench.tasks.detect import _iou, detection_context, model_board_spec, score_model_detectors
from trojanbench.tools.detect.neural_cleanse import ANOMALY_THRESHOLD, NeuralCleanse, anomaly_indices
from trojanbench.trojans import make_trigger
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model

CAPS = (10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)  # epochs: a capped run is this run cut short


def parse_config(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key.strip()] = float(value) if "." in value or "e-" in value else int(value)
    return out


def run_one(nc: NeuralCleanse, job, folder, ctx, image_shape) -> dict:
    model, _ = load_model(folder)
    start = time.perf_counter()
    inv = nc.search(model, ctx)
    seconds = time.perf_counter() - start
    norms = inv.norms
    found = int(norms.argmin())
    row = {"job": job.id, "trojaned": job.trojaned, "seconds": round(seconds, 2),
           "norms": [round(v, 3) for v in norms.tolist()], "reached": inv.reached.int().tolist(),
           "epochs": inv.epochs.tolist(), "label": inv.classes[found],
           "score": round(float(anomaly_indices(norms)[found]), 4)}
    history = inv.norm_history
    at = {cap: history[min(cap, len(history)) - 1] for cap in CAPS if cap <= nc.steps}  # stopped early: its end
    row["by_cap"] = {str(cap): [inv.classes[int(n.argmin())], round(float(anomaly_indices(n).max()), 4)]
                     for cap, n in at.items()}  # str keys, as they come back from the JSON
    if job.trojaned:
        row.update(kind=job.trojan.trigger.kind, insidious=job.trojan.insidious, target=job.trojan.poison.target)
        truth = make_trigger(job.trojan.trigger, image_shape).mask()
        if truth is not None:
            row["iou"] = round(_iou(inv.masks[found], truth), 4)
    return row


def _num(v: float) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 4)


def summary(rows: list[dict], cap: str | None = None) -> dict:
    """The metrics of the run, or of the same run stopped after `cap` epochs (trigger IoU: final masks only)."""
    if cap is not None:
        rows = [{**r, "label": r["by_cap"][cap][0], "score": r["by_cap"][cap][1]} for r in rows if cap in r["by_cap"]]
        if not rows:
            return {}
    labels = np.array([r["trojaned"] for r in rows], dtype=int)
    scores = np.array([r["score"] for r in rows])
    crude = np.array([not r["trojaned"] or not r["insidious"] for r in rows])
    patch = np.array([not r["trojaned"] or r["kind"] == "patch" for r in rows])
    troj = [r for r in rows if r["trojaned"] and r.get("target") is not None]
    ious = [r["iou"] for r in rows if "iou" in r]
    patch_hits = [r["score"] > ANOMALY_THRESHOLD for r in rows if r["trojaned"] and r["kind"] == "patch"]
    return {
        **({"epochs_cap": int(cap)} if cap is not None else {}),
        "models": len(rows), "trojaned": int(labels.sum()),
        "auroc": _num(auroc(labels, scores)),
        "auroc_crude": _num(auroc(labels[crude], scores[crude])),
        "auroc_patch": _num(auroc(labels[patch], scores[patch])),
        "target_accuracy": round(float(np.mean([r["label"] == r["target"] for r in troj])), 4) if troj else None,
        "trigger_iou": round(float(np.mean(ious)), 4) if ious else None,
        "clean_below_2": _num(np.mean(scores[labels == 0] <= ANOMALY_THRESHOLD)) if (labels == 0).any() else None,
        "trojaned_above_2": _num(np.mean(scores[labels == 1] > ANOMALY_THRESHOLD)) if labels.any() else None,
        "patch_above_2": _num(np.mean(patch_hits)) if patch_hits else None,
        "mask_reached_threshold": round(float(np.mean([np.mean(r["reached"]) for r in rows])), 4),
        "mean_epochs": round(float(np.mean([np.mean(r["epochs"]) for r in rows])), 1),
        "seconds_per_model": round(float(np.mean([r["seconds"] for r in rows])), 2),
    }


def heldout(zoo: Zoo, ds, ctx, out: Path, config: dict) -> None:
    """The detect task's own scoring of the registered detector (its defaults) on the held-out split."""
    started, start = time.time(), time.perf_counter()
    rows = score_model_detectors(zoo, ["neural-cleanse"], ctx, ds.image_shape, store=None)
    spec = model_board_spec(population(zoo, "test", zoo.models(split="test")))
    scores = compute_board(rows, spec, n_boot=2000, seed=ctx.seed).get("neural-cleanse")
    per_model = [{"job": r.extra["job"], "trojaned": bool(r.extra["label"]), "groups": r.extra["groups"],
                  "anomaly_index": round(r.value, 4), "target_label": r.extra["target_label"]}
                 for r in rows if r.metric == "score"]
    doc = {"zoo": str(zoo.root), "split": "test", "settings": vars(NeuralCleanse()),
           "load_average_at_end": os.getloadavg(), "seconds": round(time.perf_counter() - start, 1),
           "metrics": {name: {"value": _num(e.value), "low": _num(e.low), "high": _num(e.high), "n": e.n}
                       for name, e in scores.metrics.items()},
           "models": per_model}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark(out, doc, config=config, seed=ctx.seed, started=started)
    print(json.dumps(doc["metrics"], indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-models", type=int, default=None)
    ap.add_argument("--heldout", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = Zoo(args.zoo)
    if zoo.config().name != "digits-dev":
        raise SystemExit("design choices are made on the dev zoo (digits-dev) only")
    ds, ctx = detection_context(zoo)
    config = {"zoo": zoo.config().model_dump(mode="json"), "zoo_path": str(zoo.root), "threads": args.threads,
              "heldout": args.heldout, "split": "test" if args.heldout else args.split, "configs": args.config,
              "max_models": args.max_models}
    if args.heldout:
        return heldout(zoo, ds, ctx, Path(args.out), config)
    models = zoo.models(split=args.split)[:args.max_models]
    out = Path(args.out)
    started = time.time()
    fresh = {"zoo": str(zoo.root), "split": args.split, "runs": {}}
    doc = json.loads(out.read_text()) if out.is_file() else fresh
    previous = doc.pop("provenance", None)
    if previous is None or previous.get("commit") != machine_info()["commit"] or doc.get("split") != args.split:
        doc = fresh  # resume only what this code measured: a file of another commit (or none recorded) is replaced
    elif previous.get("run_id"):
        doc["resumed_from"] = sorted({*doc.get("resumed_from", []), previous["run_id"]})
    for text in args.config or [""]:
        name = text or "defaults"
        nc = NeuralCleanse(**parse_config(text))
        run = doc["runs"].setdefault(name, {"settings": dict(vars(nc)), "models": []})
        done = {r["job"] for r in run["models"]}
        for job, folder, _ in models:
            if job.id in done:  # a rerun resumes: models already measured with this configuration are kept
                continue
            run["models"].append(run_one(nc, job, folder, ctx, ds.image_shape))
            r = run["models"][-1]
            print(name, r["job"], "trojaned" if r["trojaned"] else "clean", r.get("kind", ""), r.get("target", ""),
                  "->", r["label"], f"score {r['score']:.2f}", f"{r['seconds']:.1f}s", flush=True)
            rows = run["models"]
            run["summary"] = summary(rows)
            run["by_cap"] = {c: summary(rows, c) for c in sorted({c for r in rows for c in r["by_cap"]}, key=int)}
            out.parent.mkdir(parents=True, exist_ok=True)
            write_benchmark(out, doc, config=config, seed=ctx.seed, started=started)
        print(name, json.dumps(run.get("summary")), flush=True)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
