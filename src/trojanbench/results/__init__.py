"""The results store: one row per (tool, model, task, metric, seed)."""

from .store import ResultRow, ResultsStore

__all__ = ["ResultRow", "ResultsStore"]
