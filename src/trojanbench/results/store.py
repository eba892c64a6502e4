"""SQLite results store in WAL mode, safe for several processes writing at once.

One row per (tool, model_id, task, metric, seed); writing the same key again replaces the value,
so re-running a tool is idempotent. Each write is its own short transaction with a generous busy
timeout, so concurrent writers queue instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    tool TEXT NOT NULL,
    model_id TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    seed INTEGER NOT NULL DEFAULT 0,
    value REAL,
    tool_version TEXT,
    config_hash TEXT,
    extra TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (tool, model_id, task, metric, seed)
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
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ResultsStore:
    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; give a file path such as results.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a trojanbench results store ({e})") from None

    def write(self, rows: ResultRow | Iterable[ResultRow]) -> int:
        rows = [rows] if isinstance(rows, ResultRow) else list(rows)
        now = time.time()
        values = [(r.tool, r.model_id, r.task, r.metric, r.seed, None if r.value is None else float(r.value),
                   r.tool_version, r.config_hash, json.dumps(r.extra, sort_keys=True), now) for r in rows]
        with self._conn:  # BEGIN ... COMMIT, retried by sqlite under busy_timeout
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO results (tool, model_id, task, metric, seed, value, tool_version, "
                "config_hash, extra, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return len(values)

    def rows(self, **where: Any) -> list[ResultRow]:
        clauses = " AND ".join(f"{k} = ?" for k in where)
        sql = "SELECT tool, model_id, task, metric, value, seed, tool_version, config_hash, extra FROM results"
        cur = self._conn.execute(sql + (f" WHERE {clauses}" if where else "") + " ORDER BY tool, task, metric, model_id, seed",
                                 tuple(where.values()))
        return [ResultRow(*r[:8], extra=json.loads(r[8] or "{}")) for r in cur.fetchall()]

    def stamp(self, config_hash: str, versions: dict[str, str]) -> int:
        """Give every row written without a config hash this one, and the library versions in its `extra`
        (a run stamps what its tracks wrote)."""
        rows = self._conn.execute("SELECT rowid, extra FROM results WHERE config_hash IS NULL OR config_hash = ''").fetchall()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("UPDATE results SET config_hash = ?, extra = ? WHERE rowid = ?",
                                   [(config_hash, json.dumps({**json.loads(e or "{}"), "versions": versions}, sort_keys=True), i)
                                    for i, e in rows])
        return len(rows)

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def as_dicts(rows: list[ResultRow]) -> list[dict]:
        return [asdict(r) for r in rows]
