"""Studies: reproducible experiments behind the project's claims, one `trojanbench study NAME` each.

A study is a function `(out_dir, seed, quick, progress) -> StudySummary` registered by name:

    @register_study("my-claim")
    def my_claim(out_dir: Path, seed: int, quick: bool, progress: Progress) -> StudySummary: ...

It records its rows (aggregates with `low`/`high`/`n` in `extra`, per-seed rows, figures through
`report.html.figure_row`) as one run of `out_dir/results.sqlite` with `record_study`, which also stores the views
the study registered, so the report of that run needs no code of the study; the summary is what the CLI prints. `quick=True` is a tiny configuration for tests (well under a minute).
A study module registers itself when imported: add it to the import line at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..registry import Registry

Progress = Callable[[str], None]


@dataclass
class StudySummary:
    name: str
    results: Path
    findings: dict[str, str] = field(default_factory=dict)  # headline -> value with its CI, in print order
    seconds: float = 0.0
    run_id: str | None = None


def record_study(results: Path, name: str, config: dict, seed: int, rows: list) -> str:
    """Write a study's rows as one complete run of the store at `results` (with the views of their tasks);
    returns the run id."""
    from ..report.html import VIEWS, view_row
    from ..results import ResultsStore

    with ResultsStore(results) as store:
        target = store.start_run(f"study:{name}", config, seed)
    tasks = sorted({r.task for r in rows})
    with ResultsStore(target) as store:
        store.write(list(rows) + [view_row(task, VIEWS[task]) for task in tasks if task in VIEWS])
        store.finish_run(target.run_id)
    return target.run_id


Study = Callable[[Path, int, bool, Progress], StudySummary]
STUDIES: Registry[Study] = Registry("study")


def register_study(name: str) -> Callable[[Study], Study]:
    return STUDIES.register(name)


def run_study(name: str, out_dir: str | Path, seed: int = 0, quick: bool = False,
              progress: Progress | None = None) -> StudySummary:
    study = STUDIES.get(name)  # an unknown name is a UserError listing the known ones
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return study(out_dir, seed, quick, progress or (lambda message: None))


from . import continuum, subnetworks, text, width_depth  # noqa: F401  (register the studies)
