"""MNTD on the digits zoos: held-out model-detection AUROC (all / crude / insidious trojans, bootstrap 95% CIs)
against the number of shadow models, beside the entropy baseline, and the cold cost of the default shadow zoo.

    .venv/bin/python benchmarks/mntd_digits.py [--zoo DIR ...] [--sizes 0,64,128,256] [--threads 1] [--no-cold]

Default zoo: digits-bench as `trojanbench run` caches it under $TROJANBENCH_CACHE/zoos (run that once first).
One shadow zoo of the largest size is trained (and cached) per zoo; a curve point with n shadow models uses its
first n (half clean, half trojaned). Writes benchmarks/results/mntd_digits.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trojanbench.results.stats import auroc, bootstrap
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect import DETECTORS
from trojanbench.tools.detect.mntd import DEFAULT_SHADOWS, MNTD
from trojanbench.tools.detect.shadow import shadow_zoo
from trojanbench.utils import library_versions
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model


def default_zoo() -> Path:
    from trojanbench.bench import zoo_cache_dir
    from trojanbench.zoo.plan import load_zoo_config

    path = zoo_cache_dir(load_zoo_config("digits-bench"))
    if not path.is_dir():
        raise SystemExit(f"{path} does not exist: run `trojanbench run --track detect` once, or pass --zoo")
    return path


def scores(labels, values, crude, seed=0) -> dict:
    labels, values = np.asarray(labels), np.asarray(values)
    out = {}
    groups = {"all": np.ones(len(labels), bool), "crude": (labels == 0) | crude, "insidious": (labels == 0) | ~crude}
    for name, keep in groups.items():
        est = bootstrap(auroc, labels[keep], values[keep], n_boot=1000, seed=seed, stratify=labels[keep])
        out[name] = [round(est.value, 3), round(est.low, 3), round(est.high, 3)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="append", default=None)
    ap.add_argument("--sizes", default="0,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cold", action="store_true", help="skip timing a cold build of the default shadow zoo")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mntd_digits.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {"sizes": sizes, "shadow_config": DEFAULT_SHADOWS.__dict__, "zoos": {}, "torch_threads": args.threads,
              "versions": library_versions()}
    for zoo_dir in args.zoo or [default_zoo()]:
        zoo = Zoo(zoo_dir)
        _, ctx = detection_context(zoo)
        train = [(j, load_model(f)[0]) for j, f, _ in zoo.models(split="train")]
        test = [(j, load_model(f)[0]) for j, f, _ in zoo.models(split="test")]
        labels = [int(j.trojaned) for j, _ in test]
        crude = np.array([j.trojaned and not j.trojan.insidious for j, _ in test])
        det = MNTD()
        (x_shadow, y_shadow), _ = det._split(ctx)
        entry = {"train_models": len(train), "test_models": len(test), "test_trojaned": sum(labels),
                 "test_crude_trojaned": int(crude.sum()), "curve": {}}
        if not args.no_cold and "cold_build_seconds" not in result:
            with tempfile.TemporaryDirectory() as tmp:  # the default shadow zoo from nothing, as a first run pays it
                start = time.perf_counter()
                shadow_zoo(train[0][1], x_shadow, y_shadow, ctx.num_classes, DEFAULT_SHADOWS, tmp)
                result["cold_build_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        biggest = type(DEFAULT_SHADOWS)(**{**DEFAULT_SHADOWS.__dict__, "models": max(sizes)})
        shadows, shadow_labels, cached = shadow_zoo(train[0][1], x_shadow, y_shadow, ctx.num_classes, biggest) \
            if max(sizes) else ([], [], True)
        entry["largest_shadow_zoo_seconds"] = round(time.perf_counter() - start, 1)
        entry["largest_shadow_zoo_cached"] = cached
        for n in sizes:
            start = time.perf_counter()
            det.fit_with_shadows([m for _, m in train], [int(j.trojaned) for j, _ in train], shadows[:n],
                                 shadow_labels[:n], ctx)
            fit = time.perf_counter() - start
            values = [det.detect(m, ctx).score for _, m in test]
            entry["curve"][n] = {**scores(labels, values, crude), "fit_seconds": round(fit, 2)}
            print(zoo.config().name, n, entry["curve"][n], flush=True)
        base = DETECTORS.get("entropy")()
        base.fit([m for _, m in train], [int(j.trojaned) for j, _ in train], ctx)
        entry["entropy_baseline"] = scores(labels, [base.detect(m, ctx).score for _, m in test], crude)
        result["zoos"][zoo.config().name] = entry
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
