"""Causal tracing finds where a patch trojan lives; one rank-one update there removes it at no clean cost;
both work on CNNs, MLPs and ViTs and leave the input model and its hooks untouched."""

import pytest
import torch

from trojanbench.implant import implant, prepare
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tasks.repair import draw_budget
from trojanbench.tools.edit import rank_one_edit
from trojanbench.tools.locate import causal_trace, traceable_layers
from trojanbench.train.evaluate import clean_accuracy, predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

SPEC = TrojanSpec(trigger=TriggerSpec(kind="patch", params={"location": "bottom-right"}), poison=PoisonSpec(target=3, rate=0.1))


@pytest.fixture(scope="module")
def patch_cnn(digits):
    result = implant(digits, "cnn", {"width": 16, "depth": 3}, SPEC, seed=0)
    trigger = prepare(digits, "cnn", {"width": 16, "depth": 3}, SPEC, seed=0).trigger
    return result.model, trigger


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_causal_trace_points_at_the_patch_and_cleans_up(patch_cnn, digits):
    model, trigger = patch_cnn
    xc = digits.x_test[digits.y_test != 3][:24]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace = causal_trace(model, trigger.apply(xc), xc, target=3)
    assert _hooks(model) == 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(trace.effects) == set(traceable_layers(model)) and trace.p_triggered > 0.9 > trace.p_clean
    best = trace.effects[trace.best]
    assert best.dim() == 2 and best.max() >= 0.5
    r, c = divmod(int(best.argmax()), best.shape[1])
    assert r >= best.shape[0] // 2 - 1 and c >= best.shape[1] // 2 - 1  # the window at the bottom-right corner
    assert best[0, 0] < 0.1  # the far corner carries nothing


def test_one_rank_one_edit_of_the_traced_layer_removes_the_trojan(patch_cnn, digits):
    model, trigger = patch_cnn
    xc = digits.x_test[digits.y_test != 3]
    budget = digits.x_train[draw_budget(digits.y_train, 0.05, 10)]
    layer = causal_trace(model, trigger.apply(xc[:24]), xc[:24], target=3).best
    edited = rank_one_edit(model, layer, trigger.apply(budget), budget, budget)
    asr = lambda m: float((predict(m, trigger.apply(xc)) == 3).float().mean())  # noqa: E731
    assert asr(model) > 0.95 and asr(edited) < 0.3  # the floor is a 50% drop
    assert clean_accuracy(edited, digits.x_test, digits.y_test) >= clean_accuracy(model, digits.x_test, digits.y_test) - 0.02
    w0, w1 = (dict(m.named_modules())[layer].weight.detach().flatten(1) for m in (model, edited))
    assert torch.linalg.matrix_rank(w1 - w0, rtol=1e-4) == 1  # one rank-one update, nothing else changed
    assert all(torch.equal(a, b) for (n, a), (_, b) in zip(model.named_parameters(), edited.named_parameters())
               if not n.startswith(layer + "."))


@pytest.mark.parametrize("arch,kwargs", [("mlp", {"width": 64}), ("vit", {"dim": 32, "depth": 2, "heads": 2})])
def test_trace_and_edit_run_on_other_architectures(arch, kwargs):
    ds = tiny_dataset(classes=4)
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=1, rate=0.1))
    model = implant(ds, arch, kwargs, spec, fast_train_config(6), seed=0).model
    trigger = prepare(ds, arch, kwargs, spec, seed=0).trigger
    xc = ds.x_test[ds.y_test != 1][:16]
    trace = causal_trace(model, trigger.apply(xc), xc, target=1)
    assert trace.best in trace.effects and _hooks(model) == 0
    edited = rank_one_edit(model, trace.best, trigger.apply(ds.x_train[:64]), ds.x_train[:64], ds.x_train[:64])
    assert torch.isfinite(edited(xc)).all()
