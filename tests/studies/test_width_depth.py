"""The width-depth study's mechanics: the grid has near-equal parameter counts, its models are zoos built by the
zoo builder (reused on a rerun), PGD accuracy at eps 0 is the
clean accuracy and falls with eps, effective rank is right on hand-made matrices, the hooks come off, and the
quick study writes rows, figures and a report through the registry."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trojanbench.models import build_model, count_parameters, data_kwargs
from trojanbench.report.html import render_report
from trojanbench.results import ResultsStore
from trojanbench.results.stats import Estimate
from trojanbench.studies import STUDIES, run_study
from trojanbench.studies.width_depth import (
    QUICK,
    WidthDepthConfig,
    _diff,
    boot_means,
    effective_rank,
    layer_ranks,
    shapes_of,
)
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.train import clean_accuracy, train_model
from trojanbench.train.adversarial import pgd_attack, robust_correct

torch.set_num_threads(1)

DIGITS_KW = {"in_channels": 1, "num_classes": 10, "image_size": 16, "mean": [0.3], "std": [0.3]}
CIFAR_KW = {"in_channels": 3, "num_classes": 10, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.mark.parametrize("family", WidthDepthConfig().families, ids=lambda f: f.name)
def test_default_grid_has_near_equal_parameter_counts(family):
    shapes = shapes_of(family, DIGITS_KW if family.dataset == "digits" else CIFAR_KW)
    assert [s.depth for s in shapes] == list(family.depths)
    for s in shapes:  # the reported count is the real one
        assert s.params == count_parameters(build_model(family.arch, **(DIGITS_KW if family.dataset == "digits" else CIFAR_KW),
                                                        width=s.width, depth=s.depth))
        assert abs(s.params - family.params) <= 0.15 * family.params, (s, family.params)
    widths = [s.width for s in shapes]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # deeper is thinner


@pytest.fixture(scope="module")
def tiny_model():
    ds = tiny_dataset(n_train=256, n_test=128)
    torch.manual_seed(0)
    model = build_model("mlp", **data_kwargs(ds), width=32, depth=2)
    train_model(model, ds.x_train, ds.y_train, fast_train_config(epochs=4), seed=0)
    return model, ds


def test_pgd_at_zero_is_clean_accuracy_and_falls_with_eps(tiny_model):
    model, ds = tiny_model
    model.train()  # the attack must not leave the model in another mode or with frozen weights
    out = robust_correct(model, ds.x_test, ds.y_test, [0.0, 0.05, 0.2, 0.5], steps=10, batch_size=100)
    assert model.training and all(p.requires_grad for p in model.parameters())
    acc = {e: float(v.mean()) for e, v in out.items()}
    assert all(len(v) == len(ds.x_test) for v in out.values())
    assert acc[0.0] == pytest.approx(clean_accuracy(model, ds.x_test, ds.y_test)) and acc[0.0] >= 0.9
    assert acc[0.0] >= acc[0.05] >= acc[0.2] >= acc[0.5] and acc[0.5] <= acc[0.0] - 0.5
    x_adv = pgd_attack(model, ds.x_test[:16], ds.y_test[:16], 0.1, steps=5)
    assert float((x_adv - ds.x_test[:16]).abs().max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1


def test_effective_rank_on_hand_made_matrices():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(50, 1, generator=g), torch.randn(1, 8, generator=g)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.diag(torch.tensor([3.0, 3.0, 0.0]))) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(4, 3)) == 0.0
    assert 1.0 < effective_rank(torch.diag(torch.tensor([10.0, 1.0, 1.0]))) < 3.0  # unequal: between


def test_layer_ranks_remove_their_hooks_and_use_channels_as_width():
    torch.manual_seed(0)
    cnn = build_model("cnn", **DIGITS_KW, width=4, depth=2).train()
    x = torch.rand(8, 1, 16, 16)
    ranks = layer_ranks(cnn, x)
    assert [w for w, _ in ranks] == [4, 8] and all(0 < r <= w + 1e-6 for w, r in ranks)
    assert cnn.training and not any(m._forward_hooks for m in cnn.modules() if isinstance(m, nn.ReLU))


def test_two_level_bootstrap_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    close = boot_means([rng.random(200) < 0.5 for _ in range(3)], 300, np.random.default_rng(1))
    apart = boot_means([rng.random(200) < p for p in (0.1, 0.5, 0.9)], 300, np.random.default_rng(1))
    assert np.ptp(np.percentile(apart, [2.5, 97.5])) > 2 * np.ptp(np.percentile(close, [2.5, 97.5]))
    assert np.isnan(boot_means([], 10, rng)).all()


def test_a_difference_counts_the_smaller_cell_and_shows_an_interval_only_when_both_are_large_enough():
    rng = np.random.default_rng(0)

    def cell(n):
        per_seed = [rng.random(100) < 0.5 for _ in range(n)]
        samples = boot_means(per_seed, 200, np.random.default_rng(1))
        return Estimate(float(np.mean([p.mean() for p in per_seed])), 0.0, 1.0, n), samples

    small = _diff(cell(4), cell(6))
    assert small.n == 4 and str(small).endswith("(n=4)")
    large = _diff(cell(6), cell(8))
    assert large.n == 6 and large.has_interval and "[" in str(large)


def test_auroc_cells_and_their_trend_are_not_degenerate_at_perfect_separation():
    """8 + 8 models that a detector separates perfectly at both ends of a family: each cell's score interval
    reaches well below 1, and the trend's MOVER interval is not [0, 0] (resampled AUROCs would be 1 every time)."""
    from trojanbench.results.stats import MOVER_METHOD, auroc_estimate

    labels = np.r_[np.zeros(8), np.ones(8)]
    cell = auroc_estimate(labels, np.arange(16.0))
    assert cell.value == 1 and cell.low < 0.8 and cell.n == 8
    trend = _diff((cell, np.ones(100)), (cell, np.ones(100)))
    assert trend.method == MOVER_METHOD and trend.low < -0.2 < 0.2 < trend.high


def test_quick_study_writes_rows_figures_and_report(tmp_path):
    assert "width-depth" in STUDIES.names()
    messages = []
    summary = run_study("width-depth", tmp_path / "out", quick=True, progress=messages.append)
    n_shapes = sum(len(f.depths) for f in QUICK.families)
    assert len(messages) == 1 + len(QUICK.families) + n_shapes  # the grid, one line per family's zoo, per shape
    with ResultsStore(summary.results) as store:
        rows = store.rows(summary.run_id)
    board = [r for r in rows if r.model_id == "zoo:width-depth" and r.task == "width-depth-digits"]
    shapes = {r.tool for r in board} - {"chance"}
    assert len(shapes) == n_shapes
    for metric in ("params", "clean_acc", "robust_acc", "asr", "nc_auroc", "pointing_game", "info_per_neuron"):
        got = [r for r in board if r.metric == metric and r.tool != "chance"]
        assert len(got) == n_shapes, metric
        assert all(r.value is not None for r in got)
    acc = [r for r in board if r.metric == "clean_acc" and r.tool != "chance"]
    assert all(0.0 <= r.extra["low"] <= r.value <= r.extra["high"] <= 1.0 for r in acc)
    assert max(r.value for r in acc) >= 0.5  # something was learned
    robust = {r.tool: r.value for r in board if r.metric == "robust_acc"}
    assert all(robust[t] <= next(r.value for r in acc if r.tool == t) + 1e-9 for t in shapes)
    per_model = [r for r in rows if r.model_id.startswith("width-depth:")]
    assert len({(r.model_id, r.seed) for r in per_model}) == sum(len(f.depths) * (f.n_clean + f.n_trojaned)
                                                                 for f in QUICK.families)
    figures = [r for r in rows if r.metric == "figure"]
    assert len(figures) == 4 and all((tmp_path / "out" / "figures" / r.model_id[7:]).is_file() for r in figures)
    assert {"time"} < set(summary.findings) and any("PGD acc" in k for k in summary.findings)
    page = render_report(summary.results, tmp_path / "out" / "report").read_text()
    assert "Deep-thin vs wide-shallow" in page and "width-depth-vs-depth.png" in page

    # the models are zoos built by the zoo builder, one per family, with a card per model; a rerun reuses them
    zoos = sorted((Path(os.environ["TROJANBENCH_CACHE"]) / "zoos").glob("width-depth-*"))
    assert len(zoos) == len(QUICK.families)
    cards = {f: f.stat().st_mtime_ns for z in zoos for f in z.rglob("card.json")}
    assert len(cards) == sum(len(f.depths) * (f.n_clean + f.n_trojaned) for f in QUICK.families)
    again = run_study("width-depth", tmp_path / "again", quick=True)
    assert {f: f.stat().st_mtime_ns for z in zoos for f in z.rglob("card.json")} == cards
    with ResultsStore(again.results) as store:
        same = {(r.tool, r.metric): r.value for r in store.rows(again.run_id) if r.model_id == "zoo:width-depth"
                and r.metric in ("clean_acc", "asr")}
    assert same == {(r.tool, r.metric): r.value for r in board if r.metric in ("clean_acc", "asr")}
