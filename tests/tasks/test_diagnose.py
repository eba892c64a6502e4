"""The attribution part of the diagnosis track on a tiny zoo: scores, per-model rows, the randomized-model sanity
check, one PNG panel per trigger kind, a leaderboard that prints, methods that collapse reported once."""

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
    board = run_diagnose_track(small_zoo, tmp / "r.sqlite", TOOLS, n_images=12, n_boot=100, images_dir=tmp / "img")
    return {s.tool: s for s in board.scores}, tmp, board


def test_gradient_maps_point_at_the_patch_and_pass_the_sanity_check(track):
    scores, _, _ = track
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
    scores, tmp, board = track
    with ResultsStore(tmp / "r.sqlite") as store:
        run = store.latest_complete()
        per_model = store.rows(run.run_id, tool="saliency", task=TASK, metric="correlation")
        assert len(per_model) == 2 and all({"groups", "role", "attack_success"} <= set(r.extra) for r in per_model)
    pngs = sorted(p.name for p in (tmp / "img").glob("*.png"))
    assert pngs == ["diagnose-blended.png", "diagnose-patch.png"]
    assert all((tmp / "img" / p).stat().st_size > 1000 for p in pngs)
    console = Console(record=True, width=160)
    console.print(leaderboard(board))
    text = console.export_text()
    assert "saliency" in text and "baseline" in text and "n=1" in text  # one patch trojan: no interval


def test_a_method_identical_to_another_is_reported_once(small_zoo, tmp_path):
    from trojanbench.tasks.diagnose import collapsed_methods
    from trojanbench.tools.attribute import ATTRIBUTORS
    from trojanbench.zoo.build import Zoo
    from trojanbench.zoo.store import load_model

    _, folder, _ = Zoo(small_zoo).models()[0]
    model, _ = load_model(folder)
    x = Zoo(small_zoo).dataset().x_test[:3]
    tools = {n: ATTRIBUTORS.get(n)() for n in ("saliency", "input-x-gradient", "saliency")} | {"again": ATTRIBUTORS.get("saliency")()}
    assert collapsed_methods(tools, model, x, 2) == {"again": "saliency"}


def test_max_models_and_bad_zoo(small_zoo, tmp_path):
    board = run_diagnose_track(small_zoo, tmp_path / "r.sqlite", ["sobel"], n_images=4, n_boot=10, max_models=1)
    assert board.scores[0].metrics["correlation"].n == 1
    with pytest.raises(UserError, match="not a zoo"):
        run_diagnose_track(tmp_path, tmp_path / "r2.sqlite", ["sobel"])
