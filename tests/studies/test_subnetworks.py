"""The subnetworks study's mechanics: edge-popup finds a supermask on frozen random weights that beats a random
mask of the same density by a wide margin, masks keep exactly their density, the intervention hooks compute
what they claim and are always removed, and the quick study writes rows, figures and a report."""

import os
from pathlib import Path

import pytest
import torch

from trojanbench.data import load_dataset
from trojanbench.errors import UserError
from trojanbench.models import build_model, data_kwargs
from trojanbench.report.html import render_report
from trojanbench.results import ResultsStore
from trojanbench.studies import run_study
from trojanbench.studies.subnetworks import (
    METHODS,
    accuracy,
    edge_intervention,
    edge_popup,
    finetune_masked,
    in_context,
    linear_layers,
    magnitude_masks,
    random_masks,
)
from trojanbench.utils import private_rng

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _net(ds, seed=0, width=32):
    with private_rng():
        torch.manual_seed(seed)
        return build_model("mlp", **data_kwargs(ds), width=width, depth=2, init="kaiming-normal").eval()


def test_supermask_beats_random_mask_of_equal_density(digits):
    ds = digits
    net = _net(ds)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    density = 0.3
    supermask = edge_popup(net, ds.x_train, ds.y_train, density, epochs=8, lr=0.1, batch_size=128, seed=0, scale=True)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the search never edits weights
    assert not net.training
    for m in supermask.values():
        assert float(m.mean()) == pytest.approx(density, abs=1 / m.numel())
    with edge_intervention(net, supermask, "isolate"):
        found = accuracy(net, ds.x_test, ds.y_test)
    chance = []
    for s in range(3):
        with edge_intervention(net, random_masks(net, density, s), "isolate"):
            chance.append(accuracy(net, ds.x_test, ds.y_test))
    assert max(chance) < 0.3
    assert found > max(chance) + 0.3, (found, chance)


def test_interventions_compute_what_they_say_and_remove_their_hooks(digits):
    ds = digits
    net = _net(ds, width=16)
    x = ds.x_test[:20]
    full = net(x)
    ones = {n: torch.ones_like(m.weight) for n, m in linear_layers(net).items()}
    zeros = {n: torch.zeros_like(m.weight) for n, m in linear_layers(net).items()}
    with edge_intervention(net, ones, "isolate"):  # the whole network as its own subnetwork
        assert torch.allclose(net(x), full, atol=1e-5)
    sources = {n: torch.zeros(1, m.weight.shape[1]) for n, m in linear_layers(net).items()}
    with edge_intervention(net, zeros, "replace", sources):  # nothing removed
        assert torch.allclose(net(x), full, atol=1e-5)
    masks = magnitude_masks(net, 0.5)
    with edge_intervention(net, masks, "replace", sources):  # zero-ablated edges = the complement alone
        removed = net(x)
    complement = {n: 1 - m for n, m in masks.items()}
    with edge_intervention(net, complement, "isolate"):
        assert torch.allclose(net(x), removed, atol=1e-5)
    with pytest.raises(RuntimeError), edge_intervention(net, masks, "isolate"):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())
    assert torch.equal(net(x), full)


def test_in_context_bounds_and_finetune_leaves_model_alone(digits):
    ds = digits
    net = _net(ds, width=16)
    whole = {n: torch.ones_like(m.weight) for n, m in linear_layers(net).items()}
    res = in_context(net, whole, ds.x_train, ds.x_test, ds.y_test, chance=0.1)
    assert res["iso_acc"] == res["full_acc"] == res["patched_acc"]  # the subnetwork is the network
    assert all(not m._forward_hooks for m in net.modules())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = magnitude_masks(net, 0.2)
    tuned = finetune_masked(net, masks, ds.x_train[:256], ds.y_train[:256], epochs=1, lr=0.01, batch_size=64, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for name, m in masks.items():
        assert torch.all(tuned[f"{name}.weight"][m == 0] == 0)  # pruned weights stay pruned


def test_quick_study_writes_rows_figures_and_report(tmp_path):
    summary = run_study("subnetworks", tmp_path / "out", quick=True)
    with ResultsStore(summary.results) as store:
        rows = store.rows(summary.run_id)
    agg = {(r.task, r.tool, r.metric): r for r in rows if r.model_id.startswith("zoo:")}
    for method in METHODS:
        for metric in ("iso_acc", "full_acc", "removed_mean_acc", "patched_acc", "gap"):
            r = agg[("subnetworks", method, metric)]
            assert r.value is not None and "low" in r.extra
        assert ("subnetworks-density", method, "iso_acc@0.3") in agg
    # the supermask on random weights beats its random-mask control in the study too
    assert agg[("subnetworks", "supermask@random", "iso_acc")].value > \
        agg[("subnetworks", "random-mask@random", "iso_acc")].value + 0.1
    figures = [r for r in rows if r.metric == "figure"]
    assert len(figures) == 2 and all((tmp_path / "out" / "figures" / r.model_id.split(":", 1)[1]).exists()
                                     for r in figures)
    assert summary.findings and "time" in summary.findings
    page = render_report(summary.results, tmp_path / "report").read_text()
    assert "supermask@random" in page and "subnetworks-context.png" in page
    # the models are a zoo: a rerun reuses it (no model trained again) and measures the same models
    zoos = sorted((Path(os.environ["TROJANBENCH_CACHE"]) / "zoos").glob("subnetworks-digits*"))
    assert len(zoos) == 1
    cards = sorted(zoos[0].rglob("card.json"))
    assert len(cards) == 2
    stamps = [c.stat().st_mtime_ns for c in cards]
    again = run_study("subnetworks", tmp_path / "again", quick=True)
    assert [c.stat().st_mtime_ns for c in cards] == stamps
    with ResultsStore(again.results) as store:
        rows2 = store.rows(again.run_id)
    iso = lambda rs: sorted((r.model_id, r.value) for r in rs if r.metric == "full_acc")
    assert iso(rows2) == iso(rows)


def test_kaiming_normal_init_is_seeded_homogeneous_and_refuses_unknown_names(digits):
    a, b = _net(digits, seed=3), _net(digits, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    layers = linear_layers(a)
    assert all(torch.all(m.bias == 0) for m in layers.values())
    first = next(iter(layers.values()))
    assert float(first.weight.detach().std()) == pytest.approx((2 / first.weight.shape[1]) ** 0.5, rel=0.05)
    with pytest.raises(UserError, match="unknown mlp init"):
        build_model("mlp", **data_kwargs(digits), init="xavier")
