"""Run identity: every row belongs to one run, a store holds many runs side by side, a report renders exactly one,
and a run killed with SIGKILL stays interrupted without leaking rows into another run's report."""

import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from trojanbench.bench import run_benchmark
from trojanbench.cli import app
from trojanbench.results import ResultRow, ResultsStore
from trojanbench.results.boards import boards_of_run

TOOLS = ["random", "entropy", "knn-pixels"]


def test_two_runs_in_one_store_are_listed_and_reported_apart(tiny_zoo, tmp_path):
    store_path = tmp_path / "shared.sqlite"
    a = run_benchmark(tmp_path / "a", zoo=tiny_zoo, tracks=["detect"], tools=TOOLS, seed=0, results=store_path)
    b = run_benchmark(tmp_path / "b", zoo=tiny_zoo, tracks=["detect"], tools=TOOLS, seed=1, results=store_path)
    assert a.run_id != b.run_id
    with ResultsStore(store_path) as store:
        runs = store.runs()
        assert [r.run_id for r in runs] == [a.run_id, b.run_id] and all(r.status == "complete" for r in runs)
        rows_a, rows_b = store.rows(a.run_id), store.rows(b.run_id)
    assert {r.run_id for r in rows_a} == {a.run_id} and {r.run_id for r in rows_b} == {b.run_id}
    # the random detector's scores depend on the seed, so the two runs' rows differ; each board is its run's own
    scores = [{r.model_id: r.value for r in rows if r.tool == "random" and r.task == "detect-model"}
              for rows in (rows_a, rows_b)]
    assert scores[0].keys() == scores[1].keys() and scores[0] != scores[1]
    board_a, board_b = (next(x for x in boards_of_run(rows) if x.spec.task == "detect-model") for rows in (rows_a, rows_b))
    assert {s.tool for s in board_a.scores} == {s.tool for s in board_b.scores} == {"random", "entropy"}
    page_a, page_b = a.report.read_text(), b.report.read_text()
    assert a.run_id in page_a and b.run_id not in page_a and b.run_id in page_b
    result = CliRunner().invoke(app, ["runs", str(store_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert result.output.count("complete") == 2 and a.run_id[:15] in result.output
    # `report` renders the latest complete run by default, and any other with --run
    out = tmp_path / "again"
    result = CliRunner().invoke(app, ["report", str(store_path), "-o", str(out), "--run", a.run_id])
    assert result.exit_code == 0, result.output
    assert a.run_id in (out / "index.html").read_text() and b.run_id not in (out / "index.html").read_text()


def test_a_run_killed_mid_track_is_interrupted_and_never_reported(tiny_zoo, tmp_path):
    store_path = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "trojanbench.cli", "run", "--zoo", str(tiny_zoo), "--out", str(tmp_path / "killed"),
           "--results", str(store_path), "--track", "detect,diagnose", "--tools", "random,entropy,saliency,sobel",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        killed_id = None
        while time.time() < deadline:  # wait until the run has written some rows of a track, then kill it
            if store_path.is_file():
                with ResultsStore(store_path) as store:
                    runs = store.runs()
                    if runs and store.count(runs[0].run_id) > 3:
                        killed_id = runs[0].run_id
                        break
            time.sleep(0.2)
        assert killed_id is not None and proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = run_benchmark(tmp_path / "done", zoo=tiny_zoo, tracks=["detect"], tools=TOOLS, results=store_path)
    with ResultsStore(store_path) as store:
        status = {r.run_id: r.status for r in store.runs()}
        assert status == {killed_id: "interrupted", done.run_id: "complete"}
        assert store.latest_complete().run_id == done.run_id
        assert {r.run_id for r in store.rows(done.run_id)} == {done.run_id}
    page = done.report.read_text()
    assert killed_id not in page and "saliency" not in page  # the killed run's diagnose rows are nowhere here


def test_runs_lists_a_survey_run_beside_benchmark_runs(tmp_path):
    """A survey run records its bank's zoo by name (a string, where a benchmark run records the zoo config):
    `runs` lists it rather than stopping with an internal error, with the tools it has scores of (it said "all")."""
    from trojanbench.report.html import View, view_row

    store_path = tmp_path / "r.sqlite"
    with ResultsStore(store_path) as store:
        target = store.start_run("survey", {"bank": "0123456789abcdef", "title": "t", "zoo": "digits-quick",
                                            "answers": 3, "n_boot": 100}, 0)
    with ResultsStore(target) as store:
        store.write([ResultRow(tool, "zoo:digits-quick", "survey-mc", "mc_accuracy_human", 0.5)
                     for tool in ("noise-patch", "adversarial-patch")]
                    + [view_row("survey-mc", View("t", "mc_accuracy_human", True, ("mc_accuracy_human",)))])
        store.finish_run(target.run_id)
        assert store.tools(target.run_id) == ["adversarial-patch", "noise-patch", "trojanbench"]
    result = CliRunner().invoke(app, ["runs", str(store_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert target.run_id in result.output and "survey" in result.output and "digits-quick" in result.output
    assert "adversarial-patch,noise-patch" in result.output
    assert "noise-patch,trojanbench" not in result.output and " all " not in result.output
