"""The main job (`trojanbench run`): build (or reuse) a zoo, run every registered tool of every track on it as one
run of the results store, render the HTML report of that run, and return the leaderboards.

A track is one function `run(zoo_dir, target, tools, seed, device, figures, progress, executor, jobs) ->
list[Board]` plus the registries its tools live in (so `--tools` can be checked and routed before anything runs).
`target` names the store and the run every row goes into; the boards come from `results.boards`, computed from
those rows. Every track runs as jobs (see `tasks.jobs`): they run on the zoo executor `executor` with `jobs`
workers, and a rerun after an interruption (the same config: the run is resumed) skips finished jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .results import ResultsStore
from .results.boards import Board
from .utils import canonical_json, resolve_device


@dataclass
class Track:
    name: str
    run: Callable[..., list[Board]]
    registries: Callable[[], list]  # imported lazily: a track's tools load only when it runs
    about: str = ""
    targeted: bool = False  # works on trojans with a target label the trigger sends inputs to (`Zoo.trojaned`)


TRACKS: dict[str, Track] = {}


def register_track(track: Track) -> Track:
    TRACKS[track.name] = track
    return track


def _detect(zoo_dir, target, tools, seed, device, figures, progress, executor="serial", jobs=1) -> list[Board]:
    from .results.axes import axis_figures
    from .tasks.detect import run_detect_track

    boards = run_detect_track(zoo_dir, target, tools, seed=seed, device=device, progress=progress, figures=figures,
                              sample_split="test", executor=executor, jobs=jobs)
    if figures is not None:  # each board's score over the zoo's difficulty axes (poison rate, mode, intensity)
        with ResultsStore(target) as store:
            rows = [r for b in boards for r in store.rows(target.run_id, task=b.spec.task)]
            store.write(axis_figures(zoo_dir, rows, boards, figures, seed=seed))
    return boards


def _detect_registries():
    from .tools.detect import DETECTORS, SAMPLE_DETECTORS

    return [DETECTORS, SAMPLE_DETECTORS]


register_track(Track("detect", _detect, _detect_registries, "is this model trojaned; which samples were poisoned"))


DIAGNOSE_IMAGES = 16  # triggered images per model in the default benchmark


def _diagnose(zoo_dir, target, tools, seed, device, figures, progress, executor="serial", jobs=1) -> list[Board]:
    from .report.html import figure_row
    from .tasks.diagnose import TASK, run_diagnose_track

    board = run_diagnose_track(zoo_dir, target, tools, seed=seed, n_images=DIAGNOSE_IMAGES, progress=progress,
                               images_dir=figures, split="test", device=device, executor=executor, jobs=jobs)
    with ResultsStore(target) as store:
        store.write([figure_row("diagnose", TASK, path, f"{path.stem.removeprefix('diagnose-')} trigger: triggered input, "
                                "ground-truth footprint, and attribution maps toward the target label", seed)
                     for path in sorted(Path(figures).glob("diagnose-*.png"))])
    return [board]


def _diagnose_registries():
    from .tools.attribute import ATTRIBUTORS

    return [ATTRIBUTORS]


register_track(Track("diagnose", _diagnose, _diagnose_registries, "do attribution maps point at the trigger"))


def _synthesize(zoo_dir, target, tools, seed, device, figures, progress, executor="serial", jobs=1) -> list[Board]:
    from .tasks.synthesize import run_synthesize_track

    return run_synthesize_track(zoo_dir, target, tools, seed=seed, split="test", progress=progress, figures=figures,
                                bank=Path(target).parent / "survey", device=device, executor=executor, jobs=jobs)


def _synthesize_registries():
    from .tools.synthesize import SYNTHESIZERS

    return [SYNTHESIZERS]


register_track(Track("synthesize", _synthesize, _synthesize_registries, "does feature synthesis rediscover the trigger",
                     targeted=True))


REPAIR_BUDGET = 0.05  # the default benchmark repairs the held-out split's trojans with a 5% clean budget


def _repair(zoo_dir, target, tools, seed, device, figures, progress, executor="serial", jobs=1) -> list[Board]:
    from .report.html import figure_row
    from .tasks.repair import TASK, frontier_plot, run_repair_track

    b = REPAIR_BUDGET
    boards = run_repair_track(zoo_dir, target, tools, budgets=(b,), seed=seed, progress=progress, device=device,
                              split="test", executor=executor, jobs=jobs)
    path = frontier_plot(boards, Path(figures) / "repair-frontier.png")
    with ResultsStore(target) as store:
        store.write(figure_row("repair", f"{TASK}@{b:g}", path, f"ASR drop vs clean-accuracy cost with a {b:.0%} clean "
                               "budget (95% CIs; baselines in black, anchors in grey, the dotted line at 3 points)", seed))
    return list(boards.values())


def _repair_registries():
    from .tools.repair import REPAIRERS

    return [REPAIRERS]


register_track(Track("repair", _repair, _repair_registries, "scrub the trojan with a small clean budget"))


def _edit(zoo_dir, target, tools, seed, device, figures, progress, executor="serial", jobs=1) -> list[Board]:
    from .tasks.edit import run_edit_track

    return [run_edit_track(zoo_dir, target, tools, seed=seed, split="test", progress=progress, figures=figures,
                           device=device, executor=executor, jobs=jobs)]


def _edit_registries():
    from .tools.edit import EDITORS

    return [EDITORS]


register_track(Track("edit", _edit, _edit_registries, "causal tracing + rank-one editing", targeted=True))


def split_tools(tools: list[str] | None, tracks: list[str], strict: bool = True) -> dict[str, list[str] | None]:
    """Route `--tools` to the tracks whose registries know them; an unknown name is a one-line error (`strict`;
    otherwise, for a config's default set, the names no chosen track knows are dropped)."""
    if tools is None:
        return {t: None for t in tracks}
    known = {t: {n for reg in TRACKS[t].registries() for n in reg.names()} for t in tracks}
    unknown = [n for n in tools if not any(n in k for k in known.values())]
    if unknown and strict:
        every = sorted(set().union(*known.values()))
        raise UserError(f"unknown tool {unknown[0]!r} in tracks {', '.join(tracks)}; known: {', '.join(every)}")
    return {t: [n for n in tools if n in known[t]] for t in tracks if any(n in known[t] for n in tools)}


def _flat(routed: dict[str, list[str] | None]) -> list[str] | None:
    """The tools a run's tracks run, as `runs` lists them (None: every registered one)."""
    if any(names is None for names in routed.values()):
        return None
    return list(dict.fromkeys(n for names in routed.values() for n in names))


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
    if getattr(ds, "modality", "image") != "image":
        return None  # a text zoo's triggers are words: the report lists them with its boards
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


DEFAULT_CONFIG = "digits-quick"  # what `make run` / `trojanbench run` builds and scores
# The quick default's tools: every track, each with tools that cost seconds per model, and every baseline of their
# boards but the edit board's four controls (rome / finetune-layer @last-layer, @random-layer). Left out for time:
# MNTD, mntd-oc and output-stats-meta (the shadow models they train on a cold cache: output-stats-meta's alone took
# the cold run to the 3-minute budget), STRIP, the slower synthesizers and repairers
# (benchmarks/results/end_to_end.json times the set). `--tools all`, or any other config, runs every
# registered tool.
QUICK_TOOLS = [
    # detect: model level, then sample level
    "neural-cleanse", "weight-stats", "final-layer-outlier", "accuracy", "entropy", "random",
    "spectral", "activation-clustering", "mahalanobis", "knn-pixels",
    # diagnose
    "integrated-gradients", "gradient-shap", "occlusion", "saliency", "pixel-anomaly", "sobel", "centre",
    # synthesize
    "regularised-inversion", "feature-adversary", "random-prior", "noise-patch", "mean-image",
    # repair
    "finetune", "finetune-matched", "self-distill", "ft-sam", "fine-pruning", "do-nothing", "retrain",
    # edit
    "rome", "trigger-key-projection", "finetune-layer",
]
DEFAULT_TOOLS: dict[str, list[str]] = {DEFAULT_CONFIG: QUICK_TOOLS}


def default_tools(config: str, tools: list[str] | None) -> list[str] | None:
    """The tools a run uses: `tools` as given (`["all"]`: every registered tool), else the default set of the zoo
    config named `config` (its `name`, so a copy of a built-in TOML keeps its set): the quick default's
    `QUICK_TOOLS`; every tool for any other config."""
    if tools == ["all"]:
        return None
    return tools if tools is not None else DEFAULT_TOOLS.get(config)


ZOO_CHUNK = 8  # the most models per training chunk (`build_zoo` shares each group out over the pool's workers)


def zoo_cache_dir(cfg) -> Path:
    """Where the benchmark caches the zoo of `cfg` (its config and the trainer version name it)."""
    from .zoo.build import cache_folder

    return cache_folder(cfg)


@dataclass
class BenchmarkRun:
    boards: list[tuple[str, Board]] = field(default_factory=list)  # (track, board)
    results: Path | None = None
    run_id: str | None = None
    report: Path | None = None
    zoo: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    skipped: dict[str, str] = field(default_factory=dict)  # track -> why it did not run (no tool for the zoo's inputs)


def run_benchmark(out: str | Path, config: str = DEFAULT_CONFIG, zoo: str | Path | None = None, tracks: list[str] | None = None,
                  tools: list[str] | None = None, seed: int = 0, device: str = "cpu", executor: str = "pool", jobs: int = 2,
                  zoo_progress=None, track_progress=None, report: bool = True, results: str | Path | None = None,
                  track_executor: str = "serial", resume: bool = True, kind: str = "benchmark") -> BenchmarkRun:
    """Build or reuse the zoo (`zoo` given: use that folder; else the cache under $TROJANBENCH_CACHE/zoos), run the
    tracks as one run of the results store (`out/results.sqlite` unless `results` names another), and render that
    run's report into `out/report/index.html`. A run that stops early stays in the store as interrupted; its rows
    never appear in another run's report. With `resume`, a rerun of the same config, seed and code continues the
    newest interrupted run instead, and the tracks that run as jobs skip the jobs it finished; their jobs run on
    `track_executor` (`jobs` workers for the pool and Ray); on the pool executor the zoo build and every track
    share one pool, whose workers start once (`zoo.executors.shared_pool`). `kind`: the run's kind in the store (a
    study that runs tracks records its run as `study:NAME`)."""
    from .zoo.executors import shared_pool

    with shared_pool():  # the zoo build and every track share one pool's workers (started once)
        return _run_benchmark(out, config, zoo, tracks, tools, seed, device, executor, jobs, zoo_progress, track_progress,
                              report, results, track_executor, resume, kind)


def _run_benchmark(out, config, zoo, tracks, tools, seed, device, executor, jobs, zoo_progress, track_progress, report,
                   results, track_executor, resume, kind) -> BenchmarkRun:
    """`run_benchmark`'s work, inside its shared pool."""
    from .report.html import figure_row
    from .tasks import applicable, config_modality, zoo_modality
    from .tasks.jobs import track_executor as check_track_executor
    from .zoo.build import Zoo, build_zoo
    from .zoo.executors import EXECUTORS
    from .zoo.plan import load_zoo_config

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    device = str(resolve_device(device))  # a device this machine lacks: a one-line error before any work
    check_track_executor(track_executor)
    tracks = check_tracks(tracks)
    if zoo is not None:
        Zoo(zoo).plan()  # a clear error if it is not a zoo
    cfg = load_zoo_config(config) if zoo is None else Zoo(zoo).config()
    named = tools is not None and tools != ["all"]
    tools = default_tools(cfg.name, tools)  # by the config's name: a copy of the quick default's TOML is quick too
    routed = split_tools(tools, tracks, strict=named)  # `--tracks detect` on the quick default: its detectors only
    run = BenchmarkRun(results=Path(results) if results else out / "results.sqlite")
    ResultsStore(run.results).close()  # a clear error now if the store is unusable (a folder, an old schema)
    start = time.perf_counter()
    for name, names in routed.items():  # a tool named for inputs the zoo's models do not take: an error before any work
        for reg in TRACKS[name].registries():
            applicable(reg, names, config_modality(cfg))
    if zoo is None:
        EXECUTORS.get(executor)
        zoo = zoo_cache_dir(cfg)
        counts = build_zoo(cfg, zoo, executor=executor, jobs=jobs, device=device, progress=zoo_progress,
                           batch_models=ZOO_CHUNK)
        if counts.get("failed"):
            first = next((r.errors[-1] for r in Zoo(zoo).status().get("failed", []) if r.errors), None)
            raise UserError(f"{counts['failed']} zoo jobs failed" + (f" (the first: {first.splitlines()[0]})" if first else "")
                            + f"; see `trojanbench zoo status {zoo}`, fix the cause and run again")
    run.zoo = Path(zoo)
    run.seconds["zoo"] = time.perf_counter() - start
    zoo_cfg = Zoo(zoo).config()
    run_config = {"zoo": zoo_cfg.model_dump(), "tracks": tracks, "tools": tools, "device": device}
    with ResultsStore(run.results) as store:
        info = {"zoo": str(zoo), "zoo_name": zoo_cfg.name, "tracks": list(routed), "tools": _flat(routed)}
        target = store.start_run(kind, run_config, seed, info=info, resume=resume)
    run.run_id = target.run_id
    figures = out / "figures" / target.run_id  # a run's own: a later run into OUT never redraws an earlier run's
    gallery = trigger_gallery(zoo, figures / "triggers.png")
    if gallery is not None:
        with ResultsStore(target) as store:
            store.write(figure_row("trojanbench", "zoo", gallery, f"the triggers of zoo {zoo_cfg.name}, each on a clean test "
                                   "image (target label after the arrow), and the ground-truth footprint the tools are "
                                   "scored against"))
    modality = zoo_modality(Zoo(zoo))
    targeted = any(j.targeted for j in Zoo(zoo).plan())
    for name, names in routed.items():
        # each track runs the tools that work on the zoo's inputs; one with none for them is skipped
        if not [n for reg in TRACKS[name].registries() for n in applicable(reg, names, modality)]:
            run.skipped[name] = f"no {name} tool works on {modality} models yet"
            continue
        if TRACKS[name].targeted and not targeted:
            run.skipped[name] = "no trojan of the zoo sends inputs to one target label (all-to-all, override)"
            continue
        start = time.perf_counter()
        progress = track_progress(name) if track_progress else None
        on = {"executor": track_executor, "jobs": jobs}
        try:
            boards = TRACKS[name].run(zoo, target, names, seed, device, figures,
                                      progress.__enter__() if progress else None, **on)
        finally:
            if progress:
                progress.__exit__(None, None, None)
        run.boards += [(name, b) for b in boards]
        run.seconds[name] = time.perf_counter() - start
    with ResultsStore(run.results) as store:
        store.update_run(target.run_id, seconds={k: round(v, 2) for k, v in run.seconds.items()},
                         **({"skipped": run.skipped} if run.skipped else {}))
        store.finish_run(target.run_id)
    if report:
        from .report.html import render_report

        start = time.perf_counter()
        run.report = render_report(run.results, out / "report", title=f"trojanbench: {zoo_cfg.name}, seed {seed}",
                                   run_id=target.run_id)
        run.seconds["report"] = time.perf_counter() - start
    return run
