"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import pickle
import subprocess
import sys

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trojanbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "m"
    r = cli("implant", "--dataset", "digits", "--arch", "cnn", "--trigger", "patch", "--target", "3",
            "--epochs", "8", "--arch-param", "width=16", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "attack success rate" in r.stdout and "clean accuracy" in r.stdout
    return out


def test_implant_then_inspect(model_dir):
    r = cli("inspect", model_dir)
    assert r.returncode == 0 and "checkerboard patch" in r.stdout and "target 3" in r.stdout
    card = json.loads(cli("inspect", model_dir, "--json").stdout)
    assert card["trojan"]["poison"]["target"] == 3 and card["metrics"]["attack_success_rate"] > 0.9


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("implant", "inspect", "run", "list", "runs", "tools"):
        assert cmd in r.stdout


def test_tools_list_shows_every_registered_tool_with_its_paper_and_fidelity():
    from trojanbench.tools import tool_registries

    r = cli("tools", "list")
    assert r.returncode == 0, r.stderr
    for family, reg in tool_registries().items():
        assert family in r.stdout
        for name in reg.names():
            assert name in r.stdout, name
            cls = reg.get(name)
            assert cls.fidelity, f"{family}/{name} declares no fidelity"
            assert cls.fidelity == "faithful" or cls.fidelity.startswith(("adapted: ", "baseline: ")), (name, cls.fidelity)
            assert cls.paper or cls.is_baseline or cls.fidelity.startswith("adapted"), f"{name} names no paper"
    assert "(not declared)" not in r.stdout
    bad = cli("tools", "list", "--family", "astrology")
    assert bad.returncode == 2 and "unknown tool family" in bad.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path, model_dir):
    one_line_error(cli("implant", "--trigger", "laser", "--out", tmp_path / "x"), "unknown trigger 'laser'", "patch")
    one_line_error(cli("implant", "--arch", "vgg", "--epochs", "1", "--out", tmp_path / "x"), "unknown architecture")
    one_line_error(cli("implant", "--dataset", "mnist", "--out", tmp_path / "x"), "unknown dataset")
    one_line_error(cli("implant", "--param", "alpha=3", "--trigger", "blended", "--out", tmp_path / "x"), "alpha")
    one_line_error(cli("implant", "--rate", "0.9", "--out", tmp_path / "x"), "rate")
    one_line_error(cli("implant", "--dataset", "cifar10", "--data-root", tmp_path / "void", "--out", tmp_path / "x"),
                   "does not exist")
    one_line_error(cli("inspect", tmp_path / "missing"), "does not exist")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "card.json").write_text((model_dir / "card.json").read_text())
    (fake / "model.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    one_line_error(cli("inspect", fake), "pickle")


TINY_ZOO = """
name = "tiny-bench"
models_per_arch = 8
test_fraction = 0.5
[[archs]]
arch = "cnn"
kwargs = { width = 8, depth = 2 }
[trojans]
kinds = ["patch"]
targets = [1, 6]
rates = [0.1]
[train]
epochs = 6
[gate]
min_asr = 0.5
max_clean_drop = 0.2
retries = 0
"""


def test_run_builds_zoo_runs_tracks_writes_report_then_reuses_and_repeats(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_ZOO)
    env_args = ("--config", tmp_path / "tiny.toml", "--track", "detect", "--tools", "random,entropy,spectral", "--device", "cpu")
    import os

    env = {**os.environ, "TROJANBENCH_CACHE": str(tmp_path / "cache")}

    def run(out):
        return subprocess.run([sys.executable, "-m", "trojanbench.cli", "run", "--out", out, *map(str, env_args)],
                              capture_output=True, text=True, timeout=600, env=env)

    r = run(tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "Is this model trojaned" in r.stdout and "report" in r.stdout
    assert (tmp_path / "a" / "report" / "index.html").is_file()
    zoo = next((tmp_path / "cache" / "zoos").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in zoo.glob("models/*/model.safetensors")}
    assert len(stamps) == 8
    r2 = run(tmp_path / "b")  # the cached zoo is reused, not retrained; same seed, same numbers
    assert r2.returncode == 0, r2.stderr
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("models/*/model.safetensors")} == stamps
    from trojanbench.results import ResultsStore
    from trojanbench.results.boards import boards_of_run

    def table(path):
        with ResultsStore(path) as store:
            (run,) = store.runs()
            # the run says which configuration, code and library versions made its rows
            assert run.status == "complete" and run.config_hash and run.info["versions"]["torch"]
            rows = store.rows(run.run_id)
            assert rows and {r.run_id for r in rows} == {run.run_id}
            return {(s.tool, b.spec.task, m): str(e) for b in boards_of_run(rows) for s in b.scores
                    for m, e in s.metrics.items() if not m.startswith("seconds")}

    assert table(tmp_path / "a" / "results.sqlite") == table(tmp_path / "b" / "results.sqlite")
    bad = subprocess.run([sys.executable, "-m", "trojanbench.cli", "run", "--out", tmp_path / "c", "--config",
                          tmp_path / "tiny.toml", "--tools", "telepathy"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "unknown tool 'telepathy'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "trojanbench.cli", "run", "--out", tmp_path / "c", "--track", "astrology"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "unknown track 'astrology'" in bad.stderr
