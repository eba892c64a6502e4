"""The detection track on a small zoo of crude patch trojans: the batched Neural Cleanse finds targets,
spectral signatures and STRIP find poisoned samples, the leaderboard and results land, bad input is refused."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from trojanbench.config import ZooConfig
from trojanbench.implant import implant
from trojanbench.results import ResultsStore
from trojanbench.results.stats import auroc
from trojanbench.tasks.detect import run_detect_track
from trojanbench.tools.detect import DETECTORS, SAMPLE_DETECTORS, DetectContext
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.zoo.build import build_zoo


@pytest.fixture(scope="module")
def patch_zoo(tmp_path_factory):
    cfg = ZooConfig(name="patch-zoo", models_per_arch=8, test_fraction=0.5,
                    archs=[{"arch": "cnn", "kwargs": {"width": 16, "depth": 3}}],
                    trojans={"kinds": ["patch"], "targets": [1, 4, 6, 9], "rates": [0.05]},
                    train={"epochs": 15}, gate={"min_asr": 0.9, "retries": 1})
    out = tmp_path_factory.mktemp("detect") / "zoo"
    assert build_zoo(cfg, out, batch_models=8) == {"done": 8}
    return out


def test_batched_neural_cleanse_finds_the_target_of_patch_trojans(patch_zoo, tmp_path):
    model_board = run_detect_track(patch_zoo, tmp_path / "r.sqlite", ["neural-cleanse", "random"], n_boot=200)[0]
    nc = model_board.get("neural-cleanse")
    assert nc.metrics["target_accuracy"].value >= 0.75
    assert nc.metrics["trigger_iou"].value > 0.0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run = store.latest_complete()  # a standalone track call is a run of its own
        assert run.kind == "track:detect"
        rows = store.rows(run.run_id, tool="neural-cleanse", task="detect-model", metric="score")
        assert len(rows) == 4 and all("target_label" in r.extra and r.extra["role"] == "tool" for r in rows)


def test_neural_cleanse_optimises_all_classes_in_one_batch(digits):
    model = implant(digits, "cnn", {"width": 8}, train=None, seed=0).model
    ctx = DetectContext(digits.x_test[:64], digits.y_test[:64], 10)
    masks, patterns = DETECTORS.get("neural-cleanse")(steps=5).reverse_engineer(model, ctx)
    assert masks.shape == (10, 16, 16) and patterns.shape == (10, 1, 16, 16)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_spectral_and_strip_flag_poisoned_samples_of_a_crude_patch_trojan(digits, rate):
    """The issue's floor (poisoned-sample AUROC >= 0.9 on crude patch trojans), at both poison rates of the
    default zoo. Activation clustering has its own tests (tests/tools/test_detect_samples.py), at 17%, 50% and
    75% of the target class."""
    from trojanbench.implant import prepare

    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=rate))
    result = implant(digits, "cnn", {"width": 16, "depth": 3}, spec, seed=0)
    p = prepare(digits, "cnn", {"width": 16, "depth": 3}, spec, seed=0)
    assert torch.equal(p.poisoned_indices, result.poisoned_indices)
    flags = np.zeros(len(p.x))
    flags[p.poisoned_indices.numpy()] = 1
    ctx = DetectContext(digits.x_test[:200], digits.y_test[:200], 10)
    score = {name: auroc(flags, SAMPLE_DETECTORS.get(name)().suspicion(result.model, p.x, p.y, ctx).numpy())
             for name in ("spectral", "strip", "random")}
    assert score["strip"] >= 0.9, score  # the original's unclipped sum keeps the patch intact
    if rate == 0.05:
        assert score["spectral"] >= 0.9, score
    assert abs(score["random"] - 0.5) < 0.1


def test_detect_track_from_the_cli(patch_zoo, tmp_path):
    cmd = [sys.executable, "-m", "trojanbench.cli", "run", "--track", "detect", "--zoo", str(patch_zoo),
           "--tools", "random,entropy,spectral", "--results", str(tmp_path / "r.sqlite")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Is this model trojaned" in r.stdout and "baseline" in r.stdout and "spectral" in r.stdout
    bad = subprocess.run(cmd[:-4] + ["--tools", "telepathy"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown tool 'telepathy'" in bad.stderr
    nozoo = subprocess.run(cmd[:6] + ["--zoo", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert nozoo.returncode == 2 and "not a zoo" in nozoo.stderr


def test_pixel_knn_baseline_flags_relabelled_samples(digits):
    from trojanbench.implant import prepare

    spec = TrojanSpec(trigger=TriggerSpec(kind="blended"), poison=PoisonSpec(target=3, rate=0.05))
    p = prepare(digits, "cnn", None, spec, seed=0)
    flags = np.zeros(len(p.x))
    flags[p.poisoned_indices.numpy()] = 1
    ctx = DetectContext(digits.x_test[:50], digits.y_test[:50], 10)
    scores = SAMPLE_DETECTORS.get("knn-pixels")().suspicion(p.model, p.x, p.y, ctx).numpy()
    assert auroc(flags, scores) >= 0.9


def test_an_installed_plugin_detector_appears_on_the_leaderboard(patch_zoo, tmp_path):
    from pathlib import Path

    site = tmp_path / "site"
    example = Path(__file__).parents[2] / "examples" / "plugin-detector"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(example)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "trojanbench.cli", "run", "--zoo", str(patch_zoo), "--track", "detect",
           "--tools", "noise-sensitivity,random", "--out", str(tmp_path / "run"), "--no-report"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "noise-sensitivity" in r.stdout and "random" in r.stdout
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        run = store.latest_complete()
        assert len(store.rows(run.run_id, tool="noise-sensitivity", metric="score")) == 4

    # a plug-in that fails to import is named in one line, not a traceback
    broken = tmp_path / "broken"
    (broken / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (broken / "broken_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (broken / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text("[trojanbench.tools]\nbroken = no_such_module_x\n")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(broken)})
    assert r.returncode == 2 and "plug-in 'broken'" in r.stderr and "Traceback" not in r.stderr


def test_the_track_scores_all_to_all_and_adaptive_trojans(tmp_path):
    """The large zoo's hard cases: all-to-all trojans (no target label) and adaptive ones (cover samples) go through
    both boards; target accuracy is counted on all-to-one trojans only."""
    cfg = ZooConfig(name="hard", models_per_arch=8, test_fraction=0.5, stratify=True,
                    archs=[{"arch": "cnn", "kwargs": {"width": 8, "depth": 2}}],
                    trojans={"kinds": ["patch", "adaptive-patch"], "targets": [3], "rates": [0.2],
                             "by_kind": {"patch": {"mode": "all-to-all"}}},
                    train={"epochs": 6}, gate={"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0})
    build_zoo(cfg, tmp_path / "zoo", batch_models=8)
    tools = ["final-layer-outlier", "neural-cleanse", "spectral", "knn-pixels"]
    model_board, sample_board = run_detect_track(tmp_path / "zoo", tmp_path / "r.sqlite", tools, n_boot=50)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        rows = store.rows(store.runs()[0].run_id)
    groups = {g for r in rows if r.task == "detect-model" for g in r.extra.get("groups", [])}
    assert {"kind=patch", "kind=adaptive-patch"} <= groups
    assert {s.tool for s in model_board.scores} == {"final-layer-outlier", "neural-cleanse"}
    assert all(s.n_models == 4 for s in model_board.scores)  # 2 clean + 2 trojaned held out
    nc = model_board.get("neural-cleanse")
    assert nc.metrics["target_accuracy"].n == 1  # the adaptive-patch trojan; all-to-all has no target to name
    assert {s.tool for s in sample_board.scores} == {"spectral", "knn-pixels"}
    assert all(s.n_models == 2 for s in sample_board.scores)
