import multiprocessing as mp
import sqlite3

import pytest

from trojanbench.errors import UserError
from trojanbench.results import ResultRow, ResultsStore, RunTarget


def _writer(target, worker, n):
    store = ResultsStore(target)
    for i in range(n):  # one transaction per row: the worst case for contention
        store.write(ResultRow("tool", f"model-{worker}-{i}", "task", "auroc", i / n, seed=worker))
    store.close()


def test_four_processes_writing_500_rows_each_give_exactly_2000(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        target = store.start_run("test", {"what": "concurrency"})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(target, w, 500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    with ResultsStore(path) as store:
        assert store.count(target.run_id) == 2000
        assert len(store.rows(target.run_id, seed=2)) == 500
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_same_key_replaces_within_a_run_and_runs_stay_apart(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        a = store.start_run("test", {"seed": 0}, seed=0)
        b = store.start_run("test", {"seed": 1}, seed=1)
    with ResultsStore(a) as store:
        store.write(ResultRow("nc", "m1", "detect", "score", 0.1, extra={"target": 3}))
        store.write(ResultRow("nc", "m1", "detect", "score", 0.7, extra={"target": 4}))
    with ResultsStore(b) as store:
        store.write(ResultRow("nc", "m1", "detect", "score", 0.2))
        store.finish_run(b.run_id)
    with ResultsStore(path) as store:
        rows = store.rows(a.run_id, tool="nc")
        assert len(rows) == 1 and rows[0].value == 0.7 and rows[0].extra == {"target": 4} and rows[0].run_id == a.run_id
        assert [r.value for r in store.rows(b.run_id)] == [0.2]
        assert a.run_id != b.run_id
        assert [r.status for r in store.runs()] == ["running", "complete"]  # a: this process is alive, unfinished
        assert store.latest_complete().run_id == b.run_id
        assert store.run(a.run_id).run_id == a.run_id
        info = store.run(b.run_id).info
        assert {"cores", "torch_threads", "commit", "date", "versions", "config"} <= set(info)


def test_a_store_without_a_run_refuses_to_write(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="without a run"):
            store.write(ResultRow("nc", "m1", "detect", "score", 0.1))


def test_a_dead_process_run_is_interrupted(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        target = store.start_run("test", {})
        store.update_run(target.run_id, pid=2**22 + 12345)  # no such process
        assert store.run(target.run_id).status == "interrupted"
        with pytest.raises(UserError, match="no complete run"):
            store.latest_complete()
        with pytest.raises(UserError, match="no run matching"):
            store.run("nope")


def test_an_old_store_without_run_ids_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE results (tool TEXT, model_id TEXT, task TEXT, metric TEXT, seed INTEGER, value REAL, "
                 "tool_version TEXT, config_hash TEXT, extra TEXT, created REAL)")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="no run id") as e:
        ResultsStore(old)
    assert "\n" not in str(e.value)


def test_not_a_database_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError, match="not a trojanbench results store"):
        ResultsStore(bad)
    with pytest.raises(UserError, match="is a folder"):
        ResultsStore(tmp_path)


def test_run_target_is_path_like(tmp_path):
    t = RunTarget(tmp_path / "r.sqlite", "x")
    from pathlib import Path

    assert Path(t) == tmp_path / "r.sqlite" and Path(t).parent == tmp_path


def test_resume_continues_only_an_interrupted_run_of_the_same_config_and_its_jobs_are_known(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        a = store.start_run("track:x", {"k": 1})
        b = store.start_run("track:x", {"k": 1}, resume=True)
        assert b.run_id != a.run_id  # a is still running (this process is alive): never taken over
        for t in (a, b):
            store.update_run(t.run_id, pid=2**22 + 12345)  # both died
        assert store.start_run("track:x", {"k": 2}, resume=True).run_id not in (a.run_id, b.run_id)  # another config
        assert store.start_run("track:y", {"k": 1}, resume=True).run_id not in (a.run_id, b.run_id)  # another kind
        again = store.start_run("track:x", {"k": 1}, resume=True)
        assert again.run_id == b.run_id and store.run(b.run_id).status == "running"  # the newest, now this process's
        assert len(store.run(b.run_id).info["resumed"]) == 1
    with ResultsStore(again) as store:
        store.write([ResultRow("t", "m1", "task", "score", 0.5), ResultRow("t", "m1", "task", "seconds", 1.0)],
                    job="task/t/m1", seconds=1.0)
        store.write(ResultRow("t", "m2", "task", "score", 0.6))  # rows outside a job
        jobs = store.jobs(b.run_id)
        assert list(jobs) == ["task/t/m1"] and jobs["task/t/m1"]["n_rows"] == 2 and store.jobs(a.run_id) == {}
        store.finish_run(b.run_id)
        assert store.start_run("track:x", {"k": 1}, resume=True).run_id != b.run_id  # a complete run is not resumed
