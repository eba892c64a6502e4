"""Tracks as jobs: the detect track killed with SIGKILL mid-way and run again gives the rows of an uninterrupted run
(there on the process pool), without recomputing the jobs that had finished before the kill."""

import os
import signal
import subprocess
import sys
import time

import pytest

from trojanbench.results import ResultsStore

TOOLS = ["entropy", "final-layer-outlier", "random", "slow-probe", "knn-pixels", "spectral"]
# model level: 3 detectors that learn nothing x 4 held-out models, entropy's 3 fits (all, without each of the tiny
# zoo's 2 trigger kinds); sample level: 3 detectors ("random" is both) x 2 held-out trojans
N_JOBS = 3 * 4 + 3 + 3 * 2

# a plug-in detector (found in every process through its entry point, pool workers included) that logs each call
# and sleeps, so the track can be killed between two of its jobs
PROBE = '''
import os, time
from trojanbench.tools.detect import Detection, Detector, register

@register("slow-probe")
class SlowProbe(Detector):
    """test only: logs each call, then sleeps"""
    def detect(self, model, ctx):
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ["PROBE_SLEEP"]))
        return Detection(score=float(sum(p.double().sum() for p in model.parameters())))
'''
TRACK = ("import sys; from trojanbench.tasks.detect import run_detect_track; "
         "run_detect_track(sys.argv[1], sys.argv[2], sys.argv[3].split(','), n_boot=50, executor=sys.argv[4], jobs=2)")


def _track(zoo, store, executor, env):
    return subprocess.Popen([sys.executable, "-c", TRACK, str(zoo), str(store), ",".join(TOOLS), executor], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc, timeout=180):
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err


def _run(path):
    """(run id, its rows keyed without the run id, its finished jobs) of the one run in a store."""
    with ResultsStore(path) as store:
        (run,) = store.runs()
        rows = {(r.tool, r.model_id, r.task, r.metric, r.seed): r for r in store.rows(run.run_id)}
        return run, rows, store.jobs(run.run_id)


def _probe_calls(log, pid):
    return sum(1 for line in log.read_text().split() if int(line) == pid) if log.is_file() else 0


def test_detect_track_killed_mid_way_resumes_without_redoing_finished_jobs(tiny_zoo, tmp_path):
    site = tmp_path / "site"
    (site / "probe_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "probe_plugin.py").write_text(PROBE)
    (site / "probe_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 0.1\n")
    (site / "probe_plugin-0.1.dist-info" / "entry_points.txt").write_text("[trojanbench.tools]\nprobe = probe_plugin\n")
    log = tmp_path / "probe.log"
    env = {**os.environ, "PYTHONPATH": str(site), "PROBE_LOG": str(log), "PROBE_SLEEP": "1.0",
           "TROJANBENCH_CACHE": str(tmp_path / "cache")}

    # the reference: one uninterrupted run, its jobs on a pool of two processes
    _finish(_track(tiny_zoo, tmp_path / "ref.sqlite", "pool", {**env, "PROBE_SLEEP": "0"}))
    ref_run, ref_rows, ref_jobs = _run(tmp_path / "ref.sqlite")
    assert ref_run.status == "complete" and len(ref_jobs) == N_JOBS

    # killed with SIGKILL once a job of the slow detector has finished, with three of its four still to do
    store = tmp_path / "r.sqlite"
    first = _track(tiny_zoo, store, "serial", env)
    try:
        deadline, before = time.time() + 120, {}
        while time.time() < deadline and first.poll() is None:
            if store.is_file():
                with ResultsStore(store) as s:
                    runs = s.runs()
                    before = s.jobs(runs[0].run_id) if runs else {}
                if any("/slow-probe/" in k for k in before):
                    break
            time.sleep(0.05)
        assert first.poll() is None, f"the track ended before it could be killed: {first.stderr.read()}"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    with ResultsStore(store) as s:
        (killed,) = s.runs()
        before = s.jobs(killed.run_id)  # what had been committed when the process died
    assert killed.status == "interrupted" and 0 < len(before) < N_JOBS
    probes_before = sum("/slow-probe/" in k for k in before)

    second = _track(tiny_zoo, store, "serial", {**env, "PROBE_SLEEP": "0"})
    _finish(second)
    run, rows, jobs = _run(store)
    assert run.run_id == killed.run_id and run.status == "complete" and run.info["resumed"]  # the same run, resumed
    assert set(jobs) == set(ref_jobs)
    # finished jobs were not recomputed: their records (writer, time) are those of the killed process, and the slow
    # detector ran in the rerun only on the models it had not finished
    assert {k: jobs[k] for k in before} == before and all(j["pid"] == first.pid for j in before.values())
    assert all(jobs[k]["pid"] == second.pid for k in set(jobs) - set(before))
    assert _probe_calls(log, second.pid) == 4 - probes_before

    # the final rows are those of the uninterrupted run (wall times aside)
    assert rows.keys() == ref_rows.keys()
    for key, r in rows.items():
        ref = ref_rows[key]
        assert (r.tool_version, r.extra) == (ref.tool_version, ref.extra), key
        if r.metric != "seconds":
            assert r.value == (None if ref.value is None else pytest.approx(ref.value, rel=1e-6, abs=1e-9)), key




# tracks that run one job per trojaned model: (module, track function, job function, tools, trojans the track takes)
PER_MODEL = {"edit": ("edit", "run_edit_track", "edit_one", ["rome", "finetune-layer"], "all-to-one"),
             "diagnose": ("diagnose", "run_diagnose_track", "diagnose_one", ["saliency", "sobel"], "all"),
             "synthesize": ("synthesize", "run_synthesize_track", "synthesize_one", ["noise-patch", "exemplar"],
                            "all-to-one")}


@pytest.mark.parametrize("track", sorted(PER_MODEL))
def test_a_per_model_track_runs_one_job_per_model_and_a_pool_gives_the_serial_rows(track, tiny_zoo, tmp_path,
                                                                                   monkeypatch):
    import importlib

    from trojanbench.results.store import RunTarget
    from trojanbench.zoo.build import Zoo

    module, fn, job_fn, tools, which = PER_MODEL[track]
    module = importlib.import_module(f"trojanbench.tasks.{module}")
    zoo = Zoo(tiny_zoo)
    n_models = len(zoo.trojaned()) if which == "all-to-one" else sum(j.trojaned for j, _, _ in zoo.models())
    boards = {}
    for executor in ("serial", "pool"):
        boards[executor] = getattr(module, fn)(tiny_zoo, tmp_path / f"{executor}.sqlite", tools, n_boot=50,
                                               executor=executor, jobs=2)
        boards[executor] = boards[executor][0] if isinstance(boards[executor], list) else boards[executor]
        assert {s.tool: s.n_models for s in boards[executor].scores} == {t: n_models for t in tools}
    (run, serial, serial_jobs), (_, pool, pool_jobs) = (_run(tmp_path / f"{e}.sqlite") for e in ("serial", "pool"))
    assert set(serial_jobs) == set(pool_jobs) and len(serial_jobs) == n_models
    assert serial.keys() == pool.keys()
    for key, r in serial.items():
        if r.metric != "seconds":
            assert (r.value, r.extra) == (pool[key].value, pool[key].extra), key

    # into the same run again: every job is finished, so none runs (one that did would raise) and the board is the same
    def refuse(**_):
        raise AssertionError("a finished job ran again")

    monkeypatch.setattr(module, job_fn, refuse)
    again = getattr(module, fn)(tiny_zoo, RunTarget(tmp_path / "serial.sqlite", run.run_id), tools, n_boot=50)
    again = again[0] if isinstance(again, list) else again
    key = boards["serial"].spec.key
    assert [(s.tool, s.metrics[key].value) for s in again.scores] == \
        [(s.tool, s.metrics[key].value) for s in boards["serial"].scores]



def test_the_synthesize_track_writes_its_bank_and_panel_from_stored_jobs(tiny_zoo, tmp_path):
    """The survey bank and the report's panel come from the rows the jobs stored: one question per (tool, trojan),
    in the trojans' order, readable by the survey app (the pooled condition is covered by tests/test_benchmark.py)."""
    from trojanbench.survey.bank import load_bank
    from trojanbench.tasks.synthesize import run_synthesize_track
    from trojanbench.zoo.build import Zoo

    tools = ["noise-patch", "exemplar"]
    run_synthesize_track(tiny_zoo, tmp_path / "r.sqlite", tools, n_boot=20, bank=tmp_path / "bank",
                         figures=tmp_path / "fig")
    bank = load_bank(tmp_path / "bank")
    trojans = [c.id for _, _, c in Zoo(tiny_zoo).trojaned()]
    asked = [q for q in bank.questions]
    assert [q.model_id for q in asked] == [m for m in trojans for _ in tools]
    assert [q.tool for q in asked] == tools * len(trojans)
    assert (tmp_path / "fig" / "synthesize-stamps.png").stat().st_size > 0
