"""The attribution part of the diagnosis track on a tiny zoo: scores, per-model and aggregate rows, the
randomized-model sanity check, one PNG panel per trigger kind, a leaderboard that prints."""

import math

import pytest
from rich.console import Console

from trojanbench.config import ZooConfig
from trojanbench.errors import UserError
from trojanbench.report.leaderboard import leaderboard
from trojanbench.results import ResultsStore
from trojanbench.tasks.diagnose import TASK, run_diagnose_track
from trojanbench.zoo.build import build_zoo

TOOLS = ["saliency", "guided-backprop", "sobel", "random", "centre"]


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    cfg = ZooConfig(name="diag-zoo", models_per_arch=2, clean_fraction=0.0, test_fraction=0.5,
                    archs=[{"arch": "cnn", "kwargs": {"width": 8, "depth": 3}}],
                    trojans={"kinds": ["patch", "blended"], "targets": [2, 7], "rates": [0.1],
                             "variants": {"patch": [{"pattern": "random", "location": "top-left"}]}},
                    train={"epochs": 5}, gate={"min_asr": 0.8, "retries": 0})
    out = tmp_path_factory.mktemp("diagnose") / "zoo"
    assert build_zoo(cfg, out, batch_models=2) == {"done": 2}
    return out


@pytest.fixture(scope="module")
def track(small_zoo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag-run")
    scores = run_diagnose_track(small_zoo, tmp / "r.sqlite", TOOLS, n_images=12, n_boot=100, images_dir=tmp / "img")
    return {s.tool: s for s in scores}, tmp


def test_gradient_maps_point_at_the_patch_and_pass_the_sanity_check(track):
    scores, _ = track
    assert set(scores) == set(TOOLS)
    best = max(scores[t].metrics["pointing_game[kind=patch]"].value for t in ("saliency", "guided-backprop"))
    assert best >= 0.9
    assert scores["random"].metrics["pointing_game[kind=patch]"].value <= 0.3
    assert scores["centre"].metrics["pointing_game[kind=patch]"].value <= 0.1
    assert scores["saliency"].metrics["sanity_similarity"].value < 0.35 and scores["saliency"].metrics["sanity_pass"].value == 1
    for base in ("sobel", "random", "centre"):
        assert scores[base].is_baseline and scores[base].metrics["sanity_similarity"].value == pytest.approx(1.0)
        assert scores[base].metrics["sanity_pass"].value == 0
    # a blended trigger changes every pixel: correlation is scored, pointing game and mask AUROC are n/a
    assert not math.isnan(scores["saliency"].metrics["correlation[kind=blended]"].value)
    assert math.isnan(scores["saliency"].metrics["pointing_game[kind=blended]"].value)
    assert math.isnan(scores["saliency"].metrics["mask_auroc[kind=blended]"].value)


def test_rows_panels_and_leaderboard(track):
    scores, tmp = track
    with ResultsStore(tmp / "r.sqlite") as store:
        per_model = store.rows(tool="saliency", task=TASK, metric="correlation")
        models = [r for r in per_model if not r.model_id.startswith("zoo:")]
        assert len(models) == 2 and all({"kind", "attack_success", "seconds"} <= set(r.extra) for r in models)
        agg = store.rows(tool="saliency", task=TASK, metric="pointing_game[kind=patch]")
        assert len(agg) == 1 and agg[0].model_id == "zoo:diag-zoo" and "low" in agg[0].extra
    pngs = sorted(p.name for p in (tmp / "img").glob("*.png"))
    assert pngs == ["diagnose-blended.png", "diagnose-patch.png"]
    assert all((tmp / "img" / p).stat().st_size > 1000 for p in pngs)
    console = Console(record=True, width=160)
    console.print(leaderboard("Does the map point at the trigger?", list(scores.values()), "pointing_game[kind=patch]",
                              [("pointing_game[kind=patch]", "PG patch"), ("correlation", "corr"),
                               ("sanity_similarity", "sanity")]))
    text = console.export_text()
    assert "saliency" in text and "baseline" in text


def test_max_models_and_bad_zoo(small_zoo, tmp_path):
    scores = run_diagnose_track(small_zoo, tmp_path / "r.sqlite", ["sobel"], n_images=4, n_boot=10, max_models=1)
    assert scores[0].metrics["correlation"].n == 1
    with pytest.raises(UserError, match="not a zoo"):
        run_diagnose_track(tmp_path, tmp_path / "r2.sqlite", ["sobel"])
