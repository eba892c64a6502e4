"""Tracks as jobs: a track splits its work into jobs, each one tool on one model (or a learned tool's fit with the
scoring that needs it), and runs them on the zoo's executors (`zoo.executors`: in this process, a process pool,
Ray). Each job's rows are committed to the run with the job's key in one transaction as soon as it finishes, so a
track rerun into the same run (a resumed run: `ResultsStore.start_run(resume=True)`) skips every finished job.
A job builds the per-model data it needs (model, rebuilt training set) and drops it before it returns, so memory
does not grow with the zoo; boards are computed afterwards from the stored rows (`stored_rows`).

A job's function is a module-level function (the pool and Ray send it to their workers by name) taking plain,
picklable keyword arguments plus `device`, the device of the task it runs in (Ray gives a CUDA task its GPU as
`cuda`), and returning its rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..results.store import ResultRow, RunWriter
from ..utils import torch_threads

TRACK_EXECUTORS = ("pool", "serial", "ray")  # the zoo's `batched` trains chunks of models at once: no track job does


def track_executor(name: str):
    """The zoo executor that runs track jobs under `name`, or a one-line error."""
    from ..zoo.executors import EXECUTORS

    if name not in TRACK_EXECUTORS:
        raise UserError(f"unknown track executor {name!r}; known: {', '.join(TRACK_EXECUTORS)}"
                        + (" (batched trains zoo models only)" if name == "batched" else ""))
    return EXECUTORS.get(name)


@dataclass
class TrackJob:
    key: str  # unique within a run, e.g. "detect-model/neural-cleanse/<zoo job id>"
    fn: Callable[..., list[ResultRow]]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrackTask:
    """What an executor runs: the zoo executors' task shape (items, device, threads)."""

    items: list[TrackJob]
    device: str = "cpu"
    threads: int | None = None  # torch threads while it runs (None: leave the process's setting)


@dataclass
class JobDone:
    key: str
    rows: list[ResultRow]
    seconds: float


def run_task(task: TrackTask) -> list[JobDone]:
    """Run a task's jobs in this process (the `fn` every executor is given for track jobs)."""
    out = []
    with torch_threads(task.threads):
        for job in task.items:
            start = time.perf_counter()
            rows = job.fn(**job.kwargs, device=task.device)
            out.append(JobDone(job.key, rows, time.perf_counter() - start))
    return out


def run_jobs(jobs: list[TrackJob], writer: RunWriter, executor: str = "serial", n_jobs: int = 1, device: str = "cpu",
             address: str | None = None, progress=None) -> list[ResultRow]:
    """Run the jobs this run has not finished on a zoo executor, committing each job's rows with its key as it
    finishes. Returns the rows of the jobs run now; a board reads every job's rows back with `stored_rows`."""
    run = track_executor(executor)
    if len({j.key for j in jobs}) != len(jobs):
        raise ValueError("track job keys must be unique")
    done = writer.done_jobs()
    todo = [TrackTask([j], device) for j in jobs if j.key not in done]
    rows = []
    for finished in run(todo, jobs=n_jobs, address=address, fn=run_task) if todo else []:
        for d in finished:
            writer.write(d.rows, job=d.key, seconds=d.seconds)
            rows.extend(d.rows)
            if progress:
                progress()
    return rows


def stored_rows(writer: RunWriter, new: list[ResultRow], task: str, tools: list[str]) -> list[ResultRow]:
    """The per-model rows of `tools` on `task` (those a board reads: with a role) as the run stored them, jobs
    finished before a resume included; or `new`, the rows just computed, when the track stores nothing."""
    if not writer.stored:
        return new
    return [r for r in writer.rows(task=task) if r.tool in tools and "role" in r.extra]
