"""SQLite results store in WAL mode, safe for several processes writing at once, holding many runs side by side.

A *run* is one `trojanbench run`, one study, one standalone track call or one survey scoring. Each has a run id
derived from its config hash, seed, package version and start time, a row in the `runs` table (what it ran on,
when it started, when it finished: a run with no finish time is still running or was interrupted) and its id on
every result row. Nothing reads rows without naming their run, so no report can mix two runs.

Result rows: one per (run, tool, model_id, task, metric, seed); writing the same key again within a run
replaces the value, so re-running a tool inside one run is idempotent. Each write is its own short transaction
with a generous busy timeout, so concurrent writers queue instead of failing.

Jobs: a track that runs as jobs (`tasks.jobs`) writes each job's rows and the job's key in one transaction, so
the `jobs` table says exactly which jobs of a run are finished. `start_run(..., resume=True)` continues the
newest interrupted run of the same kind, config, seed, package version and git commit instead of starting a new
one, and the track then skips the jobs that run already finished.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..utils import canonical_json, sha256_bytes

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    version TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    tool TEXT NOT NULL,
    model_id TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    seed INTEGER NOT NULL DEFAULT 0,
    value REAL,
    tool_version TEXT,
    extra TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, tool, model_id, task, metric, seed)
);
CREATE INDEX IF NOT EXISTS results_by_run_task ON results (run_id, task);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    job TEXT NOT NULL,
    n_rows INTEGER NOT NULL,
    seconds REAL,
    pid INTEGER NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY (run_id, job)
);
"""


@dataclass
class ResultRow:
    tool: str
    model_id: str
    task: str
    metric: str
    value: float | None
    seed: int = 0
    tool_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""  # filled in by the store from the run it writes for


@dataclass(frozen=True)
class RunTarget:
    """Where a run's rows go: the store's path and the run's id. Accepted wherever a results path is (it is
    path-like), so a track called with one writes into that run; called with a plain path it opens a run of
    its own (see `recording`)."""

    path: Path
    run_id: str

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass
class RunInfo:
    run_id: str
    kind: str
    config_hash: str
    seed: int
    version: str
    started: float
    finished: float | None
    info: dict[str, Any]

    @property
    def status(self) -> str:
        """complete, running (its process is alive on this host) or interrupted."""
        if self.finished is not None:
            return "complete"
        pid, host = self.info.get("pid"), self.info.get("host")
        if pid and host == socket.gethostname():
            try:
                os.kill(int(pid), 0)
                return "running"
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        return "interrupted"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trojanbench")
    except PackageNotFoundError:
        return "0+unknown"


def make_run_id(config_hash: str, seed: int, version: str, started: float) -> str:
    """Readable and unique: UTC start time, then a hash of (config hash, seed, package version, start time)."""
    digest = sha256_bytes(canonical_json({"config": config_hash, "seed": seed, "version": version,
                                          "started": repr(started)}).encode())[:8]
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(started)) + f"-{digest}"


class ResultsStore:
    """`ResultsStore(path)` reads any run and writes none; `ResultsStore(RunTarget)` also writes that run's rows."""

    def __init__(self, path: str | Path | RunTarget, timeout: float = 60.0):
        self.run_id = path.run_id if isinstance(path, RunTarget) else None
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; give a file path such as results.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._check_schema()
            self._conn.executescript(SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a trojanbench results store ({e})") from None

    def _check_schema(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise UserError(f"{self.path} was written by a newer trojanbench (store schema {version}); upgrade trojanbench")
        if "results" in tables and version < SCHEMA_VERSION:
            self._conn.close()
            raise UserError(f"{self.path} was written by trojanbench < 0.2: its rows carry no run id, so they may mix "
                            "runs and cannot be reported safely; move it aside and run again")

    # -- runs ------------------------------------------------------------------------------------------------
    def start_run(self, kind: str, config: dict[str, Any], seed: int = 0, info: dict[str, Any] | None = None,
                  resume: bool = False) -> RunTarget:
        """Register a new run (unfinished until `finish_run`) and return where its rows go. With `resume`, continue
        instead the newest interrupted run of the same kind, config, seed, package version and git commit (its
        finished jobs are then skipped by the tracks that run as jobs); its info records when it was resumed."""
        from ..utils import library_versions

        config_hash = sha256_bytes(canonical_json(config).encode())[:16]
        version, started = package_version(), time.time()
        body = {"config": config, "versions": library_versions(), "pid": os.getpid(), "host": socket.gethostname(),
                **machine_info(), **(info or {})}
        if resume:
            same = [r for r in self.runs(kind) if r.config_hash == config_hash and r.seed == seed
                    and r.version == version and r.info.get("commit") == body["commit"] and r.status == "interrupted"]
            if same:
                run = same[-1]
                self.update_run(run.run_id, pid=body["pid"], host=body["host"],
                                resumed=run.info.get("resumed", []) + [body["date"]])
                return RunTarget(self.path, run.run_id)
        run_id = make_run_id(config_hash, seed, version, started)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT INTO runs (run_id, kind, config_hash, seed, version, started, finished, info) "
                               "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                               (run_id, kind, config_hash, seed, version, started, json.dumps(body, sort_keys=True)))
        return RunTarget(self.path, run_id)

    def update_run(self, run_id: str, **info: Any) -> None:
        """Merge `info` into a run's info (e.g. the zoo it ended up using)."""
        run = self.run(run_id)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("UPDATE runs SET info = ? WHERE run_id = ?",
                               (json.dumps({**run.info, **info}, sort_keys=True), run_id))

    def finish_run(self, run_id: str) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (time.time(), run_id))

    def runs(self, kind: str | None = None) -> list[RunInfo]:
        """Every run in the store, oldest first."""
        sql = "SELECT run_id, kind, config_hash, seed, version, started, finished, info FROM runs"
        cur = self._conn.execute(sql + (" WHERE kind = ?" if kind else "") + " ORDER BY started, run_id",
                                 (kind,) if kind else ())
        return [RunInfo(*r[:7], info=json.loads(r[7] or "{}")) for r in cur.fetchall()]

    def run(self, run_id: str) -> RunInfo:
        matches = [r for r in self.runs() if r.run_id == run_id or r.run_id.startswith(run_id)]
        if len(matches) != 1:
            known = ", ".join(r.run_id for r in self.runs()[-5:]) or "none"
            what = "no run" if not matches else f"{len(matches)} runs"
            raise UserError(f"{self.path} holds {what} matching {run_id!r} (latest: {known}); see `trojanbench runs {self.path}`")
        return matches[0]

    def latest_complete(self, kind: str | None = None) -> RunInfo:
        done = [r for r in self.runs(kind) if r.finished is not None]
        if not done:
            others = self.runs(kind)
            hint = f"; its runs: {', '.join(f'{r.run_id} ({r.status})' for r in others[-3:])}, pick one with --run" if others else ""
            raise UserError(f"{self.path} holds no complete run{hint}")
        return max(done, key=lambda r: (r.finished, r.started))

    # -- rows ------------------------------------------------------------------------------------------------
    def write(self, rows: ResultRow | Iterable[ResultRow], job: str | None = None, seconds: float | None = None) -> int:
        """Write rows into this store's run, in one transaction; with `job`, that job is recorded as finished
        (with its `seconds`) in the same transaction, so its rows are either all stored with it or not at all."""
        rows = [rows] if isinstance(rows, ResultRow) else list(rows)
        if self.run_id is None:
            raise ValueError("this store was opened without a run: open it with a RunTarget (start_run) to write rows")
        now = time.time()
        values = [(self.run_id, r.tool, r.model_id, r.task, r.metric, r.seed, None if r.value is None else float(r.value),
                   r.tool_version, json.dumps(r.extra, sort_keys=True, default=_json_default), now) for r in rows]
        with self._conn:  # BEGIN ... COMMIT, retried by sqlite under busy_timeout
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO results (run_id, tool, model_id, task, metric, seed, value, tool_version, "
                "extra, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            if job is not None:
                self._conn.execute("INSERT OR REPLACE INTO jobs (run_id, job, n_rows, seconds, pid, finished) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (self.run_id, job, len(values), seconds, os.getpid(), now))
        return len(values)

    def jobs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The finished jobs of a run: key -> {n_rows, seconds, pid (of the process that wrote them), finished}."""
        cur = self._conn.execute("SELECT job, n_rows, seconds, pid, finished FROM jobs WHERE run_id = ?", (run_id,))
        return {r[0]: {"n_rows": r[1], "seconds": r[2], "pid": r[3], "finished": r[4]} for r in cur.fetchall()}

    def rows(self, run_id: str, **where: Any) -> list[ResultRow]:
        """The rows of one run (`run_id`), optionally filtered by column values (tool=, task=, metric=, ...)."""
        where = {"run_id": run_id, **where}
        clauses = " AND ".join(f"{k} = ?" for k in where)
        sql = "SELECT tool, model_id, task, metric, value, seed, tool_version, extra, run_id FROM results"
        cur = self._conn.execute(sql + f" WHERE {clauses} ORDER BY tool, task, metric, model_id, seed", tuple(where.values()))
        return [ResultRow(*r[:7], extra=json.loads(r[7] or "{}"), run_id=r[8]) for r in cur.fetchall()]

    def tools(self, run_id: str, skip_metrics: tuple[str, ...] = ()) -> list[str]:
        """The tools with rows in a run, sorted; rows whose metric is in `skip_metrics` do not count."""
        sql = "SELECT DISTINCT tool FROM results WHERE run_id = ?"
        sql += f" AND metric NOT IN ({','.join('?' * len(skip_metrics))})" if skip_metrics else ""
        cur = self._conn.execute(sql + " ORDER BY tool", (run_id, *skip_metrics))
        return [r[0] for r in cur.fetchall()]

    def count(self, run_id: str | None = None) -> int:
        if run_id is None:
            return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM results WHERE run_id = ?", (run_id,)).fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def as_dicts(rows: list[ResultRow]) -> list[dict]:
        return [asdict(r) for r in rows]


def _json_default(o):
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def machine_info() -> dict[str, Any]:
    """What a timing or a number depends on: cores, torch threads, git commit of the code, date. Where the code is
    not in a git checkout, the commit is $TROJANBENCH_COMMIT if set (benchmarks/gpu_checks.sh sets it), else None."""
    import subprocess

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        if commit:
            # the code that ran: the package, its pins and the script running it (results files and docs that a
            # benchmark rewrites, or other scripts being edited, do not make it dirty)
            top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            paths = ["src", "pyproject.toml"]
            script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
            if top and script is not None and script.is_file() and script.is_relative_to(top):
                paths.append(str(script.relative_to(top)))
            dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=top or here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    if commit is None:  # a copy of the code without its git folder (a GPU machine): the commit it was copied from
        commit = os.environ.get("TROJANBENCH_COMMIT") or None
    return {"cores": cores, "torch_threads": torch.get_num_threads(), "commit": commit,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class RunWriter:
    """Where a track's rows go as they come: its run's store, or nowhere when the track records no run (then
    `write` does nothing and `stored` is False)."""

    def __init__(self, target: RunTarget | None):
        self.target = target
        self._store = ResultsStore(target) if target is not None else None

    @property
    def stored(self) -> bool:
        return self._store is not None

    def write(self, rows: ResultRow | Iterable[ResultRow], job: str | None = None, seconds: float | None = None) -> int:
        return 0 if self._store is None else self._store.write(rows, job, seconds)

    def done_jobs(self) -> set[str]:
        """The keys of the jobs this run has finished (none when nothing is stored)."""
        return set() if self._store is None else set(self._store.jobs(self.target.run_id))

    def rows(self, **where: Any) -> list[ResultRow]:
        """This run's stored rows, filtered by column values (none when nothing is stored)."""
        return [] if self._store is None else self._store.rows(self.target.run_id, **where)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@contextmanager
def recording(results: str | Path | RunTarget | None, kind: str, config: dict[str, Any], seed: int = 0,
              info: dict[str, Any] | None = None, resume: bool = False) -> Iterator[RunWriter]:
    """A writer into the run a track writes into: the caller's (a RunTarget: the caller starts and finishes it),
    a new one of its own (a plain path: finished when the block ends without an error; with `resume`, an
    interrupted one of the same config continued, see `ResultsStore.start_run`), or none (None: nothing is
    stored)."""
    if results is None or isinstance(results, RunTarget):
        target = results
    else:
        with ResultsStore(results) as store:
            target = store.start_run(kind, config, seed, info, resume=resume)
    writer = RunWriter(target)
    try:
        yield writer
    finally:
        writer.close()
    if target is not None and target is not results:
        with ResultsStore(results) as store:
            store.finish_run(target.run_id)
