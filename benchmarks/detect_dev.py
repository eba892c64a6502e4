"""Design choices of the sample-level detectors and of the data-free weight baseline, made on the DEV zoo only.

    .venv/bin/python benchmarks/detect_dev.py                          # /work/zoos/digits-dev or --zoo
    .venv/bin/python benchmarks/detect_dev.py --final                  # the detect task with the final defaults

Study (default): for every trojaned model of the dev zoo, rebuild its exact poisoned training set and score
the variants a choice is made between, by poisoned-sample AUROC:
- activation clustering: layer (penultimate vector / last spatial activation) x reduction (ICA / PCA);
- STRIP: N = 100 (the paper) and N = 10 (the paper's run-time setting), and N = 10 with the sum clipped to
  [0, 1] (the previous version) against the unclipped sum of the original;
- Mahalanobis: class means and covariance fitted on the training set or on the auditor's clean sample;
and, over every model of the zoo, the final-layer statistic of `final-layer-outlier` (model AUROC and target
accuracy). Per-model rows are appended as they come (a rerun resumes), summaries at the end.
`--final` runs the detect task's `score_sample_detectors` (store None: nothing is written to a results store)
and the data-free model-level baseline with the defaults the study chose (mean AUROC over trojans with a
bootstrap CI), and writes their numbers beside the study.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from trojanbench.implant import prepare
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import auroc, bootstrap_auroc, bootstrap_mean
from trojanbench.results.store import machine_info
from trojanbench.tasks.detect import detection_context, score_sample_detectors
from trojanbench.tools.detect import DETECTORS, SAMPLE_DETECTORS
from trojanbench.tools.detect.activation_clustering import ActivationClustering, rank_samples
from trojanbench.tools.detect.baselines import FinalLayerOutlier
from trojanbench.tools.detect.data_level import Mahalanobis, Strip
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model, load_poisoned_indices


class ClippedStrip(Strip):
    """The previous STRIP superimposition (sum clipped to [0, 1]), for the comparison only."""

    def suspicion(self, model, x, y, ctx):
        return super().suspicion(_Clipping(model), x, y, ctx)


class _Clipping(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.clamp(0, 1))


VARIANTS = {
    "ac[penultimate,ica]": lambda: ActivationClustering(layer="penultimate", reduce="ica"),
    "ac[penultimate,pca]": lambda: ActivationClustering(layer="penultimate", reduce="pca"),
    "ac[spatial,ica]": lambda: ActivationClustering(layer="spatial", reduce="ica"),
    "ac[spatial,pca]": lambda: ActivationClustering(layer="spatial", reduce="pca"),
    "strip[N=100]": lambda: Strip(overlays=100),
    "strip[N=10]": lambda: Strip(overlays=10),
    "strip[N=10,clipped]": lambda: ClippedStrip(overlays=10),
    "mahalanobis[train]": lambda: Mahalanobis(fit_on="train"),
    "mahalanobis[clean]": lambda: Mahalanobis(fit_on="clean"),
    "knn-pixels": lambda: SAMPLE_DETECTORS.get("knn-pixels")(),
    "spectral": lambda: SAMPLE_DETECTORS.get("spectral")(),
}


def poisoned_sets(zoo: Zoo, ds):
    for job, folder, card in zoo.models():
        if not job.trojaned:
            continue
        p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
        flags = np.zeros(len(p.x))
        flags[load_poisoned_indices(folder, card).numpy()] = 1
        yield job, folder, p.x, p.y, flags


def target_share(y: torch.Tensor, flags: np.ndarray, target: int | None) -> float | None:
    if target is None:
        return None
    in_target = (y.numpy() == target)
    return float(flags[in_target].mean())


def study(zoo: Zoo, out: dict, save) -> None:
    ds, ctx = detection_context(zoo)
    rows = out.setdefault("per_model", {})
    for job, folder, x, y, flags in poisoned_sets(zoo, ds):
        if job.id in rows and set(VARIANTS) <= set(rows[job.id]["auroc"]):
            continue
        model, _ = load_model(folder)
        row = rows.setdefault(job.id, {"kind": job.trojan.trigger.kind, "insidious": job.trojan.insidious,
                                       "rate": job.trojan.poison.rate, "target": job.trojan.poison.target,
                                       "target_share": target_share(y, flags, job.trojan.poison.target),
                                       "auroc": {}, "seconds": {}, "ac": {}})
        for name, make in VARIANTS.items():
            if name in row["auroc"]:
                continue
            det = make()
            start = time.perf_counter()
            if isinstance(det, ActivationClustering):
                classes = det.analyse(model, x, y, ctx)
                s = rank_samples(classes, len(x)).numpy()
                row["ac"][name] = [{"label": c.label, "share": round(c.share, 3), "silhouette": round(c.silhouette, 3),
                                    "flagged": c.flagged, "exre": c.exre, "poison": c.poison,
                                    "poison_in_candidate": int(flags[c.index][c.cluster == c.candidate].sum()),
                                    "poison_in_class": int(flags[c.index].sum())} for c in classes]
            else:
                s = det.suspicion(model, x, y, ctx).numpy()
            row["seconds"][name] = round(time.perf_counter() - start, 2)
            row["auroc"][name] = round(auroc(flags, s), 4)
            print(job.id, row["kind"], name, row["auroc"][name], row["seconds"][name], flush=True)
            save()
    out["model_level"] = model_level(zoo, ctx)
    out["summary"] = summarise(rows)
    save()


def model_level(zoo: Zoo, ctx) -> dict:
    labels, scores = [], {s: [] for s in ("norm", "bias", "positive")}
    hits = {s: [] for s in scores}
    for job, folder, card in zoo.models():
        model, _ = load_model(folder)
        labels.append(int(job.trojaned))
        target = job.trojan.poison.target if job.trojaned else None
        for stat, values in scores.items():
            d = FinalLayerOutlier(stat).detect(model, ctx)
            values.append(d.score)
            if target is not None:
                hits[stat].append(float(d.target_label == target))
    return {f"final-layer-outlier[{s}]": {"auroc": round(auroc(labels, scores[s]), 4),
                                          "target_accuracy": round(statistics.mean(hits[s]), 4) if hits[s] else None,
                                          "models": len(labels)} for s in scores}


def summarise(rows: dict) -> dict:
    out = {}
    for name in VARIANTS:
        vals = [r["auroc"][name] for r in rows.values() if name in r["auroc"]]
        if not vals:
            continue
        by_kind = {}
        for kind in sorted({r["kind"] for r in rows.values()}):
            kv = [r["auroc"][name] for r in rows.values() if r["kind"] == kind and name in r["auroc"]]
            by_kind[kind] = round(statistics.mean(kv), 4)
        out[name] = {"mean_auroc": round(statistics.mean(vals), 4), "min_auroc": round(min(vals), 4),
                     "models": len(vals), "by_kind": by_kind,
                     "crude": round(statistics.mean([r["auroc"][name] for r in rows.values()
                                                     if not r["insidious"] and name in r["auroc"]] or [float("nan")]), 4),
                     "mean_seconds": round(statistics.mean(r["seconds"][name] for r in rows.values()
                                                           if name in r["seconds"]), 2)}
    return out


def final(zoo: Zoo, out: dict, save) -> None:
    _, ctx = detection_context(zoo)
    names = ["activation-clustering", "strip", "spectral", "mahalanobis", "knn-pixels", "random"]
    rows = score_sample_detectors(zoo, names, ctx, None)  # store None: nothing is written
    sample = {}
    for name in names:
        mine = [r for r in rows if r.tool == name]
        for metric in ("auroc", "tpr@5fpr", "seconds"):
            est = bootstrap_mean([r.value for r in mine if r.metric == metric and r.value is not None])
            sample.setdefault(name, {})[metric] = [round(est.value, 4), round(est.low, 4), round(est.high, 4), est.n]
        by_group = {}
        for r in mine:
            if r.metric == "auroc" and r.value is not None:
                for g in r.extra["groups"]:
                    by_group.setdefault(g, []).append(r.value)
        sample[name]["auroc_by_group"] = {g: round(statistics.mean(v), 4) for g, v in sorted(by_group.items())}
    out["final_sample_level"] = sample
    models = zoo.models()
    labels = [int(j.trojaned) for j, _, _ in models]
    final_model = {}
    for name in ("final-layer-outlier",):
        det = DETECTORS.get(name)()
        found = [det.detect(load_model(f)[0], ctx) for _, f, _ in models]
        hits = [float(d.target_label == j.trojan.poison.target) for (j, _, _), d in zip(models, found)
                if j.trojaned and j.trojan.poison.target is not None]
        est = bootstrap_auroc(labels, [d.score for d in found])
        final_model[name] = {"auroc_all_models": [round(est.value, 4), round(est.low, 4), round(est.high, 4)],
                             "target_accuracy": round(statistics.mean(hits), 4), "models": len(labels)}
    out["final_model_level"] = final_model
    out["final_machine"] = machine_info()
    save()
    print(json.dumps({"sample": {k: v["auroc"] for k, v in sample.items()}, "model": final_model}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path("/work/zoos/digits-dev"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detect_dev.json")
    ap.add_argument("--final", action="store_true", help="score the final defaults with the detect task")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    zoo = Zoo(args.zoo)
    out = json.loads(args.out.read_text()) if args.out.is_file() else {}  # a rerun resumes
    out.pop("provenance", None)  # write_benchmark records this run's
    out.pop("zoo_config", None)
    out["zoo"] = zoo.config().name

    def save():
        write_benchmark(args.out, out, config={"zoo": zoo.config().model_dump(mode="json"),
                                               "variants": list(VARIANTS), "threads": torch.get_num_threads()})

    (final if args.final else study)(zoo, out, save)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
