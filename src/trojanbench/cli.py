"""The `trojanbench` command line. User errors print one line and exit 2; nothing prints a traceback
unless TROJANBENCH_DEBUG=1."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DataWarning, UserError, first_error
from .survey.cli import survey_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="trojanbench: test interpretability and auditing tools against models with planted trojans.")
# piped output (logs, CI) gets wide tables instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def parse_params(items: list[str] | None, option: str = "--param") -> dict:
    """`key=value` pairs of `option`; values are read as JSON where they parse (numbers, lists), else as strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{option} {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=True, disable=not err_console.is_terminal)


@app.command()
def implant(
    out: Path = typer.Option(..., "--out", "-o", help="folder to write the model to"),
    dataset: str = typer.Option("digits", help="digits, shapes, cifar10 or imagefolder"),
    arch: str = typer.Option("cnn", help="architecture (see `trojanbench list`)"),
    trigger: str = typer.Option("patch", help="trigger kind, or 'none' for a clean model"),
    target: int = typer.Option(0, help="target label"),
    mode: str = typer.Option("all-to-one", help="poisoning: all-to-one, all-to-all, clean-label, override (text refusal "
                                               "datasets), graded (natural triggers), relabel (a control); see "
                                               "trojanbench.trojans.poison"),
    rate: float = typer.Option(0.1, help="poison rate (fraction of the training set)"),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="trigger parameter key=value (repeatable)"),
    arch_param: Optional[List[str]] = typer.Option(None, "--arch-param", help="architecture argument key=value"),
    seed: int = typer.Option(0, min=0, help="seed for poisoning, initialisation and batches"),
    epochs: Optional[int] = typer.Option(None, min=1, help="training epochs (default: per architecture)"),
    data_root: Optional[Path] = typer.Option(None, help="where cifar10/imagefolder data lives"),
    data_param: Optional[List[str]] = typer.Option(None, "--data-param", help="dataset option key=value (repeatable; "
                                                   "as a zoo config's [data] options, e.g. size=32 or grayscale=true "
                                                   "for imagefolder)"),
    device: str = typer.Option("auto", help="cpu, cuda, or auto"),
):
    """Train one model with a planted trojan (or a clean one), store it, print clean accuracy and ASR."""
    from .config import default_train_config
    from .data import check_options, load_dataset
    from .implant import implant as run_implant
    from .trojans import PoisonSpec, TriggerSpec, TrojanSpec
    from .utils import resolve_device
    from .zoo.store import save_model

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / "card.json").is_file():  # a model trained before: never overwritten unasked
        raise UserError(f"{out} already holds a model; give another --out, or delete it first")
    if not 0 < rate <= 0.5:  # NaN too: pydantic said "less than or equal to 0.5" of a NaN
        raise UserError(f"--rate must be a fraction of the training set in (0, 0.5], got {rate}")
    arch_params = parse_params(arch_param, "--arch-param")
    trojan = None
    if trigger != "none":
        from .trojans import TRIGGERS

        TRIGGERS.get(trigger)  # fail early, before loading data
        try:
            trojan = TrojanSpec(trigger=TriggerSpec(kind=trigger, params=parse_params(param), seed=seed),
                                poison=PoisonSpec(mode=mode, rate=rate, target=target))
        except Exception as e:
            raise UserError(f"bad trojan settings: {first_error(e)}") from None
    data_params = parse_params(data_param, "--data-param")
    check_options(dataset, data_params, "--data-param")
    ds_opts = {**({"data_root": str(data_root)} if data_root else {}), **data_params}
    ds = load_dataset(dataset, **ds_opts)
    cfg = default_train_config(arch, dataset)
    if epochs is not None:
        cfg = cfg.model_copy(update={"epochs": epochs})
    with _progress() as bar:
        task = bar.add_task(f"training {arch} on {dataset}", total=cfg.epochs)
        result = run_implant(ds, arch, arch_params, trojan, cfg, seed=seed, device=resolve_device(device),
                             dataset_options=ds_opts,
                             progress=lambda epoch, loss: bar.update(task, advance=1, description=f"loss {loss:.3f}"))
    card = save_model(out, result.model, result.card, result.poisoned_indices)
    m = card.metrics
    line = f"clean accuracy {m['clean_accuracy']:.2%}"
    if "attack_success_rate" in m:
        line += f"   attack success rate {m['attack_success_rate']:.2%}"
    console.print(f"{line}   ({card.train_seconds:.1f}s)\nsaved {out} (id {card.id})")


def _names(s: str | None, option: str) -> list[str] | None:
    """A comma-separated option's names (None: not given); given but naming nothing is an error, not "all"."""
    if s is None:
        return None
    names = [t.strip() for t in s.split(",") if t.strip()]
    if not names:
        raise UserError(f"{option} {s!r} names nothing; leave it out for the default")
    return names


@app.command()
def inspect(model_dir: Path = typer.Argument(..., help="a model folder"),
            as_json: bool = typer.Option(False, "--json", help="print the raw card")):
    """Print a model's card (after verifying the card and weights hashes)."""
    from .zoo.store import load_model

    _, card = load_model(model_dir)
    if as_json:
        console.print_json(json.dumps(card.model_dump()))
        return
    t = Table(show_header=False, title=f"model {card.id}")
    t.add_row("architecture", f"{card.arch} {({k: v for k, v in card.arch_kwargs.items() if k not in ('mean', 'std')})}")
    t.add_row("dataset", card.dataset["name"])
    t.add_row("seed", str(card.seed))
    if card.trojan:
        tr = card.trojan
        t.add_row("trojan", card.extra.get("trigger_description", tr["trigger"]["kind"]))
        t.add_row("poisoning", f"{tr['poison']['mode']}, target {tr['poison']['target']}, "
                               f"{card.n_poisoned} samples poisoned" + (", insidious" if card.insidious else ""))
    else:
        t.add_row("trojan", "none (clean)")
    for k, v in card.metrics.items():
        t.add_row(k.replace("_", " "), f"{v:.2%}")
    t.add_row("training time", f"{card.train_seconds:.1f}s")
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in card.versions.items()))
    console.print(t)


@app.command()
def audit(
    model: Path = typer.Argument(..., help="the model: a store folder (card.json + model.safetensors), a .safetensors "
                                           "state dict, or BackdoorBench's attack_result.pt (read weights-only)"),
    data: str = typer.Option(..., help="the clean data the auditor has: a dataset name (digits, shapes, cifar10) or a "
                                       "folder of images <dir>/<class>/<image>"),
    arch: Optional[str] = typer.Option(None, help="architecture of a bare state dict: a registered name or "
                                                  "package.module:Class"),
    arch_param: Optional[List[str]] = typer.Option(None, "--arch-param", help="architecture argument key=value (repeatable)"),
    zoo: Optional[Path] = typer.Option(None, help="reference zoo for calibration (default: digits-bench's, built by "
                                                  "`run --config digits-bench`)"),
    reference: Optional[Path] = typer.Option(None, help="a results store; its latest complete run whose detect track "
                                                        "scored the zoo's held-out split with these detectors is used "
                                                        "(default: runs/default/results.sqlite, from the current folder, "
                                                        "when it exists and that run of it has the same --seed; else "
                                                        "OUT/reference.sqlite, reused when it holds such a run, else "
                                                        "computed into it)"),
    out: Path = typer.Option(Path("runs/audit"), "--out", "-o", help="folder for index.html, audit.json and figures"),
    tools: Optional[str] = typer.Option(None, help="comma-separated model-level detectors (default: all)"),
    synthesizers: Optional[str] = typer.Option(None, help="comma-separated synthesizers (default: trigger-inversion, "
                                                          "adversarial-patch, exemplar; 'none' for none)"),
    attributors: Optional[str] = typer.Option(None, help="comma-separated attribution methods (default: saliency, "
                                                         "integrated-gradients, gradcam; 'none' for none)"),
    seed: int = typer.Option(0, min=0),
    device: str = typer.Option("auto", help="cpu, cuda, or auto"),
):
    """Audit one model you were handed: calibrated P(trojaned), the likely target label, reconstructed triggers with
    attribution maps, and what repairs cost on the reference zoo; writes an HTML report."""
    from .audit import audit as run_audit
    from .utils import resolve_device

    def names(s, option):
        return [] if s is not None and s.strip() == "none" else _names(s, option)

    with _progress() as bar:
        task = bar.add_task("auditing", total=None)
        res = run_audit(model, data, out, arch=arch, arch_params=parse_params(arch_param, "--arch-param"), zoo=zoo,
                        reference=reference, detectors=_names(tools, "--tools"),
                        synthesizers=names(synthesizers, "--synthesizers"), attributors=names(attributors, "--attributors"),
                        seed=seed, device=str(resolve_device(device)), progress=lambda: bar.update(task, advance=1))
    t = res.target
    console.print(f"P(trojaned) = {res.p_trojaned:.3f} ({res.headline}, Platt-calibrated on zoo {res.zoo_name}): "
                  f"{res.verdict}", markup=False, highlight=False)
    if t is not None:
        console.print(f"target label {t['label']} (named by {t['tool']}; its target accuracy on the zoo: {t['accuracy']})",
                      markup=False, highlight=False)
    for w in res.warnings:
        err_console.print(f"warning: {w}", markup=False, highlight=False)
    console.print(f"report {out / 'index.html'}", markup=False, highlight=False)


@app.command("list")
def list_registries():
    """List the registered datasets, architectures, triggers and tools (by family)."""
    from .data import DATASETS
    from .models import MODELS
    from .tools import tool_registries
    from .trojans import TRIGGERS

    for title, reg in (("datasets", DATASETS), ("architectures", MODELS), ("triggers", TRIGGERS),
                       *tool_registries().items()):
        console.print(f"[bold]{title}[/bold]: {', '.join(reg.names())}")


tools_app = typer.Typer(no_args_is_help=True, help="The registered tools.")
app.add_typer(tools_app, name="tools")


@tools_app.command("list")
def tools_list(family: Optional[str] = typer.Option(None, help="only this family: detect, detect-samples, attribute, "
                                                                "synthesize, repair, edit")):
    """Every registered tool by family, with its role, the inputs it works on, the paper it implements and how
    faithful the port is."""
    from .tools import tool_registries

    families = tool_registries()
    if family is not None and family not in families:
        raise UserError(f"unknown tool family {family!r}; known: {', '.join(families)}")
    for fam, reg in families.items():
        if family is not None and fam != family:
            continue
        t = Table(title=f"{fam} ({len(reg.names())})", title_justify="left")
        for col in ("tool", "role", "inputs", "paper", "fidelity"):
            t.add_column(col, overflow="fold")
        for name in reg.names():
            cls = reg.get(name)
            t.add_row(*map(escape, (name, "baseline" if cls.is_baseline else "tool", ", ".join(cls.modalities),
                                    cls.paper or "-", cls.fidelity or "(not declared)")))  # a plug-in's [text] is text
        console.print(t)


@app.command()
def run(
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="folder for results, figures and the report"),
    config: str = typer.Option("digits-quick", "--config", "-c",
                               help="zoo config: a built-in name (digits-quick, the 3-minute default; digits-bench, "
                                    "digits-large, sst2-bench, sst2-jailbreak, cifar10-zoo, ...) or a TOML file"),
    zoo: Optional[Path] = typer.Option(None, help="run on this zoo folder instead of building --config"),
    track: Optional[str] = typer.Option(None, help="comma-separated tracks (default: every registered track)"),
    tools: Optional[str] = typer.Option(None, help="comma-separated tool names, or `all` (default: for a zoo config "
                                                   "named digits-quick, a copy of its TOML or its zoo too, a quick set, "
                                                   "bench.QUICK_TOOLS; for any other config all)"),
    results: Optional[Path] = typer.Option(None, help="results store (default: OUT/results.sqlite)"),
    seed: int = typer.Option(0, min=0),
    executor: str = typer.Option("pool", help="zoo executor: pool (a process per core), batched (in-process), serial "
                                              "or ray"),
    jobs: int = typer.Option(2, min=1, help="workers for the pool / ray executors"),
    track_executor: str = typer.Option("pool", help="executor of the tracks' (tool, model) jobs: pool (--jobs "
                                                    "processes; workers share the shadow models they need), serial "
                                                    "(in this process) or ray"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto (CUDA where available): where the zoo trains "
                                            "and every track runs its models and tools"),
    report: bool = typer.Option(True, help="render the HTML report"),
    resume: bool = typer.Option(True, help="continue the newest interrupted run of the same config, seed and code "
                                           "in the results store (its finished jobs are skipped)"),
):
    """The main job: build (or reuse from the cache) the zoo, run the tools of every track on it (the quick set on
    the quick default; every tool on any other config), write the results store and the HTML report, and print the
    leaderboards."""
    from .bench import run_benchmark
    from .report.leaderboard import leaderboard
    from .utils import resolve_device

    def track_progress(name):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            with _progress() as bar:
                task = bar.add_task(f"track {name}", total=None)
                yield lambda: bar.update(task, advance=1)

        return ctx()

    res = run_benchmark(out, config=config, zoo=zoo, tracks=_names(track, "--track"), tools=_names(tools, "--tools"),
                        seed=seed, device=str(resolve_device(device)), executor=executor, jobs=jobs, zoo_progress=_zoo_progress,
                        track_progress=track_progress, report=report, results=results,
                        track_executor=track_executor, resume=resume)
    for _, b in res.boards:
        console.print(leaderboard(b))
    for name, why in res.skipped.items():
        console.print(f"track {name} skipped: {why}")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    console.print(f"run {res.run_id}\nzoo {res.zoo}\nresults {res.results}" + (f"\nreport {res.report}" if res.report else "")
                  + f"\n({timing})")


@app.command()
def report(results: Path = typer.Argument(..., help="a results store (results.sqlite)"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (default: next to RESULTS)"),
           run_id: Optional[str] = typer.Option(None, "--run", help="the run to render (an id or a unique prefix; "
                                                "default: the latest complete run)"),
           title: Optional[str] = typer.Option(None)):
    """Render the static HTML report of one run (leaderboards with CIs and verdicts, plots, image panels); opens offline."""
    from .report.html import render_report

    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    index = render_report(results, out or results.parent / "report", title=title, run_id=run_id)
    console.print(f"report: {index}")


@app.command()
def runs(results: Path = typer.Argument(..., help="a results store (results.sqlite)")):
    """List the runs a results store holds: id, status (complete / running / interrupted), start, zoo, tracks, tools."""
    import time as _time

    from .results import ResultsStore
    from .results.export import BOOKKEEPING

    if not results.is_file():
        raise UserError(f"no results store at {results}")
    with ResultsStore(results) as store:  # a run that names no tools (a study, a survey): those it has scores of
        listed = [(r, store.count(r.run_id), r.info.get("tools") or store.tools(r.run_id, BOOKKEEPING))
                  for r in store.runs()]
    t = Table(title=f"runs in {results}")
    for col in ("run", "status", "kind", "started (UTC)", "seed", "zoo", "tracks", "tools", "rows"):
        t.add_column(col, overflow="fold")
    for r, n, tools in listed:
        started = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(r.started))
        tracks = r.info.get("tracks") or r.info.get("config", {}).get("track") or ""
        zoo = r.info.get("zoo_name") or r.info.get("config", {}).get("zoo", "")
        zoo = zoo.get("name", "") if isinstance(zoo, dict) else zoo  # a survey run records the bank's zoo by name
        t.add_row(r.run_id, r.status, r.kind, started, str(r.seed), str(zoo),
                  ",".join(tracks) if isinstance(tracks, list) else str(tracks),
                  ",".join(tools) if isinstance(tools, list) else str(tools), str(n))
    console.print(t)


results_app = typer.Typer(no_args_is_help=True, help="Read and export the results store.")
app.add_typer(results_app, name="results")


@results_app.command("export")
def results_export(results: Path = typer.Argument(..., help="a results store (results.sqlite)"),
                   out: Path = typer.Option(..., "--out", "-o", help="file to write: .csv, .jsonl or .parquet"),
                   task: Optional[str] = typer.Option(None, help="only this task"),
                   tool: Optional[str] = typer.Option(None, help="only this tool"),
                   run_id: Optional[str] = typer.Option(None, "--run", help="the run (default: the latest complete one)"),
                   all_rows: bool = typer.Option(False, "--all-rows", help="also the bookkeeping rows the report reads "
                                                 "(board specs, tool descriptions, views, figures)")):
    """The measurement rows of one run as CSV/JSONL/Parquet, columns run_id, tool, model_id, task, metric, value, seed,
    tool_version, extra (a JSON object in JSONL, a JSON string in CSV and Parquet)."""
    from .results.export import export_rows

    n = export_rows(results, out, task=task, tool=tool, run_id=run_id, all_rows=all_rows)
    console.print(f"{n} rows -> {out}")


zoo_app = typer.Typer(no_args_is_help=True, help="Build and inspect zoos of clean and trojaned models.")
app.add_typer(zoo_app, name="zoo")

app.add_typer(survey_app, name="survey")


@app.command()
def study(name: str = typer.Argument(..., help="the study to run: text, width-depth, subnetworks, continuum"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: runs/study-NAME)"),
          seed: int = typer.Option(0, min=0, help="first seed; a study with several seeds uses seed, seed+1, ..."),
          quick: bool = typer.Option(False, "--quick", help="a tiny configuration (seconds; for tests and smoke runs)")):
    """Run a study: its models, measurements and figures go to OUT/results.sqlite and OUT/report/index.html."""
    from .report.html import render_report
    from .studies import STUDIES, run_study

    STUDIES.get(name)  # an unknown name fails here, listing the known studies, before any folder is made
    out = out or Path("runs") / f"study-{name}"
    summary = run_study(name, out, seed=seed, quick=quick,
                        progress=lambda message: err_console.print(message, markup=False, highlight=False))
    index = render_report(summary.results, out / "report", title=f"trojanbench study {name}", run_id=summary.run_id)
    table = Table(title=f"study {name}" + (" (quick)" if quick else ""))
    table.add_column("finding")
    table.add_column("value [95% CI]", overflow="fold")
    for finding, value in summary.findings.items():
        table.add_row(finding, value)
    console.print(table)
    console.print(f"results {summary.results}\nreport {index}")


def _zoo_progress(total: int, done_before: int):
    from contextlib import contextmanager

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            return Text("- models/min" if task.speed is None else f"{task.speed * 60:.1f} models/min")

    @contextmanager
    def ctx():
        with Progress(TextColumn("building zoo"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=err_console) as bar:
            task = bar.add_task("zoo", total=total, completed=done_before)
            yield lambda n=1: bar.update(task, advance=n)

    return ctx()


@zoo_app.command("build")
def zoo_build(
    config: str = typer.Option("digits-zoo", "--config", "-c", help="a zoo TOML file or a built-in name"),
    out: Path = typer.Option(..., "--out", "-o", help="zoo folder (created, or resumed if it exists)"),
    executor: str = typer.Option("pool", help="pool (a process per core, each training its chunks many models at "
                                              "once on one thread), batched (in-process), serial or ray"),
    jobs: int = typer.Option(2, min=1, help="workers for pool / CPUs for a local ray"),
    address: Optional[str] = typer.Option(None, help="address of an existing Ray cluster (ray executor)"),
    batch_models: int = typer.Option(16, min=1, help="the most models trained at once per chunk (each group is shared out "
                                     "evenly, with a chunk per worker at least)"),
    device: str = typer.Option("cpu", help="device for training (cpu, cuda)"),
):
    """Train every model of a zoo config; resumable (run it again to finish an interrupted build)."""
    import time as _time

    from .utils import resolve_device
    from .zoo.build import build_zoo
    from .zoo.executors import EXECUTORS
    from .zoo.plan import load_zoo_config

    EXECUTORS.get(executor)
    cfg = load_zoo_config(config)
    start = _time.perf_counter()
    counts = build_zoo(cfg, out, executor=executor, jobs=jobs, address=address, batch_models=batch_models,
                       device=str(resolve_device(device)), progress=_zoo_progress)
    minutes = (_time.perf_counter() - start) / 60
    console.print(f"zoo {cfg.name} in {out}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                  + f"  ({minutes:.1f} min)")
    if counts.get("failed"):
        raise UserError(f"{counts['failed']} jobs failed; see `trojanbench zoo status {out}` and build again to retry")


@zoo_app.command("status")
def zoo_status(zoo_dir: Path = typer.Argument(..., help="a zoo folder"),
               errors: bool = typer.Option(True, help="show the errors of failed jobs")):
    """Done / pending / failed / rejected jobs, and the zoo's make-up."""
    from collections import Counter

    from .zoo.build import Zoo

    zoo = Zoo(zoo_dir)
    plan = {j.id: j for j in zoo.plan()}
    status = zoo.status()
    t = Table(title=f"zoo {zoo_dir}")
    for col in ("state", "jobs", "clean", "trojaned", "insidious"):
        t.add_column(col, justify="left" if col == "state" else "right")
    for state, recs in status.items():
        jobs = [plan[r.id] for r in recs]
        t.add_row(state, str(len(jobs)), str(sum(not j.trojaned for j in jobs)), str(sum(j.trojaned for j in jobs)),
                  str(sum(bool(j.trojan and j.trojan.insidious) for j in jobs)))
    console.print(t)
    kinds = Counter(j.trojan.trigger.kind for j in plan.values() if j.trojan)
    done = Counter(plan[r.id].trojan.trigger.kind for r in status["done"] if plan[r.id].trojan)
    console.print("trigger kinds (trojans done / planned): "
                  + ", ".join(f"{k} {done[k]}/{n}" for k, n in sorted(kinds.items())))
    if errors:
        for rec in status["failed"] + status["rejected"] + status.get("damaged", []):
            last = (rec.errors or [None])[-1] or (rec.history or [{}])[-1].get("rejected")
            console.print(f"[bold]{rec.id}[/bold] {rec.state} after {rec.attempts} attempts: {escape(str(last))}", markup=True,
                          highlight=False)


@zoo_app.command("import")
def zoo_import(model_dir: Path = typer.Argument(..., help="a model folder (model.safetensors + card.json)"),
               zoo_dir: Path = typer.Option(..., "--zoo", help="the zoo to add it to"),
               split: str = typer.Option("test", help="zoo split: train or test")):
    """Add a model trained elsewhere (in the documented store format) to a zoo, after verifying it."""
    from .zoo.build import import_model

    job_id = import_model(zoo_dir, model_dir, split)
    console.print(f"imported {model_dir} into {zoo_dir} as job {job_id}")


def _one_line_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """Our warnings (DataWarning: input accepted after a change) print as one line, `warning: <message>`."""
    if issubclass(category, DataWarning):
        err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main() -> None:
    debug = os.environ.get("TROJANBENCH_DEBUG") == "1"
    warnings.showwarning = _one_line_warning
    try:
        app()  # typer reports usage errors itself (exit 2); ours arrive here
    except UserError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        first = (str(e).splitlines() or [""])[0]
        err_console.print(f"internal error: {type(e).__name__}: {first} (set TROJANBENCH_DEBUG=1 for the traceback)",
                          markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
