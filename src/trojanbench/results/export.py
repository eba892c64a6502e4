"""Export one run of the results store to CSV, JSON lines or Parquet (Parquet needs pyarrow, which is optional)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write_text
from .store import ResultsStore

COLUMNS = ["run_id", "tool", "model_id", "task", "metric", "value", "seed", "tool_version", "extra"]


def export_rows(results: str | Path, out: str | Path, task: str | None = None, tool: str | None = None,
                run_id: str | None = None) -> int:
    """Write the rows of one run (the latest complete one unless `run_id` names another) to `out`."""
    results, out = Path(results), Path(out)
    if not results.is_file():
        raise UserError(f"no results store at {results}")
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".parquet"):
        raise UserError(f"--out {out}: give a .csv, .jsonl or .parquet file")
    where = {k: v for k, v in (("task", task), ("tool", tool)) if v is not None}
    with ResultsStore(results) as store:
        run = store.run(run_id) if run_id else store.latest_complete()
        rows = [dict(zip(COLUMNS, (r.run_id, r.tool, r.model_id, r.task, r.metric, r.value, r.seed, r.tool_version,
                                   json.dumps(r.extra, sort_keys=True)))) for r in store.rows(run.run_id, **where)]
        if where and not rows:  # a misspelt --tool or --task: say so, not "0 rows"
            every = store.rows(run.run_id)
            known = {k: sorted({getattr(r, k) for r in every}) for k in where}
            raise UserError(f"run {run.run_id} has no rows with " + ", ".join(f"{k} {v!r}" for k, v in where.items())
                            + "; it has " + "; ".join(f"{k}s: {', '.join(v)}" for k, v in known.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out, buf.getvalue())
    elif suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("Parquet export needs pyarrow (pip install pyarrow); .csv and .jsonl work without it") from None
        pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)
