import multiprocessing as mp

import pytest

from trojanbench.errors import UserError
from trojanbench.results import ResultRow, ResultsStore


def _writer(path, worker, n):
    store = ResultsStore(path)
    for i in range(n):  # one transaction per row: the worst case for contention
        store.write(ResultRow("tool", f"model-{worker}-{i}", "task", "auroc", i / n, seed=worker))
    store.close()


def test_four_processes_writing_500_rows_each_give_exactly_2000(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    with ResultsStore(path) as store:
        assert store.count() == 2000
        assert len(store.rows(seed=2)) == 500
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_same_key_replaces_and_rows_round_trip(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.write(ResultRow("nc", "m1", "detect", "score", 0.1, extra={"target": 3}))
        store.write(ResultRow("nc", "m1", "detect", "score", 0.7, extra={"target": 4}))
        rows = store.rows(tool="nc")
        assert len(rows) == 1 and rows[0].value == 0.7 and rows[0].extra == {"target": 4}


def test_not_a_database_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError, match="not a trojanbench results store"):
        ResultsStore(bad)
    with pytest.raises(UserError, match="is a folder"):
        ResultsStore(tmp_path)
