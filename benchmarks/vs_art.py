"""Our data-level detectors beside IBM's Adversarial Robustness Toolbox (ART) on the same models and data.

    .venv/bin/pip install adversarial-robustness-toolbox      # benchmark-only dependency
    .venv/bin/python benchmarks/vs_art.py                     # builds a small zoo of crude trojans first
    .venv/bin/python benchmarks/vs_art.py --zoo zoos/digits   # or uses an existing zoo

For every trojaned model: rebuild its exact poisoned training set from the card, run our spectral
signatures and activation clustering and ART's SpectralSignatureDefense and ActivationDefence, and score
each by poisoned-sample AUROC (ART's defences return a keep/remove decision plus, for spectral, a score for
the removed samples; we rank by that). Writes mean AUROC and total wall time per method to
benchmarks/results/vs_art.json.
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
from trojanbench.results.stats import auroc
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect import SAMPLE_DETECTORS
from trojanbench.utils import library_versions
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.store import load_model


def art_scores(model, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, tuple[np.ndarray, float]]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:],
                            nb_classes=num_classes, clip_values=(0.0, 1.0))
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    out = {}
    start = time.perf_counter()
    report, is_clean = SpectralSignatureDefense(clf, x, onehot, expected_pp_poison=0.1).detect_poison()
    score = np.zeros(len(x))
    for idx, s in report.items():
        score[idx] = 1.0 + float(s)  # removed samples rank above kept ones, by ART's own score
    out["art-spectral"] = (score, time.perf_counter() - start)
    start = time.perf_counter()
    _, is_clean = ActivationDefence(clf, x, onehot).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    out["art-activation-clustering"] = (1.0 - np.asarray(is_clean, dtype=float), time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=None, help="an existing zoo (default: build a small one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vs_art.json")
    args = ap.parse_args()
    try:
        import art  # noqa: F401
    except ImportError:
        print("error: this benchmark needs ART: .venv/bin/pip install adversarial-robustness-toolbox", file=sys.stderr)
        sys.exit(2)
    tmp = tempfile.TemporaryDirectory()
    zoo_dir = args.zoo
    if zoo_dir is None:
        zoo_dir = Path(tmp.name) / "zoo"
        cfg = ZooConfig(name="vs-art", models_per_arch=12, archs=[{"arch": "cnn", "kwargs": {"width": 16, "depth": 3}}],
                        trojans={"kinds": ["patch", "blended"], "targets": [1, 4, 6, 9], "rates": [0.05]},
                        train={"epochs": 20}, gate={"min_asr": 0.9, "retries": 1})
        build_zoo(cfg, zoo_dir, batch_models=12)
    zoo = Zoo(zoo_dir)
    ds, ctx = detection_context(zoo)
    ours = {"spectral": SAMPLE_DETECTORS.get("spectral")(), "activation-clustering": SAMPLE_DETECTORS.get("activation-clustering")()}
    per_model, totals = [], {}
    for job, folder, card in zoo.models():
        if not job.trojaned:
            continue
        p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
        model, _ = load_model(folder)
        flags = np.zeros(len(p.x))
        flags[p.poisoned_indices.numpy()] = 1
        row = {"job": job.id, "trigger": job.trojan.trigger.kind, "rate": job.trojan.poison.rate}
        for name, det in ours.items():
            start = time.perf_counter()
            s = det.suspicion(model, p.x, p.y, ctx).numpy()
            row[name] = (auroc(flags, s), time.perf_counter() - start)
        for name, (s, seconds) in art_scores(model, p.x.numpy(), p.y.numpy(), ds.num_classes).items():
            row[name] = (auroc(flags, s), seconds)
        per_model.append(row)
        print(json.dumps({k: (round(v[0], 3) if isinstance(v, tuple) else v) for k, v in row.items()}), flush=True)
    methods = ["spectral", "art-spectral", "activation-clustering", "art-activation-clustering"]
    for m in methods:
        totals[m] = {"mean_auroc": round(statistics.mean(r[m][0] for r in per_model), 4),
                     "seconds_total": round(sum(r[m][1] for r in per_model), 2)}
    record = {"zoo": str(zoo_dir), "models": len(per_model), "methods": totals,
              "time_ratio_art_over_ours": {
                  "spectral": round(totals["art-spectral"]["seconds_total"] / totals["spectral"]["seconds_total"], 2),
                  "activation-clustering": round(totals["art-activation-clustering"]["seconds_total"]
                                                 / totals["activation-clustering"]["seconds_total"], 2)},
              "per_model": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in per_model],
              "versions": {**library_versions(), "art": __import__("art").__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"methods": totals, "time_ratio_art_over_ours": record["time_ratio_art_over_ours"]}, indent=1))


if __name__ == "__main__":
    main()
