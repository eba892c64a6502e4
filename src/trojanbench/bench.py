"""The main job (`trojanbench run`): build (or reuse) a zoo, run every registered tool of every track on it,
write the results store, render the HTML report, and return the leaderboards.

A track is one function `run(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]` plus
the registries its tools live in (so `--tools` can be checked and routed before anything runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .results import ResultRow, ResultsStore
from .utils import canonical_json, library_versions, sha256_bytes


@dataclass
class Board:
    """One leaderboard for the terminal: ToolScores-like rows ranked by `key`."""

    title: str
    scores: list
    key: str
    columns: list[tuple[str, str]]
    higher_is_better: bool = True


@dataclass
class Track:
    name: str
    run: Callable[..., list[Board]]
    registries: Callable[[], list]  # imported lazily: a track's tools load only when it runs
    about: str = ""


TRACKS: dict[str, Track] = {}


def register_track(track: Track) -> Track:
    TRACKS[track.name] = track
    return track


def _detect(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]:
    from .tasks.detect import run_detect_track

    model_scores, sample_scores = run_detect_track(zoo_dir, results, tools, seed=seed, device=device, progress=progress,
                                                   figures=figures, sample_split="test")
    boards = []
    if model_scores:
        boards.append(Board("Is this model trojaned? (held-out zoo split)", model_scores, "auroc", [
            ("auroc", "AUROC"), ("auroc[crude]", "AUROC crude"), ("auroc[insidious]", "AUROC insidious"),
            ("target_accuracy", "target acc"), ("trigger_iou", "trigger IoU"), ("seconds_per_model", "s/model")]))
    if sample_scores:
        boards.append(Board("Which training samples were poisoned? (held-out trojaned models)", sample_scores, "auroc", [
            ("auroc", "AUROC"), ("tpr@5fpr", "TPR@5%FPR"), ("auroc[kind=patch]", "AUROC patch"),
            ("auroc[insidious]", "AUROC insidious"), ("seconds_per_model", "s/model")]))
    return boards


def _detect_registries():
    from .tools.detect import DETECTORS, SAMPLE_DETECTORS

    return [DETECTORS, SAMPLE_DETECTORS]


register_track(Track("detect", _detect, _detect_registries, "is this model trojaned; which samples were poisoned"))


def _diagnose(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]:
    from .report.html import figure_row
    from .tasks.diagnose import TASK, run_diagnose_track

    scores = run_diagnose_track(zoo_dir, results, tools, seed=seed, n_images=DIAGNOSE_IMAGES, progress=progress,
                                images_dir=figures, split="test", device=device)
    with ResultsStore(results) as store:
        store.write([figure_row("diagnose", TASK, path, f"{path.stem.removeprefix('diagnose-')} trigger: triggered input, "
                                "ground-truth footprint, and attribution maps toward the target label", seed)
                     for path in sorted(Path(figures).glob("diagnose-*.png"))])
    columns = [("correlation[kind=patch]", "corr patch"), ("pointing_game[kind=patch]", "pointing game"),
               ("pointing_game_strict[kind=patch]", "PG strict"), ("mask_auroc[kind=patch]", "mask AUROC"),
               ("correlation", "corr all kinds"), ("sanity_similarity", "sanity sim"), ("sanity_pass", "sanity pass"),
               ("seconds_per_model", "s/model")]
    return [Board("Do attribution maps point at the trigger? (held-out trojaned models)", scores, "correlation[kind=patch]",
                  columns)]


def _diagnose_registries():
    from .tools.attribute import ATTRIBUTORS

    return [ATTRIBUTORS]


DIAGNOSE_IMAGES = 16  # triggered images per model in the default benchmark
register_track(Track("diagnose", _diagnose, _diagnose_registries, "do attribution maps point at the trigger"))


def _synthesize(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]:
    from .tasks.synthesize import run_synthesize_track

    scores = run_synthesize_track(zoo_dir, results, tools, seed=seed, split="test", progress=progress, figures=figures,
                                  bank=Path(results).parent / "survey")
    return [Board("Feature synthesis: transfer ASR of each method's stamp (held-out trojans; the clean-twin column is the "
                  "control) and 8-way multiple choice by an independent judge (chance 0.125)",
                  scores, "transfer_asr", [("transfer_asr", "transfer ASR"), ("transfer_asr_clean_twin", "on clean twin"),
                                           ("transfer_asr[kind=patch]", "patch"), ("mc_accuracy", "8-way MC"),
                                           ("mc_accuracy[kind=patch]", "MC patch"), ("seconds_per_model", "s/model")])]


def _synthesize_registries():
    from .tools.synthesize import SYNTHESIZERS

    return [SYNTHESIZERS]


register_track(Track("synthesize", _synthesize, _synthesize_registries, "does feature synthesis rediscover the trigger"))


REPAIR_BUDGET = 0.05  # the default benchmark repairs the held-out split's trojans with a 5% clean budget


def _repair(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]:
    from .report.html import figure_row
    from .tasks.repair import TASK, frontier_plot, run_repair_track

    b = REPAIR_BUDGET
    scores = run_repair_track(zoo_dir, results, tools, budgets=(b,), seed=seed, progress=progress, device=device,
                              split="test")
    path = frontier_plot(scores, Path(figures) / "repair-frontier.png")
    with ResultsStore(results) as store:
        store.write(figure_row("repair", TASK, path, f"ASR drop vs clean-accuracy cost with a {b:.0%} clean budget "
                               "(95% CIs; fine-tuning in black, anchors in grey, the dotted line at 3 points)", seed))
    columns = [(f"{m}@{b:g}", h) for m, h in (("asr", "ASR after"), ("clean_acc", "clean acc"), ("clean_cost", "clean cost"),
                                              ("robust_acc", "robust acc"), ("asr[kind=patch]", "ASR patch"),
                                              ("asr[insidious]", "ASR insidious"), ("seconds_per_model", "s/model"),
                                              ("beats_finetune", "beats FT"))]
    boards = []
    for budget, ss in scores.items():
        for s in ss:  # the terminal board reads metric@budget names like the stored rows
            s.metrics = {f"{k}@{budget:g}": v for k, v in s.metrics.items()}
        boards.append(Board(f"Repair with a {budget:.0%} clean budget ({ss[0].metrics[f'asr@{budget:g}'].n} trojaned models)",
                            ss, f"asr@{budget:g}", [(m, h) for m, h in columns], higher_is_better=False))
    return boards


def _repair_registries():
    from .tools.repair import REPAIRERS

    return [REPAIRERS]


register_track(Track("repair", _repair, _repair_registries, "scrub the trojan with a small clean budget"))


def _edit(zoo_dir, results, tools, seed, device, figures, progress) -> list[Board]:
    from .tasks.edit import run_edit_track

    scores = run_edit_track(zoo_dir, results, tools, seed=seed, split="test", progress=progress, figures=figures)
    return [Board("Locate and edit: one rank-one update of the layer causal tracing names (held-out trojans, 5% clean budget)",
                  scores, "asr", [("asr", "ASR after"), ("asr_drop", "ASR drop"), ("clean_cost", "clean cost"),
                                  ("asr[kind=patch]", "ASR patch"), ("asr[insidious]", "ASR insidious"),
                                  ("seconds_per_model", "s/model")], higher_is_better=False)]


def _edit_registries():
    from .tasks.edit import EDITORS

    return [EDITORS]


register_track(Track("edit", _edit, _edit_registries, "causal tracing + rank-one editing"))


def split_tools(tools: list[str] | None, tracks: list[str]) -> dict[str, list[str] | None]:
    """Route `--tools` to the tracks whose registries know them; an unknown name is a one-line error."""
    if tools is None:
        return {t: None for t in tracks}
    known = {t: {n for reg in TRACKS[t].registries() for n in reg.names()} for t in tracks}
    unknown = [n for n in tools if not any(n in k for k in known.values())]
    if unknown:
        every = sorted(set().union(*known.values()))
        raise UserError(f"unknown tool {unknown[0]!r} in tracks {', '.join(tracks)}; known: {', '.join(every)}")
    return {t: [n for n in tools if n in known[t]] for t in tracks if any(n in known[t] for n in tools)}


def check_tracks(tracks: list[str] | None) -> list[str]:
    if not tracks:
        return list(TRACKS)
    for t in tracks:
        if t not in TRACKS:
            raise UserError(f"unknown track {t!r}; known: {', '.join(TRACKS)}")
    return tracks


def trigger_gallery(zoo_dir: str | Path, path: str | Path, max_triggers: int = 10) -> Path | None:
    """Each distinct trigger of the zoo on one clean test image, with its ground-truth footprint."""
    import numpy as np

    from .implant import prepare
    from .report.plots import trigger_gallery as draw
    from .zoo.build import Zoo

    zoo = Zoo(zoo_dir)
    ds = zoo.dataset()
    seen, examples = set(), []
    for job, _, card in zoo.models():
        if not job.trojaned or len(examples) >= max_triggers:
            continue
        key = canonical_json(job.trojan.trigger.model_dump(exclude={"seed"}))
        if key in seen:
            continue
        seen.add(key)
        trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
        x = ds.x_test[ds.y_test != job.trojan.poison.target][:1]
        xt, mask = trigger.apply_with_mask(x)
        foot = mask[0] if mask is not None else (xt - x).abs().amax(1)[0]
        foot = foot / foot.max() if float(foot.max()) > 0 else None
        examples.append((trigger.spec().kind + f"\n-> {job.trojan.poison.target}", xt[0].permute(1, 2, 0).numpy(),
                         None if foot is None else np.asarray(foot)))
    return draw(examples, path) if examples else None


def zoo_cache_dir(cfg) -> Path:
    from .data.cifar10 import cache_dir

    digest = sha256_bytes(canonical_json(cfg.model_dump()).encode())[:12]
    return cache_dir() / "zoos" / f"{cfg.name}-{digest}"


@dataclass
class BenchmarkRun:
    boards: list[tuple[str, Board]] = field(default_factory=list)  # (track, board)
    results: Path | None = None
    report: Path | None = None
    zoo: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


def run_benchmark(out: str | Path, config: str = "digits-bench", zoo: str | Path | None = None, tracks: list[str] | None = None,
                  tools: list[str] | None = None, seed: int = 0, device: str = "cpu", executor: str = "batched", jobs: int = 2,
                  zoo_progress=None, track_progress=None, report: bool = True, results: str | Path | None = None) -> BenchmarkRun:
    """Build or reuse the zoo (`zoo` given: use that folder; else the cache under $TROJANBENCH_CACHE/zoos), run the
    tracks, write `out/results.sqlite`, `out/figures/` and `out/report/index.html`."""
    from .zoo.build import Zoo, build_zoo
    from .zoo.executors import EXECUTORS
    from .zoo.plan import load_zoo_config

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    tracks = check_tracks(tracks)
    routed = split_tools(tools, tracks)
    run = BenchmarkRun(results=Path(results) if results else out / "results.sqlite")
    start = time.perf_counter()
    if zoo is None:
        EXECUTORS.get(executor)
        cfg = load_zoo_config(config)
        zoo = zoo_cache_dir(cfg)
        counts = build_zoo(cfg, zoo, executor=executor, jobs=jobs, device=device, progress=zoo_progress)
        if counts.get("failed"):
            raise UserError(f"{counts['failed']} zoo jobs failed; see `trojanbench zoo status {zoo}` and run again to retry")
    else:
        Zoo(zoo).plan()  # a clear error if it is not a zoo
    run.zoo = Path(zoo)
    run.seconds["zoo"] = time.perf_counter() - start
    zoo_cfg = Zoo(zoo).config()
    config_hash = sha256_bytes(canonical_json({"zoo": zoo_cfg.model_dump(), "seed": seed}).encode())[:16]
    from .report.html import figure_row

    gallery = trigger_gallery(zoo, out / "figures" / "triggers.png")
    with ResultsStore(run.results) as store:
        store.write(ResultRow("trojanbench", f"zoo:{zoo_cfg.name}", "run", "versions", None, seed=seed,
                              config_hash=config_hash, extra={"versions": library_versions(), "zoo": str(zoo)}))
        if gallery is not None:
            store.write(figure_row("trojanbench", "zoo", gallery, f"the triggers of zoo {zoo_cfg.name}, each on a clean test image "
                                   "(target label after the arrow), and the ground-truth footprint the tools are scored against"))
    for name, names in routed.items():
        start = time.perf_counter()
        progress = track_progress(name) if track_progress else None
        try:
            boards = TRACKS[name].run(zoo, run.results, names, seed, device, out / "figures",
                                      progress.__enter__() if progress else None)
        finally:
            if progress:
                progress.__exit__(None, None, None)
        run.boards += [(name, b) for b in boards]
        run.seconds[name] = time.perf_counter() - start
    with ResultsStore(run.results) as store:
        store.stamp(config_hash, library_versions())
    if report:
        from .report.html import render_report

        start = time.perf_counter()
        run.report = render_report(run.results, out / "report", title=f"trojanbench: {zoo_cfg.name}, seed {seed}")
        run.seconds["report"] = time.perf_counter() - start
    return run
