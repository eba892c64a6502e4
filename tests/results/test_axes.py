"""Detector scores over the zoo's difficulty axes: levels from the jobs, a cell per level, the figure."""

from types import SimpleNamespace

import numpy as np
import pytest

from trojanbench.config import ZooConfig
from trojanbench.errors import UserError
from trojanbench.results.axes import EVERY, axis_curves, axis_figure, axis_figures, axis_levels
from trojanbench.results.boards import BoardSpec, Column, compute_board, model_row
from trojanbench.zoo.plan import expand

CFG = ZooConfig(models_per_arch=80, trojans={"kinds": ["patch", "natural", "adaptive-blend"], "rates": [0.003, 0.1],
                                             "targets": [0, 3]}, intensity={"epochs": [4, 8]})
MODEL = BoardSpec(task="detect-model", title="Is this model trojaned?", key="auroc", main=["auroc"],
                  columns=[Column(name="auroc", source="score", stat="auroc", header="AUROC")])
SAMPLE = BoardSpec(task="detect-samples", title="Which samples?", key="auroc", main=["auroc"],
                   columns=[Column(name="auroc", source="auroc", header="AUROC")])


class StubZoo:
    def __init__(self, *_):
        self.jobs = expand(CFG)

    def config(self):
        return CFG

    def models(self, split=None):
        return [(j, None, SimpleNamespace(id=j.id)) for j in self.jobs if split is None or j.split == split]


def rows_for(zoo):
    """A detector that sees trojans at rate 0.1 perfectly and those at 0.003 not at all; a baseline at chance."""
    rng = np.random.default_rng(0)
    rows = []
    for job, _, card in zoo.models():
        low = job.trojaned and job.trojan.poison.rate == 0.003
        good = float(job.trojaned and not low) + 0.01 * rng.random()
        common = {"groups": [], "label": int(job.trojaned)}
        rows.append(model_row("tool", card.id, MODEL.task, "score", good, role="tool", **common))
        rows.append(model_row("coin", card.id, MODEL.task, "score", rng.random(), role="baseline", **common))
        if job.trojaned:
            rows.append(model_row("tool", card.id, SAMPLE.task, "auroc", 0.5 if low else 0.9, role="tool", groups=[]))
    return rows


def test_levels_come_from_the_jobs():
    zoo = StubZoo()
    rates, epochs = axis_levels(zoo, "poison_rate"), axis_levels(zoo, "epochs")
    by_id = {j.id: j for j in zoo.jobs}
    assert set(rates.values()) == {0.003, 0.1, EVERY} and set(epochs.values()) == {4, 8}
    assert all(by_id[m].trojan.trigger.kind != "natural" for m, v in rates.items() if v != EVERY)  # rate means nothing
    assert len(rates) == len(zoo.jobs) - sum(j.trojaned and j.trojan.trigger.kind == "natural" for j in zoo.jobs)
    assert all(epochs[m] == (by_id[m].intensity or {}).get("epochs") for m in epochs)
    with pytest.raises(UserError, match="unknown axis 'size'; known: epochs, lr, mode, poison_rate"):
        axis_levels(zoo, "size")


def test_a_cell_per_level_against_the_right_clean_models():
    zoo = StubZoo()
    rows = rows_for(zoo)
    rates = axis_levels(zoo, "poison_rate")
    curves = axis_curves(rows, MODEL, rates, n_boot=200)
    n_clean = sum(not j.trojaned for j in zoo.jobs)
    tool = {p.level: p for p in curves["tool"]}
    assert list(tool) == [0.003, 0.1]
    assert tool[0.1].estimate.value == 1.0 and 0.2 < tool[0.003].estimate.value < 0.8  # chance at 0.3%
    assert all(p.n_clean == n_clean for p in tool.values())  # every clean model is a negative at every rate
    assert tool[0.1].estimate.has_interval and tool[0.1].estimate.low <= 1.0
    # where clean models have levels of their own (training epochs), a level compares trojans and clean models alike
    epochs = axis_levels(zoo, "epochs")
    for p in axis_curves(rows, MODEL, epochs, n_boot=200)["tool"]:
        assert p.n_clean == sum(epochs[j.id] == p.level for j in zoo.jobs if not j.trojaned)
    # a per-trojan (mean) column: the mean over the trojans at each level
    sample = {p.level: p for p in axis_curves(rows, SAMPLE, rates, n_boot=200)["tool"]}
    assert sample[0.003].estimate.value == 0.5 and sample[0.1].estimate.value == pytest.approx(0.9)
    assert sample[0.1].n_clean == 0 and sample[0.1].n_trojaned == sum(v == 0.1 for v in rates.values())
    # all levels pooled, the cell is the board's own
    pooled = axis_curves(rows, MODEL, dict.fromkeys(rates, "all"), n_boot=200)
    assert pooled["tool"][0].estimate.value == compute_board(
        [r for r in rows if r.model_id in rates], MODEL, n_boot=200).get("tool").metrics["auroc"].value


def test_small_cells_say_n_and_show_no_interval():
    zoo = StubZoo()
    rows = rows_for(zoo)
    few = dict(list(axis_levels(zoo, "poison_rate").items())[:6])
    for pts in axis_curves(rows, MODEL, few, n_boot=200).values():
        assert all(p.estimate.n < 5 and not p.estimate.has_interval for p in pts)


def test_the_figure_is_drawn_and_registered_per_board_and_varying_axis(tmp_path, monkeypatch):
    from trojanbench.zoo import build

    zoo = StubZoo()
    rows = rows_for(zoo)
    path = axis_figure(axis_curves(rows, MODEL, axis_levels(zoo, "poison_rate"), n_boot=100), tmp_path / "a.png",
                       "detection", "poison rate", "AUROC", {"coin"})
    assert path.is_file() and path.stat().st_size > 1000
    monkeypatch.setattr(build, "Zoo", StubZoo)
    boards = [compute_board(rows, spec, n_boot=100) for spec in (MODEL, SAMPLE)]
    figs = axis_figures("zoo", rows, boards, tmp_path / "figures", n_boot=100)
    # poison rate and epochs vary (mode and learning rate do not), for both boards
    assert sorted(f.model_id for f in figs) == sorted(f"figure:{t}-by-{a}-zoo.png" for t in (MODEL.task, SAMPLE.task)
                                                      for a in ("poison_rate", "epochs"))
    assert all(f.metric == "figure" and (tmp_path / "figures" / f.model_id.removeprefix("figure:")).is_file() for f in figs)
    assert "every level" in next(f for f in figs if f.model_id == f"figure:{MODEL.task}-by-poison_rate-zoo.png").extra["caption"]
