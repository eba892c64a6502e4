"""Feature synthesis scored by transfer ASR: for every all-to-one trojan, each synthesizer gets the model, the
target label and a small clean sample (the first 200 test images); its stamp is pasted on the remaining clean
test images of other classes, and the share sent to the target is its transfer ASR (bootstrap 95% CI over
models, split by trigger kind and crude vs insidious). The same synthesizer on the model's clean twin, toward
the same label, is the control (`transfer_asr_clean_twin`): a method that sends images there as well is
finding adversarial features, not the trojan. A panel per run shows each method's stamp beside the true
trigger on the same image."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..implant import prepare
from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate, bootstrap, mean
from ..tools.detect import DetectContext
from ..tools.synthesize import SYNTHESIZERS
from ..train.evaluate import predict
from ..zoo.build import Zoo
from ..zoo.store import load_model
from .detect import ToolScores
from .repair import groups_of

TASK = "synthesize"
N_CONTEXT = 200


def run_synthesize_track(zoo_dir: str | Path, results: str | Path | None, tools: list[str] | None = None, seed: int = 0,
                         split: str | None = None, max_models: int | None = None, n_boot: int = 1000, progress=None,
                         figures: str | Path | None = None) -> list[ToolScores]:
    names = tools or SYNTHESIZERS.names()
    for n in names:
        SYNTHESIZERS.get(n)
    zoo = Zoo(zoo_dir)
    zoo.plan()
    cfg = zoo.config()
    ds = zoo.dataset()
    models = zoo.trojaned(split, max_models)
    ctx = DetectContext(ds.x_test[:N_CONTEXT], ds.y_test[:N_CONTEXT], ds.num_classes, seed=seed)
    x_eval, y_eval = ds.x_test[N_CONTEXT:], ds.y_test[N_CONTEXT:]
    per_tool: dict[str, list[dict]] = defaultdict(list)
    panel = None
    store = ResultsStore(results) if results is not None else None
    try:
        for job, folder, card in models:
            model, _ = load_model(folder)
            twin = load_model(zoo.root / "models" / job.twin)[0] if job.twin and zoo._valid_model(job.twin) else None
            target = job.trojan.poison.target
            others = x_eval[y_eval != target]
            stamps = {}
            for name in names:
                start = time.perf_counter()
                stamp = SYNTHESIZERS.get(name)().synthesize(model, target, ctx)
                seconds = time.perf_counter() - start
                stamps[name] = stamp
                asr = float((predict(model, stamp.apply(others)) == target).float().mean())
                rec = {"transfer_asr": asr, "seconds": seconds, "groups": groups_of(job)}
                if twin is not None:
                    control = SYNTHESIZERS.get(name)().synthesize(twin, target, ctx)
                    rec["transfer_asr_clean_twin"] = float((predict(twin, control.apply(others)) == target).float().mean())
                per_tool[name].append(rec)
                if store is not None:
                    store.write(ResultRow(name, card.id, TASK, "transfer_asr", asr, seed=seed,
                                          extra={"job": job.id, "seconds": seconds, "target": target}))
                if progress:
                    progress()
            if panel is None and job.trojan.trigger.kind == "patch":
                trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
                panel = (others[:1], trigger.apply(others[:1]), stamps, target)
        out = []
        for name in names:
            recs = per_tool[name]
            res = ToolScores(name, SYNTHESIZERS.get(name).is_baseline)
            res.metrics["transfer_asr"] = bootstrap(mean, np.array([r["transfer_asr"] for r in recs]), n_boot=n_boot, seed=seed)
            for g in sorted({g for r in recs for g in r["groups"]}):
                vals = np.array([r["transfer_asr"] for r in recs if g in r["groups"]])
                res.metrics[f"transfer_asr[{g}]"] = bootstrap(mean, vals, n_boot=n_boot, seed=seed)
            controls = np.array([r["transfer_asr_clean_twin"] for r in recs if "transfer_asr_clean_twin" in r])
            res.metrics["transfer_asr_clean_twin"] = bootstrap(mean, controls, n_boot=n_boot, seed=seed)
            res.metrics["seconds_per_model"] = Estimate(float(np.mean([r["seconds"] for r in recs])), float("nan"),
                                                        float("nan"), len(recs))
            out.append(res)
        if store is not None:
            store.write([ResultRow(s.tool, f"zoo:{cfg.name}", TASK, m, est.value, seed=seed,
                                   tool_version=SYNTHESIZERS.get(s.tool).version,
                                   extra={"low": est.low, "high": est.high, "n": est.n, "baseline": s.is_baseline})
                         for s in out for m, est in s.metrics.items()])
            if figures is not None and panel is not None:
                from ..report.html import figure_row

                path = _panel(panel, Path(figures) / "synthesize-stamps.png")
                store.write(figure_row("synthesize", TASK, path, "a patch trojan's true trigger beside what each synthesizer "
                                       "produced, pasted on the same clean image (top: the stamp, bottom: its mask)", seed))
    finally:
        if store is not None:
            store.close()
    return out


def _panel(panel, path: Path) -> Path:
    from ..report.plots import pyplot, save

    clean, triggered, stamps, target = panel
    plt = pyplot()
    cols = [("true trigger", triggered[0], None)] + [(n, s.apply(clean)[0], s.mask) for n, s in stamps.items()]
    fig, axes = plt.subplots(2, len(cols), figsize=(1.7 * len(cols), 3.6), dpi=110, squeeze=False)
    for j, (name, img, mask) in enumerate(cols):
        axes[0][j].imshow(img.permute(1, 2, 0).squeeze().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0][j].set_title(name, fontsize=7)
        if mask is not None:
            axes[1][j].imshow(mask.numpy(), cmap="magma", vmin=0, vmax=1)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"toward target {target}", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
