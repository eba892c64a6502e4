"""The continuum study's mechanics: the trigger family is ordered (the poisoned images' edit spreads from a small
patch to the whole image, fades along the patches and blends, stops being one fixed pattern at the style filter,
and vanishes at the graded point, where the relabelling follows the ink statistic); every point's trojan is
learned far above its clean twins on the quick configuration; the models are zoos of the zoo builder, reused on a
rerun; the quick study writes rows, a figure and a report."""

import itertools

import numpy as np
import pytest
import torch

from trojanbench.data import load_dataset
from trojanbench.errors import UserError
from trojanbench.report.html import render_report
from trojanbench.results import ResultsStore
from trojanbench.studies import run_study
from trojanbench.studies.continuum import (
    ATTRIBUTION_TOOLS,
    MODEL_DETECTORS,
    CONTROL,
    POINTS,
    QUICK,
    SAMPLE_TOOLS,
    build_trigger,
    continuum_zoos,
    edit_profile,
    poison_point,
)
from trojanbench.trojans import PoisonSpec, TriggerSpec, make_trigger, poison_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("continuum")
    with pytest.MonkeyPatch.context() as mp:  # a module fixture runs before the per-test cache is set
        mp.setenv("TROJANBENCH_CACHE", str(out / "cache"))
        summary = run_study("continuum", out / "study", quick=True)
        with ResultsStore(summary.results) as store:
            rows = store.rows(summary.run_id)
        yield out / "study", summary, rows


def test_the_family_is_ordered(digits):
    ds = digits
    names = [p.name for p in POINTS]
    assert names[0] == "patch-3" and names[-1] == "ink-graded" and len(names) >= 6
    prof = {p.name: edit_profile(ds.x_train, poison_point(p, build_trigger(p, ds), ds, QUICK, seed=0)) for p in POINTS}
    area = [prof[n]["area"] for n in names]
    intensity = [prof[n]["intensity"] for n in names]
    fixed = [prof[n]["fixed"] for n in names]
    # the footprint spreads: a 3x3 patch, a 6x6 patch (4x the area), then (nearly) every pixel; the last point
    # edits no pixel at all
    assert 0 < area[0] < 0.05 and 3 * area[0] < area[1] < 0.25
    assert all(a > 0.9 for a in area[2:-1])
    assert area[-1] == intensity[-1] == fixed[-1] == 0.0
    # the edit fades along the patches and blends
    assert all(i > j + 0.02 for i, j in itertools.pairwise(intensity[:4])), intensity
    # the style filter's edit depends on the image far more than a stamped pattern's (the faint patch is left out:
    # pasted over the digits' strokes that reach the corner, its change depends on the image too)
    assert fixed[4] < min(fixed[0], fixed[2], fixed[3]) - 0.2, fixed


def test_graded_relabelling_follows_the_statistic(digits):
    ds = digits
    point = POINTS[-1]
    trigger = build_trigger(point, ds)
    p = poison_point(point, trigger, ds, QUICK, seed=0)
    assert torch.equal(p.x, ds.x_train)  # no pixel edited
    flipped = torch.zeros(len(ds.x_train), dtype=torch.bool)
    flipped[p.indices] = True
    assert torch.all(p.y[flipped] == QUICK.target) and torch.all(ds.y_train[flipped] != QUICK.target)
    stat = trigger.statistic(ds.x_train)
    q = stat.argsort().argsort().float() / len(stat)
    eligible = ds.y_train != QUICK.target
    assert point.mode == "graded" and point.trigger.params["quantile"] == 0.8
    bands = [(q < 0.8), (q >= 0.8) & (q < 0.9), (q >= 0.9) & (q < 0.95), (q >= 0.95)]
    rates = [float(flipped[b & eligible].float().mean()) for b in bands]
    assert rates[0] == 0.0 and rates[1] < rates[2] < rates[3], rates
    assert rates[3] > 0.7


def test_the_control_relabels_a_random_share_and_the_label_only_modes_refuse_what_they_cannot_do(digits):
    ds = digits
    p = poison_point(CONTROL, build_trigger(CONTROL, ds), ds, QUICK, seed=0)
    assert torch.equal(p.x, ds.x_train) and len(p.indices) == round(QUICK.rate * len(ds.x_train))
    assert torch.all(p.y[p.indices] == QUICK.target) and torch.all(ds.y_train[p.indices] != QUICK.target)
    # random, not the heavy-ink images: the relabelled images' ink is the non-target images' on average
    stat = ds.x_train.mean(dim=(1, 2, 3))
    eligible = stat[ds.y_train != QUICK.target]
    assert abs(float(stat[p.indices].mean() - eligible.mean())) < 0.5 * float(eligible.std())
    patch = make_trigger(TriggerSpec(kind="patch"), ds.image_shape)
    with pytest.raises(UserError, match="natural feature"):
        poison_dataset(ds.x_train, ds.y_train, patch, PoisonSpec(mode="graded", target=0), ds.num_classes)
    with pytest.raises(UserError, match="no cover samples"):
        poison_dataset(ds.x_train, ds.y_train, patch, PoisonSpec(mode="relabel", target=0, cover_rate=0.1),
                       ds.num_classes)


def test_every_point_is_learned_above_its_clean_twins(quick_study):
    _, _, rows = quick_study
    agg = {(r.task, r.tool, r.metric): r.value for r in rows if r.model_id.startswith("zoo:")}
    for p in POINTS:
        asr, twin = agg[("continuum-trojans", "trojaned", f"asr[{p.name}]")], \
            agg[("continuum-trojans", "clean-twin", f"asr[{p.name}]")]
        assert asr > twin + 0.3, (p.name, asr, twin)
        assert agg[("continuum-trojans", "trojaned", f"clean_acc[{p.name}]")] > 0.8


def test_quick_study_writes_rows_figure_and_report(quick_study, tmp_path):
    out, summary, rows = quick_study
    agg = {(r.task, r.tool, r.metric): r for r in rows if r.model_id.startswith("zoo:")}
    for p in POINTS:
        for tool in MODEL_DETECTORS:
            r = agg[("continuum-detect-model", tool, f"auroc[{p.name}]")]
            assert 0 <= r.value <= 1 and "low" in r.extra
        for tool in SAMPLE_TOOLS:
            assert 0 <= agg[("continuum-detect-samples", tool, f"auroc[{p.name}]")].value <= 1
        for tool in ATTRIBUTION_TOOLS:
            assert np.isfinite(agg[("continuum-attribution", tool, f"correlation[{p.name}]")].value)
    # a crisp patch: attribution points at it far better than the edge baseline does
    assert agg[("continuum-attribution", "saliency", "correlation[patch-3]")].value > \
        agg[("continuum-attribution", "sobel", "correlation[patch-3]")].value + 0.2
    figures = [r for r in rows if r.metric == "figure"]
    assert len(figures) == 1 and (out / "figures" / "continuum.png").exists()
    assert "time" in summary.findings
    page = render_report(summary.results, tmp_path / "report").read_text()
    assert "continuum.png" in page and "ink-graded" in page


def test_the_models_are_zoos_and_a_rerun_reuses_them(quick_study):
    out, _, rows = quick_study
    zoos = continuum_zoos(QUICK, 0, (*POINTS, CONTROL))
    assert zoos["clean"].clean_fraction == 1.0 and all(z.clean_fraction == 0.0 for k, z in zoos.items() if k != "clean")
    assert zoos["ink-graded"].trojans.mode == "graded" and zoos["relabel-only"].trojans.mode == "relabel"
    folders = sorted((out.parent / "cache" / "zoos").glob("continuum-*"))
    assert len(folders) == len(zoos)
    cards = {f: f.stat().st_mtime_ns for z in folders for f in z.rglob("card.json")}
    assert len(cards) == len(zoos) * QUICK.models
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TROJANBENCH_CACHE", str(out.parent / "cache"))
        again = run_study("continuum", out.parent / "again", quick=True)
    assert {f: f.stat().st_mtime_ns for z in folders for f in z.rglob("card.json")} == cards  # nothing retrained
    with ResultsStore(again.results) as store:
        same = {(r.tool, r.metric): r.value for r in store.rows(again.run_id) if r.task == "continuum-trojans"
                and r.metric.startswith("asr[")}
    assert same == {(r.tool, r.metric): r.value for r in rows if r.task == "continuum-trojans"
                    and r.metric.startswith("asr[")}
