"""Provenance for measured numbers: every JSON a script in `benchmarks/` writes under `benchmarks/results/` carries
the run it came from, the code it ran (git commit), its config, the machine (cores, torch threads) and the date.

    from trojanbench.results.provenance import write_benchmark
    write_benchmark("nc_batched", {"speedup": 6.8, ...}, config=vars(args), run_id=run.run_id)

A script that measured inside a `trojanbench run` passes that run's id; one that measured outside the results
store gets a run id of its own (same recipe: config hash, seed, package version, start time). README.md and docs/
quote numbers only from these files (see benchmarks/render_docs.py and tests/test_docs_numbers.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text, canonical_json, library_versions, sha256_bytes
from .store import machine_info, make_run_id, package_version

RESULTS_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def provenance(config: dict[str, Any] | None = None, run_id: str | None = None, seed: int = 0,
               started: float | None = None) -> dict[str, Any]:
    config = config or {}
    started = time.time() if started is None else started
    if run_id is None:
        run_id = make_run_id(sha256_bytes(canonical_json(config).encode())[:16], seed, package_version(), started)
    return {"run_id": run_id, "config": config, "seed": seed, **machine_info(), "versions": library_versions()}


def write_benchmark(name: str | Path, payload: dict[str, Any], *, config: dict[str, Any] | None = None,
                    run_id: str | None = None, seed: int = 0, started: float | None = None) -> Path:
    """Write `payload` plus its provenance to `benchmarks/results/<name>.json` (or to `name` if it is a path ending
    in .json); returns the path."""
    path = Path(name) if str(name).endswith(".json") else RESULTS_DIR / f"{name}.json"
    body = {"provenance": provenance(config, run_id, seed, started), **payload}
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=False, default=_default) + "\n")
    return path


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
