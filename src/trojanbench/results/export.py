"""Export one run of the results store to CSV, JSON lines or Parquet (Parquet needs pyarrow: the `parquet` extra).

By default only measurement rows are exported: the bookkeeping rows the framework writes for the report (board
specs, tool descriptions, study views, figures, ...; `BOOKKEEPING`) are left out unless `all_rows` is set.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write_text
from .boards import INFO, SPEC_METRIC
from .store import ResultRow, ResultsStore

COLUMNS = ["run_id", "tool", "model_id", "task", "metric", "value", "seed", "tool_version", "extra"]
# the metrics of rows that measure nothing: board specs (tool "trojanbench", model "board"), tool descriptions
# (model "tool"), study views (`report.html.VIEW`), figures (`report.html.FIGURE`, model "figure:<file>", tool a
# track name), attribution methods reported once ("collapsed_onto") and the survey's question banks ("survey")
BOOKKEEPING = (SPEC_METRIC, INFO, "view", "figure", "collapsed_onto", "survey")


def is_bookkeeping(row: ResultRow) -> bool:
    return row.metric in BOOKKEEPING


def export_rows(results: str | Path, out: str | Path, task: str | None = None, tool: str | None = None,
                run_id: str | None = None, all_rows: bool = False) -> int:
    """Write the measurement rows (with `all_rows`, every row) of one run (the latest complete one unless `run_id`
    names another) to `out`. In JSON lines `extra` is an object; in CSV and Parquet, a JSON string."""
    results, out = Path(results), Path(out)
    if not results.is_file():
        raise UserError(f"no results store at {results}")
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".parquet"):
        raise UserError(f"--out {out}: give a .csv, .jsonl or .parquet file")
    where = {k: v for k, v in (("task", task), ("tool", tool)) if v is not None}
    with ResultsStore(results) as store:
        run = store.run(run_id) if run_id else store.latest_complete()
        found = store.rows(run.run_id, **where)
        kept = [r for r in found if all_rows or not is_bookkeeping(r)]
        if where and not kept:  # a misspelt --tool or --task: say so, not "0 rows"
            every = [r for r in store.rows(run.run_id) if all_rows or not is_bookkeeping(r)]
            known = {k: sorted({getattr(r, k) for r in every}) for k in where}
            raise UserError(f"run {run.run_id} has no {'' if all_rows else 'measurement '}rows with "
                            + ", ".join(f"{k} {v!r}" for k, v in where.items())
                            + "; it has " + "; ".join(f"{k}s: {', '.join(v)}" for k, v in known.items())
                            + ("; only bookkeeping rows match (--all-rows exports them)" if found else ""))
        rows = [dict(zip(COLUMNS, (r.run_id, r.tool, r.model_id, r.task, r.metric, r.value, r.seed, r.tool_version,
                                   r.extra))) for r in kept]
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        return len(rows)
    rows = [{**r, "extra": json.dumps(r["extra"], sort_keys=True)} for r in rows]
    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out, buf.getvalue())
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("Parquet export needs pyarrow: pip install 'trojanbench[parquet]'; .csv and .jsonl work "
                            "without it") from None
        pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)
