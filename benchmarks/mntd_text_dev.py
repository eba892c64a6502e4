"""MNTD (`mntd`, `mntd-oc`) on text, measured on the text DEV zoo only (`sst2-dev`; never `sst2-bench` or
`sst2-jailbreak`): the cold cost of the default text shadows and the model-detection AUROC they give.

    .venv/bin/python benchmarks/mntd_text_dev.py [--zoo /work/zoos/sst2-dev] [--variants]   # about 4 minutes on one core, 7 with --variants

Builds the `sst2-dev` zoo into --zoo if it is not there (24 SST-2 transformers, half trojaned, test_fraction 0: MNTD
never reads a zoo label, so every model is scored). With the detect task's own context (`detection_context`: the
first 200 test sentences), it builds the default text shadows cold in a fresh cache on one torch thread (CPU seconds
and wall seconds, the budget the defaults were sized to: about 90 s of one core), measures a few shadows' clean
accuracy on test sentences past the auditor's 200 and the jumbo shadows' attack success (their own trigger inserted
into those sentences, target-class sentences left out), then scores every dev model with `mntd` and `mntd-oc`:
AUROC with a bootstrap CI over models, per meta-classifier seed (0-4, the authors average 5). `--variants` also scores
the variants in VARIANTS (dev-zoo study; each builds its own shadows, cold) and names the one RULE picks
("default" is the detector's default, which tests/tools/test_mntd_text.py checks against this file).

Writes benchmarks/results/mntd_text_dev.json with its provenance (`write_benchmark`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import bootstrap_auroc
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.detect.jumbo import is_text, shadow_states, shadow_trojan, vocabulary_size
from trojanbench.tools.detect.mntd import DEFAULT_TEXT_SHADOWS, MNTD, MNTDOneClass
from trojanbench.tools.detect.shadow import fresh_copy
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model

SEEDS = range(5)
# the same cold-build budget (about 90 CPU-seconds) spent otherwise: twice the shadows, trained half as long
VARIANTS = {"train-64-epochs-12": {"train": 64, "epochs": 12}}
TIE = 0.05
RULE = ("the highest mean dev-zoo AUROC of mntd over the 5 seeds; where those are within 0.05 (at 22 models, well inside "
        "their CIs), the higher mean best held-out-shadow AUROC (the meta-classifier's own validation)")
PROBE = 4  # shadows of each kind whose accuracy / attack success is measured


def shadow_quality(template, ds, ctx, cfg, cache) -> dict:
    """Clean accuracy of the first PROBE benign and jumbo shadows on test sentences past the auditor's sample, and the
    jumbo shadows' attack success on those of another class than their target."""
    x, y = ds.x_test[len(ctx.x_clean):], ds.y_test[len(ctx.x_clean):]
    out = {}
    for kind in ("benign", "jumbo"):
        states, _ = shadow_states(template, ctx.x_clean, ctx.y_clean, ctx.num_classes, cfg, kind, PROBE, cache)
        accs, asrs = [], []
        for i, state in enumerate(states):
            model = fresh_copy(template, 0)
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():
                accs.append(float((model(x).argmax(1) == y).float().mean()))
                trojan = shadow_trojan(cfg, kind, i, (), ctx.num_classes, vocabulary_size(template))
                if trojan is not None:
                    victims = x[y != trojan.target]
                    asrs.append(float((model(trojan.apply(victims)).argmax(1) == trojan.target).float().mean()))
        out[kind] = {"clean_accuracy": accs, "attack_success": asrs}
    return out


def score(zoo_models, ctx: DetectContext, cfg, cache, seeds) -> dict:
    out = {}
    for name, cls in (("mntd", MNTD), ("mntd-oc", MNTDOneClass)):
        per_seed = []
        for seed in seeds:
            det = cls(text_shadows=cfg, cache=cache)
            c = replace(ctx, seed=seed)
            t0 = time.perf_counter()
            scores = [det.detect(model, c).score for _, model in zoo_models]
            est = bootstrap_auroc([t for t, _ in zoo_models], scores)
            per_seed.append({"seed": seed, "auroc": est.value, "ci": [est.low, est.high], "n": est.n, "scores": scores,
                             "val_auroc": det.builds[0].val_auroc, "seconds": time.perf_counter() - t0})
            print(name, seed, round(est.value, 3), flush=True)
        out[name] = {"per_seed": per_seed, "mean_auroc": float(np.mean([s["auroc"] for s in per_seed]))}
    return out


def cold_build(template, ctx, cfg, cache) -> dict:
    """Every default text shadow (as `mntd` needs them: benign, jumbo, and the held-out ones) trained cold."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trained = 0
    for kind, n in (("benign", cfg.train), ("jumbo", cfg.train), ("benign-val", cfg.val), ("jumbo-val", cfg.val)):
        trained += shadow_states(template, ctx.x_clean, ctx.y_clean, ctx.num_classes, cfg, kind, n, cache)[1]
    return {"shadows": trained, "cpu_seconds": time.process_time() - cpu0, "wall_seconds": time.perf_counter() - wall0,
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/zoos/sst2-dev")
    ap.add_argument("--epochs", type=int, default=None, help="shadow epochs (default: the detector's)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--variants", action="store_true")
    args = ap.parse_args()
    started = time.time()
    build_zoo(load_zoo_config("sst2-dev"), args.zoo)
    zoo = Zoo(args.zoo)  # build_zoo stops with an error where the folder holds another zoo
    ds, ctx = detection_context(zoo)
    assert is_text(ctx.x_clean)
    models = [(int(job.trojaned), load_model(path)[0]) for job, path, _ in zoo.models()]
    cfg = DEFAULT_TEXT_SHADOWS if args.epochs is None else replace(DEFAULT_TEXT_SHADOWS, epochs=args.epochs)
    seeds = range(args.seeds)
    payload = {"zoo": "sst2-dev", "models": len(models), "trojaned": sum(t for t, _ in models),
               "context_sentences": len(ctx.x_clean), "shadows": asdict(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "default"
        payload["cold_build"] = cold_build(models[0][1], ctx, cfg, cache)
        print("cold build", payload["cold_build"], flush=True)
        payload["shadow_quality"] = shadow_quality(models[0][1], ds, ctx, cfg, cache)
        print("shadow quality", payload["shadow_quality"], flush=True)
        payload["default"] = score(models, ctx, cfg, cache, seeds)
        if args.variants:
            payload["variants"] = {}
            for name, change in VARIANTS.items():
                v = replace(cfg, **change)
                vc = Path(tmp) / name
                payload["variants"][name] = {"shadows": asdict(v), "cold_build": cold_build(models[0][1], ctx, v, vc),
                                             "shadow_quality": shadow_quality(models[0][1], ds, ctx, v, vc),
                                             **score(models, ctx, v, vc, seeds)}
    if args.variants:
        payload["rule"] = RULE
        blocks = {"default": payload["default"], **payload["variants"]}
        payload["held_out_shadow_auroc"] = {
            name: float(np.mean([max(s["val_auroc"]) for s in block["mntd"]["per_seed"]])) for name, block in blocks.items()}
        top = max(block["mntd"]["mean_auroc"] for block in blocks.values())
        tied = [name for name, block in blocks.items() if block["mntd"]["mean_auroc"] >= top - TIE]
        payload["chosen"] = max(tied, key=lambda name: payload["held_out_shadow_auroc"][name])
    write_benchmark("mntd_text_dev", payload, config=vars(args), started=started)
    print({k: v["mean_auroc"] for k, v in payload["default"].items()}, "chosen:", payload.get("chosen"))


if __name__ == "__main__":
    from trojanbench.errors import script_main
    torch.set_num_threads(1)  # MNTD builds on one thread anyway; one core left to the other jobs
    script_main(main)
