"""Participants' answers, in table `survey_answers` of the results store's SQLite file (beside, never inside,
the `results` table). One row per (bank, participant, question); the first answer counts."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

PARTICIPANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS survey_answers (
    bank TEXT NOT NULL,
    participant TEXT NOT NULL,
    question_id TEXT NOT NULL,
    choice INTEGER NOT NULL CHECK (choice BETWEEN 0 AND 7),
    answer INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    response_ms INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (bank, participant, question_id)
);
"""


@dataclass(frozen=True)
class Answer:
    bank: str
    participant: str
    question_id: str
    choice: int
    answer: int
    correct: bool
    response_ms: int | None
    created: float


def valid_participant(pid: str | None) -> bool:
    return pid is not None and PARTICIPANT_PATTERN.fullmatch(pid) is not None


class AnswerStore:
    """Thread-safe (one connection behind a lock: answers are tiny and rare, so serialising them costs nothing)."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; give a file path such as results.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL, not the results store's NORMAL: a person's answer cannot be recomputed, so each commit
            # is synced to disk before the participant sees the next question
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a trojanbench results store ({e})") from None

    def add(self, bank: str, participant: str, question_id: str, choice: int, answer: int,
            response_ms: int | None) -> bool:
        """Store one answer and commit it; False if this participant had already answered the question."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO survey_answers (bank, participant, question_id, choice, answer, correct, "
                "response_ms, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (bank, participant, question_id, choice, answer, int(choice == answer), response_ms, time.time()))
            return cur.rowcount == 1

    def answered(self, bank: str, participant: str) -> set[str]:
        with self._lock:
            rows = self._conn.execute("SELECT question_id FROM survey_answers WHERE bank = ? AND participant = ?",
                                      (bank, participant)).fetchall()
        return {r[0] for r in rows}

    def answers(self, bank: str | None = None) -> list[Answer]:
        sql = ("SELECT bank, participant, question_id, choice, answer, correct, response_ms, created FROM survey_answers"
               + (" WHERE bank = ?" if bank is not None else "") + " ORDER BY created, participant, question_id")
        with self._lock:
            rows = self._conn.execute(sql, (bank,) if bank is not None else ()).fetchall()
        return [Answer(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
