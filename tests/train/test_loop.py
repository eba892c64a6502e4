"""The one training loop (`train.loop`): its schedule, its batches, its epoch reports, and that no other copy of a
model-training loop is left in the package."""

import re
from pathlib import Path

import pytest
import torch

from trojanbench.train.loop import epoch_batches, lr_factor, run_steps, sampled_batches

SRC = Path(__file__).resolve().parents[2] / "src" / "trojanbench"
# optimisations that are a tool's own algorithm (trigger inversion, feature synthesis, ROME's value search, ANP's
# masks, meta-classifiers): they train no model of the zoo and keep the loops of the papers they port
TOOL_ALGORITHMS = {"tools/edit/rome.py", "tools/synthesize/tabor.py", "tools/synthesize/feature_adversary.py",
                   "tools/synthesize/__init__.py", "tools/synthesize/fourier_fv.py", "tools/detect/output_stats.py",
                   "tools/detect/mntd.py", "tools/detect/neural_cleanse.py", "tools/detect/dbs.py", "tools/repair/anp.py"}


def test_every_optimiser_step_outside_the_tools_algorithms_is_the_loops():
    stepping = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if re.search(r"\bopt\w*\.step\(\)", p.read_text())}
    assert stepping - TOOL_ALGORITHMS == {"train/loop.py"}


def test_warm_up_then_linear_decay_and_a_report_per_epoch():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0)
    x = torch.arange(10.0)
    lrs, reports = [], []

    def loss_of(idx):
        return ((w.sum() - x[idx]) ** 2).mean(), x[idx].mean()

    steps = run_steps(opt, epoch_batches(10, 4, 2, torch.Generator().manual_seed(0)), loss_of, lr=0.1, warmup=0.5,
                      total=6, after_step=lambda: lrs.append(opt.param_groups[0]["lr"]),
                      on_epoch=lambda e, v: reports.append((e, v)))
    assert steps == 6
    assert lrs == pytest.approx([0.1 * lr_factor(s, 6, 0.5) for s in range(6)])
    assert lrs[2] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 / 3)
    # each epoch sees every index once: the mean of its batch means is 4.5 weighted by batch (4, 4, 2)
    assert [e for e, _ in reports] == [0, 1]
    with pytest.raises(ValueError, match="warm-up"):
        run_steps(opt, [], loss_of, warmup=0.1)


def test_batches_cover_an_epoch_or_sample_with_replacement():
    g = torch.Generator().manual_seed(1)
    epochs = list(epoch_batches(10, 4, 2, g))
    assert [len(i) for _, i in epochs] == [4, 4, 2] * 2
    assert sorted(torch.cat([i for e, i in epochs if e == 0]).tolist()) == list(range(10))
    sampled = list(sampled_batches(5, 8, 3, g))
    assert len(sampled) == 3 and all(len(i) == 8 and int(i.max()) < 5 for _, i in sampled)
