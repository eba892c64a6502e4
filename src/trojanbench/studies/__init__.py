"""Studies: reproducible experiments behind the project's claims, one `trojanbench study NAME` each.

A study is a function `(out_dir, seed, quick, progress) -> StudySummary` registered by name:

    @register_study("my-claim")
    def my_claim(out_dir: Path, seed: int, quick: bool, progress: Progress) -> StudySummary: ...

It writes its rows (aggregates with model_id `zoo:<...>` and `low`/`high`/`n` in `extra`, figures through
`report.html.figure_row`) into `out_dir/results.sqlite`, the report is rendered from that store, and the
summary is what the CLI prints. `quick=True` is a tiny configuration for tests (well under a minute).
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
