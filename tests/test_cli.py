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
    one_line_error(cli("implant", "--rate", "nan", "--out", tmp_path / "x"), "--rate must be a fraction", "got nan")
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
    before = (model_dir / "card.json").read_text()
    one_line_error(cli("implant", "--epochs", "1", "--out", model_dir), "already holds a model")
    assert (model_dir / "card.json").read_text() == before  # the model trained before is kept
    # found by a newcomer's review: each was an "internal error" (exit 1) or silently did something else
    one_line_error(cli("implant", "--arch-param", "width=-3", "--epochs", "1", "--out", tmp_path / "x"),
                   "bad arguments for architecture 'cnn'", "negative dimension")
    one_line_error(cli("implant", "--data-param", "sise=8", "--epochs", "1", "--out", tmp_path / "x"),
                   "--data-param: dataset 'digits' takes no option 'sise'")
    # a width of 0 printed one torch warning per layer before a shape error that did not name the option
    one_line_error(cli("implant", "--arch-param", "width=0", "--epochs", "1", "--out", tmp_path / "x"),
                   "bad arguments for architecture 'cnn'", "width=0", "no weights")
    one_line_error(cli("run", "--tools", "", "--out", tmp_path / "r"), "--tools '' names nothing")
    one_line_error(cli("run", "--track", " , ", "--out", tmp_path / "r"), "--track ' , ' names nothing")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00junk")
    one_line_error(cli("zoo", "build", "--config", tmp_path / "binary.toml", "--out", tmp_path / "z"), "not a text file")
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    one_line_error(cli("zoo", "build", "--config", tmp_path / "empty.toml", "--out", tmp_path / "z"), "is empty")
    one_line_error(cli("report", tmp_path / "binary.toml", "-o", tmp_path / "binary.toml"), "is a file; give a folder")
    for args in (("run", "--jobs", "0"), ("zoo", "build", "--out", tmp_path / "z", "--batch-models", "0"),
                 ("implant", "--out", tmp_path / "x", "--epochs", "0"),
                 # a negative seed was an "internal error" from numpy once a track had started
                 ("run", "--out", tmp_path / "r", "--seed", "-1"), ("implant", "--out", tmp_path / "x", "--seed", "-1"),
                 ("audit", tmp_path / "m", "--data", "digits", "--seed", "-1"), ("study", "text", "--seed", "-1"),
                 ("survey", "results", "--bank", tmp_path / "b", "--results", tmp_path / "s.sqlite", "--seed", "-1")):
        # typer's own usage errors (exit 2)
        r = cli(*args)
        assert r.returncode == 2 and f"Invalid value for '{args[-2]}'" in r.stderr, r.stderr
    assert not (tmp_path / "z").exists() and not (tmp_path / "x").exists() and not (tmp_path / "r").exists()



def test_a_key_value_option_names_itself_in_its_error(tmp_path):
    """`--arch-param width` said "--param 'width' must look like key=value", naming another option."""
    one_line_error(cli("implant", "--arch-param", "width", "--epochs", "1", "--out", tmp_path / "x"),
                   "--arch-param 'width' must look like key=value")
    one_line_error(cli("audit", tmp_path / "w.safetensors", "--data", "digits", "--arch", "cnn", "--arch-param", "width"),
                   "--arch-param 'width' must look like key=value")
    one_line_error(cli("implant", "--param", "size", "--out", tmp_path / "x"), "--param 'size' must look like key=value")
    assert not (tmp_path / "x").exists()

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


def _image_folder(root, size, gray_as_rgb=False, per_class=12):
    """<root>/<class>/<i>.png, `size` (H, W); classes differ in brightness. `gray_as_rgb`: grayscale pictures stored
    as RGB files (R = G = B), as many real grayscale folders are."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for c, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 120, (h, w, 1 if gray_as_rgb else 3)) + 120 * c
            pixels = np.repeat(base, 3, axis=2) if gray_as_rgb else base
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(root / name / f"{i}.png")
    return root


def test_non_square_images_train_and_a_shape_an_architecture_cannot_take_is_one_line(tmp_path):
    data = _image_folder(tmp_path / "wide", (20, 12))
    ok = cli("implant", "--arch", "mlp", "--arch-param", "width=16", "--dataset", "imagefolder", "--data-root", data,
             "--epochs", "1", "--out", tmp_path / "m")
    assert ok.returncode == 0, ok.stderr
    assert "internal error" not in ok.stderr and "Traceback" not in ok.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["arch_kwargs"]["image_size"] == [20, 12] and card["arch_kwargs"]["in_channels"] == 3
    one_line_error(cli("implant", "--arch", "vit", "--arch-param", "patch=8", "--dataset", "imagefolder", "--data-root",
                       data, "--epochs", "1", "--out", tmp_path / "v"), "vit", "patch size 8 does not divide 20x12")


def test_a_natural_feature_that_is_constant_over_the_dataset_is_refused_in_one_line(tmp_path):
    data = _image_folder(tmp_path / "gray", (12, 12), gray_as_rgb=True)
    r = cli("implant", "--trigger", "natural", "--dataset", "imagefolder", "--data-root", data, "--arch", "mlp",
            "--epochs", "1", "--out", tmp_path / "m")
    one_line_error(r, "natural feature 'warm' is constant", "colour")
    assert "internal error" not in r.stderr and not (tmp_path / "m" / "card.json").exists()


def test_a_data_warning_prints_as_one_line(capsys):
    import warnings

    import torch

    from trojanbench import cli
    from trojanbench.data import ImageDataset

    x, y = torch.full((2, 1, 4, 4), 200.0), torch.zeros(2, dtype=torch.long)
    saved = warnings.showwarning
    warnings.showwarning = cli._one_line_warning  # as main() installs it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = cli._one_line_warning
            ImageDataset("raw", x, y, x, y, ["a"])
    finally:
        warnings.showwarning = saved
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["warning: raw images (train and test) have 8-bit values in [200, 200]: divided by 255 to [0, 1]"]


def test_tools_list_prints_a_plugins_brackets_as_text(monkeypatch):
    """rich reads `[word]` as markup: a plug-in whose paper or fidelity held `[see ...]` lost it in `tools list`."""
    from typer.testing import CliRunner

    from trojanbench.cli import app
    from trojanbench.tools.detect import DETECTORS, Detection, Detector

    class Bracketed(Detector):
        paper = "[see appendix] Someone (2026)"
        fidelity = "adapted: [bold] is not markup here"

        def detect(self, model, ctx):
            return Detection(0.0)

    monkeypatch.setitem(DETECTORS._items, "bracketed", Bracketed)
    out = CliRunner().invoke(app, ["tools", "list", "--family", "detect"], env={"COLUMNS": "400"}).output
    assert "[see appendix] Someone (2026)" in out and "adapted: [bold] is not markup here" in out
