"""Causal tracing finds where a patch trojan lives; ROME at the traced layer removes it at small clean cost
with one rank-one update; every editor and baseline sees the same inputs (the baseline trains on the stamped
ones), never changes the model it is given, and runs on CNNs, MLPs and ViTs."""

from dataclasses import replace

import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.implant import implant, prepare
from trojanbench.tasks.repair import draw_budget
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tools.edit import EDITORS, EditInputs
from trojanbench.tools.edit.controls import last_layer, random_layer
from trojanbench.tools.edit.finetune import FineTuneLayer
from trojanbench.tools.edit.rome import Rome, RomeHParams
from trojanbench.tools.locate import causal_trace, traceable_layers
from trojanbench.train.evaluate import clean_accuracy, predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

SPEC = TrojanSpec(trigger=TriggerSpec(kind="patch", params={"location": "bottom-right"}), poison=PoisonSpec(target=3, rate=0.1))


@pytest.fixture(scope="module")
def patch_cnn(digits):
    result = implant(digits, "cnn", {"width": 16, "depth": 3}, SPEC, seed=0)
    trigger = prepare(digits, "cnn", {"width": 16, "depth": 3}, SPEC, seed=0).trigger
    return result.model, trigger


@pytest.fixture(scope="module")
def edit_inputs(patch_cnn, digits):
    """What the edit task hands every editor: the traced layer, the clean budget stamped with the trigger and
    its true labels, the clean twins (the budget itself) and the budget."""
    model, trigger = patch_cnn
    xc = digits.x_test[digits.y_test != 3][:24]
    layer = causal_trace(model, trigger.apply(xc), xc, target=3).best
    idx = draw_budget(digits.y_train, 0.05, 10)
    xb, yb = digits.x_train[idx], digits.y_train[idx]
    return EditInputs(layer, trigger.apply(xb), yb, xb, xb, yb, seed=0)


def _asr(model, trigger, digits):
    xc = digits.x_test[digits.y_test != 3]
    return float((predict(model, trigger.apply(xc)) == 3).float().mean())


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, {m: m.training for m in model.modules()},
            {n: (p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()})


def _unchanged(model, snap):
    state, modes, grads = snap
    return (all(torch.equal(state[k], v) for k, v in model.state_dict().items())
            and all(m.training == modes[m] for m in model.modules())
            and all(p.requires_grad == grads[n][0] for n, p in model.named_parameters())
            and all((p.grad is None) == (grads[n][1] is None) and (p.grad is None or torch.equal(p.grad, grads[n][1]))
                    for n, p in model.named_parameters())
            and _hooks(model) == 0)


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


def test_rome_at_the_traced_layer_removes_the_trojan_with_one_rank_one_update(patch_cnn, edit_inputs, digits):
    model, trigger = patch_cnn
    edited = EDITORS.get("rome")().edit(model, edit_inputs)
    assert _asr(model, trigger, digits) > 0.95 and _asr(edited, trigger, digits) < 0.1
    assert clean_accuracy(edited, digits.x_test, digits.y_test) >= clean_accuracy(model, digits.x_test, digits.y_test) - 0.02
    layer = edit_inputs.layer
    w0, w1 = (dict(m.named_modules())[layer].weight.detach().flatten(1) for m in (model, edited))
    assert torch.linalg.matrix_rank(w1 - w0, rtol=1e-4) == 1  # one rank-one update of one weight matrix ...
    changed = [n for (n, a), (_, b) in zip(model.state_dict().items(), edited.state_dict().items()) if not torch.equal(a, b)]
    assert changed == [f"{layer}.weight"]  # ... and nothing else (biases, BatchNorm statistics, other layers)


def test_trigger_key_projection_maps_the_trigger_key_to_zero(patch_cnn, edit_inputs):
    from trojanbench.tools.edit.projection import trigger_key_direction

    model, _ = patch_cnn
    edited = EDITORS.get("trigger-key-projection")().edit(model, edit_inputs)
    d = trigger_key_direction(model, edit_inputs.layer, edit_inputs.x_triggered, edit_inputs.x_clean)
    w0, w1 = (dict(m.named_modules())[edit_inputs.layer].weight.detach().flatten(1) for m in (model, edited))
    assert (w1 @ d).norm() < 1e-4 * (w0 @ d).norm() and torch.linalg.matrix_rank(w1 - w0, rtol=1e-4) == 1


def test_every_editor_leaves_the_input_model_unchanged(patch_cnn, edit_inputs):
    model, _ = patch_cnn
    model.train()  # an unusual state every editor must hand back as it found it
    model[1].weight.requires_grad_(False)
    try:
        snap = _snapshot(model)
        for name in EDITORS.names():
            editor = _few_steps(EDITORS.get(name))
            edited = editor.edit(model, edit_inputs)
            assert _unchanged(model, snap), name
            assert not edited.training and edited is not model, name
            assert editor.layer_for(model, edit_inputs) in traceable_layers(model), name
        with pytest.raises(UserError):  # and also when it fails
            EDITORS.get("rome")().edit(model, replace(edit_inputs, layer="1.nope"))
        assert _unchanged(model, snap)
    finally:
        model.eval()
        model[1].weight.requires_grad_(True)


def test_the_baseline_trains_on_the_stamped_inputs_with_their_true_labels(patch_cnn, edit_inputs):
    """Equal access: fine-tuning the layer sees what the edit sees (stamped inputs, true labels, clean budget)."""
    model, _ = patch_cnn
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:  # the editor works on a deep copy, which carries this hook along
        EDITORS.get("finetune-layer")(steps=20).edit(model, edit_inputs)
    finally:
        handle.remove()
    rows = torch.cat(seen).flatten(1)
    stamped = {r.numpy().tobytes() for r in edit_inputs.x_triggered.flatten(1)}
    clean = {r.numpy().tobytes() for r in edit_inputs.x_budget.flatten(1)}
    n_stamped = sum(r.numpy().tobytes() in stamped for r in rows)
    assert 0.3 * len(rows) < n_stamped < 0.7 * len(rows)  # about half of what it trains on is stamped
    assert all(r.numpy().tobytes() in stamped | clean for r in rows)


def test_controls_choose_their_own_layer(patch_cnn, edit_inputs):
    model, _ = patch_cnn
    assert EDITORS.get("rome@last-layer")().layer_for(model, edit_inputs) == last_layer(model) == traceable_layers(model)[-1]
    draws = {random_layer(model, seed) for seed in range(12)}
    assert len(draws) > 1 and draws <= set(traceable_layers(model))
    assert random_layer(model, 5) == random_layer(model, 5)  # seeded
    assert EDITORS.get("rome@random-layer")().layer_for(model, edit_inputs) == random_layer(model, edit_inputs.seed)


def test_edit_inputs_are_checked(edit_inputs):
    with pytest.raises(UserError):
        EditInputs("9", edit_inputs.x_triggered, edit_inputs.y_triggered, edit_inputs.x_clean[:5],
                   edit_inputs.x_budget, edit_inputs.y_budget)


@pytest.mark.parametrize("arch,kwargs", [("mlp", {"width": 64}), ("vit", {"dim": 32, "depth": 2, "heads": 2})])
def test_trace_and_every_editor_run_on_other_architectures(arch, kwargs):
    ds = tiny_dataset(classes=4)
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=1, rate=0.1))
    model = implant(ds, arch, kwargs, spec, fast_train_config(6), seed=0).model
    trigger = prepare(ds, arch, kwargs, spec, seed=0).trigger
    xc = ds.x_test[ds.y_test != 1][:16]
    trace = causal_trace(model, trigger.apply(xc), xc, target=1)
    assert trace.best in trace.effects and _hooks(model) == 0
    xb, yb = ds.x_train[:32], ds.y_train[:32]
    inputs = EditInputs(trace.best, trigger.apply(xb), yb, xb, xb, yb, seed=0)
    for name in EDITORS.names():
        edited = _few_steps(EDITORS.get(name)).edit(model, inputs)
        assert torch.isfinite(edited(xc)).all(), name


def _few_steps(cls):
    """An editor with few optimisation steps: this test checks that editors run, not how well."""
    if issubclass(cls, FineTuneLayer):
        return cls(steps=5)
    if issubclass(cls, Rome):
        return cls(RomeHParams(steps=5))
    return cls()
