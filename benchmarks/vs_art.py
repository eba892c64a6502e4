"""Our data-level detectors beside IBM's Adversarial Robustness Toolbox (ART) on the same models and data.

    .venv/bin/pip install adversarial-robustness-toolbox==1.20.1   # benchmark-only, not a package dependency
    .venv/bin/python benchmarks/vs_art.py                          # builds a small zoo of crude trojans first
    .venv/bin/python benchmarks/vs_art.py --zoo zoos/digits        # or uses an existing zoo

For every trojaned model: rebuild its exact poisoned training set from the card; run our spectral signatures
and activation clustering, and ART's SpectralSignatureDefense and ActivationDefence. Two fair comparisons,
never a yes/no decision scored by AUROC:
- ranking against ranking (AUROC): spectral signatures, where ART computes a score for every sample
  (`SpectralSignatureDefense.spectral_signature_scores` on ART's own activations, per class, exactly what its
  `detect_poison` thresholds);
- at ART's operating point: ART's flagged set gives one (TPR, FPR); ours is read off our ranking at the same
  FPR (TPR at ART's FPR), and our activation clustering's own decisions (clusters confirmed by exclusionary
  reclassification) are reported as a (TPR, FPR) pair too. ART is told the TRUE poison rate of each model
  (`expected_pp_poison` = poisoned / training samples).
ART's activation clustering runs twice: as a user gets it (PCA to 10, smaller cluster) and closest to the
paper (FastICA to 10, the smaller cluster of each class as the candidate, confirmed or cleared by exclusionary
reclassification with T = 1, retraining with ART's `fit`: 10 epochs of SGD; ART 1.20.1's relative-size analyser
fails under numpy 2). ART reads "the last layer" of the model (`get_activations(layer=-1)`): for our
CNNs that is the linear head's output, the logits; we read the head's input (activation clustering) and the
last spatial activation (spectral). Writes benchmarks/results/vs_art.json with its provenance (commit, date,
cores, torch threads, the zoo's config).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trojanbench.config import ZooConfig
from trojanbench.implant import prepare
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import auroc, tpr_at_fpr
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect import SAMPLE_DETECTORS
from trojanbench.tools.detect.activation_clustering import rank_samples
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.store import load_model, load_poisoned_indices


def operating_point(flags: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    flagged = flagged.astype(bool)
    return {"tpr": float(flagged[flags == 1].mean()), "fpr": float(flagged[flags == 0].mean())}


def art_classifier(model, x: np.ndarray, num_classes: int):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=num_classes,
                             clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))


def art_spectral(model, x: np.ndarray, y: np.ndarray, num_classes: int, rate: float) -> dict:
    from art.defences.detector.poison import SpectralSignatureDefense
    from art.utils import segment_by_class

    clf = art_classifier(model, x, num_classes)
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    start = time.perf_counter()
    defence = SpectralSignatureDefense(clf, x, onehot, expected_pp_poison=rate)
    _, is_clean = defence.detect_poison()
    seconds = time.perf_counter() - start
    # ART's full ranking: the score its detect_poison thresholds, for every sample of every class
    feats = clf.get_activations(x, layer=len(clf.layer_names) - 1, batch_size=128).reshape(len(x), -1)
    score = np.zeros(len(x))
    for c, idx in enumerate(segment_by_class(np.arange(len(x)), y, num_classes)):
        idx = np.asarray(idx, dtype=int)
        if len(idx):
            score[idx] = SpectralSignatureDefense.spectral_signature_scores(feats[idx]).ravel()
    return {"flagged": 1 - np.asarray(is_clean), "score": score, "seconds": seconds, "feature_dim": feats.shape[1]}


def art_activation_clustering(model, x: np.ndarray, y: np.ndarray, num_classes: int, paper_like: bool) -> dict:
    from art.defences.detector.poison import ActivationDefence

    clf = art_classifier(model, x, num_classes)
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    start = time.perf_counter()
    if paper_like:
        defence = ActivationDefence(clf, x, onehot, ex_re_threshold=1.0)
        # ART 1.20.1's "relative-size" analyser fails under numpy 2 (`cluster_id in poison_clusters` on an
        # array), so the candidates are ART's smaller clusters, each confirmed or cleared by ExRe
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="FastICA", cluster_analysis="smaller")
    else:
        _, is_clean = ActivationDefence(clf, x, onehot).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    return {"flagged": 1 - np.asarray(is_clean), "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=None,
                    help="an existing zoo; a path with no zoo yet gets the small default zoo built there (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vs_art.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        import art
    except ImportError:
        print("error: this benchmark needs ART: .venv/bin/pip install adversarial-robustness-toolbox==1.20.1", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    zoo_dir = args.zoo or Path(tmp.name) / "zoo"
    if not (zoo_dir / "plan.json").is_file():
        cfg = ZooConfig(name="vs-art", models_per_arch=12, archs=[{"arch": "cnn", "kwargs": {"width": 16, "depth": 3}}],
                        trojans={"kinds": ["patch", "blended"], "targets": [1, 4, 6, 9], "rates": [0.05]},
                        train={"epochs": 20}, gate={"min_asr": 0.9, "retries": 1})
        build_zoo(cfg, zoo_dir, batch_models=12)
    zoo = Zoo(zoo_dir)
    ds, ctx = detection_context(zoo)
    spectral = SAMPLE_DETECTORS.get("spectral")()
    clustering = SAMPLE_DETECTORS.get("activation-clustering")()
    rows = []
    for job, folder, card in zoo.models():
        if not job.trojaned:
            continue
        p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
        model, _ = load_model(folder)
        flags = np.zeros(len(p.x))
        flags[load_poisoned_indices(folder, card).numpy()] = 1
        rate = float(flags.mean())
        x_np, y_np = p.x.numpy(), p.y.numpy()
        row = {"job": job.id, "trigger": job.trojan.trigger.kind, "true_poison_rate": round(rate, 4)}

        start = time.perf_counter()
        ours_spectral = spectral.suspicion(model, p.x, p.y, ctx).numpy()
        t_spectral = time.perf_counter() - start
        a_spec = art_spectral(load_model(folder)[0], x_np, y_np, ds.num_classes, rate)
        art_op = operating_point(flags, a_spec["flagged"])
        row["spectral"] = {
            "ranking_auroc": {"ours": auroc(flags, ours_spectral), "art": auroc(flags, a_spec["score"])},
            "at_art_operating_point": {"art": art_op, "ours_tpr_at_art_fpr": tpr_at_fpr(flags, ours_spectral, art_op["fpr"])},
            "seconds": {"ours": t_spectral, "art_detect_poison": a_spec["seconds"]},
            "art_feature_dim": a_spec["feature_dim"]}

        start = time.perf_counter()
        classes = clustering.analyse(model, p.x, p.y, ctx)
        ours_rank = rank_samples(classes, len(p.x)).numpy()
        t_ac = time.perf_counter() - start
        ours_flagged = np.zeros(len(p.x))
        for split in classes:
            if split.poison:
                ours_flagged[split.index[split.cluster == split.candidate]] = 1
        ac = {"ranking_auroc": {"ours": auroc(flags, ours_rank)}, "ours_decisions": operating_point(flags, ours_flagged),
              "seconds": {"ours": t_ac}}
        for name, paper_like in (("art_default", False), ("art_paper_like", True)):
            a = art_activation_clustering(load_model(folder)[0], x_np, y_np, ds.num_classes, paper_like)
            op = operating_point(flags, a["flagged"])
            ac[name] = {**op, "ours_tpr_at_this_fpr": tpr_at_fpr(flags, ours_rank, op["fpr"])}
            ac["seconds"][name] = a["seconds"]
        row["activation_clustering"] = ac
        rows.append(row)
        print(json.dumps(row, default=lambda v: round(v, 3)), flush=True)

    def avg(path):
        vals = [r for r in rows]
        for key in path:
            vals = [v[key] for v in vals]
        return round(statistics.mean(vals), 4)

    summary = {
        "spectral": {
            "ranking_auroc": {"ours": avg(["spectral", "ranking_auroc", "ours"]), "art": avg(["spectral", "ranking_auroc", "art"])},
            "at_art_operating_point": {"art_tpr": avg(["spectral", "at_art_operating_point", "art", "tpr"]),
                                       "art_fpr": avg(["spectral", "at_art_operating_point", "art", "fpr"]),
                                       "ours_tpr_at_art_fpr": avg(["spectral", "at_art_operating_point", "ours_tpr_at_art_fpr"])},
            "seconds_per_model": {"ours": avg(["spectral", "seconds", "ours"]), "art": avg(["spectral", "seconds", "art_detect_poison"])}},
        "activation_clustering": {
            "ranking_auroc_ours": avg(["activation_clustering", "ranking_auroc", "ours"]),
            "ours_decisions": {"tpr": avg(["activation_clustering", "ours_decisions", "tpr"]),
                               "fpr": avg(["activation_clustering", "ours_decisions", "fpr"])},
            **{name: {"art_tpr": avg(["activation_clustering", name, "tpr"]), "art_fpr": avg(["activation_clustering", name, "fpr"]),
                      "ours_tpr_at_art_fpr": avg(["activation_clustering", name, "ours_tpr_at_this_fpr"])}
               for name in ("art_default", "art_paper_like")},
            "seconds_per_model": {k: avg(["activation_clustering", "seconds", k]) for k in ("ours", "art_default", "art_paper_like")}},
    }
    record = {"zoo": f"{zoo.config().name} ({len(zoo.models())} models)", "models": len(rows), "art_version": art.__version__,
              "summary": summary, "per_model": rows}
    write_benchmark(args.out, record, config={"zoo": zoo.config().model_dump(mode="json"), "threads": args.threads,
                                              "ours": ["spectral", "activation-clustering"]})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
