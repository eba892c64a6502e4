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
    for cmd in ("implant", "inspect", "run", "list"):
        assert cmd in r.stdout


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


def test_run_main_job_small_then_resumes(tmp_path):
    out = tmp_path / "run"
    r = cli("run", "--out", out, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    for name in ("clean", "patch", "blended", "warp", "style", "natural"):
        assert name in r.stdout and (out / "models" / name / "card.json").is_file()
    stamp = (out / "models" / "patch" / "model.safetensors").stat().st_mtime_ns
    r2 = cli("run", "--out", out, "--epochs", "2")
    assert r2.returncode == 0 and (out / "models" / "patch" / "model.safetensors").stat().st_mtime_ns == stamp
    from trojanbench.results import ResultsStore

    with ResultsStore(out / "results.sqlite") as store:
        assert store.count() == 12  # clean accuracy x6, ASR x5, natural ASR x1
