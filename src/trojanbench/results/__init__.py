"""The results store: runs side by side, one row per (run, tool, model, task, metric, seed); boards and statistics."""

from .store import ResultRow, ResultsStore, RunInfo, RunTarget, recording

__all__ = ["ResultRow", "ResultsStore", "RunInfo", "RunTarget", "recording"]
