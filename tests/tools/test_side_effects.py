"""Tools never change the caller's model. For every registered tool of every family (detectors, sample
detectors, attribution methods, synthesizers, repairers, editors): a small model in the middle of fine-tuning goes
in (training mode, its first layer in eval mode with frozen parameters), and after the call every submodule's mode, every parameter (values, layout, requires_grad) and every buffer
(BatchNorm statistics included) is what it was. Repairers and editors return a new model; the one they were
given stays as it was. Each tool runs with the smallest budget it accepts, so the whole file takes seconds. A tool
that works on images runs on a tiny CNN; one that works on text only, on a tiny text transformer."""

from __future__ import annotations

import pytest
import torch

from trojanbench.config import TrainConfig
from trojanbench.implant import implant
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tools import tool_registries
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.detect.jumbo import JumboConfig
from trojanbench.tools.detect.mntd import MetaConfig
from trojanbench.tools.detect.shadow import ShadowConfig
from trojanbench.tools.edit import EditInputs
from trojanbench.tools.edit.rome import RomeHParams
from trojanbench.tools.locate import traceable_layers
from trojanbench.tools.repair import RepairContext
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec, make_trigger

ARCH = {"width": 8, "depth": 2}
TARGET = 1
PATCH = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=TARGET, rate=0.1))


def tiny_params(tmp) -> dict[tuple[str, str], dict]:
    """The smallest budgets the slow tools accept (family, name) -> constructor arguments."""
    shadows, meta = JumboConfig(train=2, val=2, epochs=1), MetaConfig(queries=2, epochs=1)
    steps = {"steps": 2}
    return {
        ("detect", "mntd"): {"shadows": shadows, "meta": meta, "cache": tmp},
        ("detect", "mntd-oc"): {"shadows": shadows, "meta": meta, "cache": tmp},
        ("detect", "neural-cleanse"): {"steps": 2, "clean_images": 16},
        ("detect", "output-stats-meta"): {"queries": 4, "epochs": 2, "shadow": ShadowConfig(models=2, epochs=1),
                                          "cache": tmp},
        ("detect-samples", "activation-clustering"): {"retrain": TrainConfig(epochs=1, batch_size=64),
                                                      "min_class_size": 4, "components": 2},
        ("detect-samples", "strip"): {"overlays": 4},
        ("synthesize", "adversarial-patch"): {"steps": 2, "starts": 1},
        ("synthesize", "cppn-fv"): {"steps": 2, "batch_size": 2},
        ("synthesize", "feature-adversary"): {"steps": 2, "ae_steps": 2, "places": 1},
        ("synthesize", "fourier-fv"): {"steps": 2, "batch_size": 2},
        ("synthesize", "natural-patch-search"): {"bank": 16, "carriers": 2, "k": 2, "patch_steps": 2, "starts": 1},
        ("synthesize", "regularised-inversion"): steps,
        ("synthesize", "trigger-inversion"): steps,
        ("repair", "attention-distill"): {"teacher_epochs": 1, "epochs": 1},
        ("repair", "fine-pruning"): {"epochs": 1},
        ("repair", "finetune"): {"epochs": 1, "min_steps": 1},
        ("repair", "finetune-matched"): steps,
        ("repair", "ft-sam"): steps,
        ("repair", "lat"): {"steps": 2, "pgd_steps": 1},
        ("repair", "anp"): {"iterations": 2},
        ("repair", "i-bau"): {"steps": 2, "rounds": 1, "inner_steps": 1, "fixed_point_iters": 2},
        ("repair", "kd-student"): steps,
        ("repair", "retrain"): steps,
        ("repair", "self-distill"): steps,
        ("edit", "finetune-layer"): steps,
        ("edit", "finetune-layer@last-layer"): steps,
        ("edit", "finetune-layer@random-layer"): steps,
        ("edit", "rome"): {"hparams": RomeHParams(steps=2)},
        ("edit", "rome@last-layer"): {"hparams": RomeHParams(steps=2)},
        ("edit", "rome@random-layer"): {"hparams": RomeHParams(steps=2)},
    }


TOOLS = [pytest.param(family, name, id=f"{family}:{name}")
         for family, registry in tool_registries().items() for name in registry.names()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and two spin-wait on a busy 2-core machine
    try:
        yield {"image": make_env(tmp_path_factory), "text": make_text_env(tmp_path_factory)}
    finally:
        torch.set_num_threads(threads)


def env_for(family: str, name: str, envs: dict) -> dict:
    """The image setting for a tool that works on images, the text one for a text-only tool."""
    return envs["image" if "image" in tool_registries()[family].get(name).modalities else "text"]


def make_text_env(tmp_path_factory) -> dict:
    from trojanbench.data.sst2 import TRIGGER_WORDS, TokenDataset, build_vocab, synthetic_sentences

    sentences, labels = synthetic_sentences(160, seed=0)
    words = [s.split() for s in sentences]
    vocab = build_vocab(words, 60, reserved=TRIGGER_WORDS)
    x, y = vocab.encode(words, 16), torch.tensor(labels)
    ds = TokenDataset("synthetic", x[:128], y[:128], x[128:], y[128:], ["negative", "positive"], vocab)
    spec = TrojanSpec(trigger=TriggerSpec(kind="rare-token"), poison=PoisonSpec(target=TARGET, rate=0.1))
    cfg = TrainConfig(epochs=2, optimizer="adamw", lr=3e-3, augment=False, channels_last=False)
    arch = {"dim": 16, "depth": 1, "heads": 2, "hidden": 32}
    audited = implant(ds, "text-transformer", arch, spec, cfg, seed=0)
    others = [implant(ds, "text-transformer", arch, t, cfg, seed=s).model for s, t in ((1, None), (2, spec))]
    ctx = DetectContext(ds.x_test[:32], ds.y_test[:32], ds.num_classes, seed=0, prior=[spec.trigger])
    trigger = make_trigger(audited.card.trojan["trigger"], ds.input_shape)
    return {"ds": ds, "card": audited.card, "state": audited.model.state_dict(), "others": others, "ctx": ctx,
            "trigger": trigger, "x_budget": ds.x_train[:32], "y_budget": ds.y_train[:32],
            "tmp": tmp_path_factory.mktemp("text-tools")}


def make_env(tmp_path_factory) -> dict:
    ds = tiny_dataset(n_train=128, n_test=64, classes=4, seed=0)
    cfg = fast_train_config(2)
    audited = implant(ds, "cnn", ARCH, PATCH, cfg, seed=0)
    others = [implant(ds, "cnn", ARCH, spec, cfg, seed=s).model for s, spec in ((1, None), (2, PATCH))]
    ctx = DetectContext(ds.x_test[:32], ds.y_test[:32], ds.num_classes, seed=0, prior=[PATCH.trigger])
    trigger = make_trigger(audited.card.trojan["trigger"], ds.image_shape)
    x_budget, y_budget = ds.x_train[:32], ds.y_train[:32]
    return {"ds": ds, "card": audited.card, "state": audited.model.state_dict(), "others": others, "ctx": ctx,
            "trigger": trigger, "x_budget": x_budget, "y_budget": y_budget, "tmp": tmp_path_factory.mktemp("tools")}


def snapshot(model: torch.nn.Module) -> dict:
    return {"modes": {n: m.training for n, m in model.named_modules()},
            "params": {n: (p.detach().clone(), p.stride(), p.requires_grad) for n, p in model.named_parameters()},
            "buffers": {n: (b.detach().clone(), b.stride()) for n, b in model.named_buffers()}}


def call(family: str, name: str, model: torch.nn.Module, env: dict):
    tool = tool_registries()[family].get(name)(**tiny_params(env["tmp"]).get((family, name), {}))
    ds, ctx, card = env["ds"], env["ctx"], env["card"]
    if family == "detect":
        if tool.learned:
            tool.fit(env["others"], [0, 1], ctx)
        return tool.detect(model, ctx)
    if family == "detect-samples":
        return tool.suspicion(model, ds.x_train[:64], ds.y_train[:64], ctx)
    if family == "attribute":
        x = env["trigger"].apply(ds.x_test[:4])
        return tool.fit_reference(ctx.x_clean).attribute(model, x, TARGET)
    if family == "synthesize":
        return tool.synthesize(model, TARGET, ctx)
    if family == "repair":
        rctx = RepairContext(ds.num_classes, card.arch, dict(card.arch_kwargs), dict(ds.augment), seed=0)
        repaired = tool.repair(model, env["x_budget"], env["y_budget"], rctx)
        assert repaired is not model
        return repaired
    if family == "edit":
        xb, yb = env["x_budget"], env["y_budget"]
        layer = traceable_layers(model)[0]
        inputs = EditInputs(layer=layer, x_triggered=env["trigger"].apply(xb), y_triggered=yb, x_clean=xb,
                            x_budget=xb, y_budget=yb, seed=0)
        edited = tool.edit(model, inputs)
        assert edited is not model
        return edited
    raise AssertionError(f"no call written for tool family {family!r}: add it to this test")


def mid_training(model: torch.nn.Module) -> torch.nn.Module:
    """A caller in the middle of fine-tuning: the model in training mode except its first layer with parameters
    (kept in eval mode, as one keeps BatchNorm statistics fixed), whose parameters are also frozen. A tool that
    restores one mode for the whole model, or sets every requires_grad back alike, changes it."""
    model.train()
    first = next(m for m in model.modules() if not list(m.children()) and list(m.parameters()))
    first.eval()
    for p in first.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("family, name", TOOLS)
def test_a_tool_leaves_the_callers_model_as_it_was(family, name, env):
    from trojanbench.models import build_model

    env = env_for(family, name, env)
    model = build_model(env["card"].arch, **env["card"].arch_kwargs)
    model.load_state_dict(env["state"])
    mid_training(model)  # the tool must leave neither the whole model nor the eval-mode layer otherwise
    before = snapshot(model)
    call(family, name, model, env)
    after = snapshot(model)
    changed_modes = [n or "(model)" for n, m in before["modes"].items() if after["modes"].get(n) != m]
    assert not changed_modes, f"{family}:{name} changed the train/eval mode of {changed_modes[:5]}"
    assert after["params"].keys() == before["params"].keys() and after["buffers"].keys() == before["buffers"].keys()
    for n, (value, stride, grad) in before["params"].items():
        now, now_stride, now_grad = after["params"][n]
        assert torch.equal(now, value), f"{family}:{name} changed parameter {n}"
        assert now_stride == stride, f"{family}:{name} changed the memory layout of parameter {n}"
        assert now_grad == grad, f"{family}:{name} changed requires_grad of parameter {n}"
    for n, (value, stride) in before["buffers"].items():
        assert torch.equal(after["buffers"][n][0], value), f"{family}:{name} changed buffer {n}"
        assert after["buffers"][n][1] == stride, f"{family}:{name} changed the memory layout of buffer {n}"


class Tripwire(torch.nn.Linear):
    """The model's last layer, raising on the `TRIP[0]`-th forward call (counted over every copy of the model a
    tool makes: the counter is global), as an out-of-memory error or a user's Ctrl-C would mid-forward."""

    def forward(self, x):
        CALLS[0] += 1
        if CALLS[0] == TRIP[0]:
            raise RuntimeError("tripwire")
        return super().forward(x)


CALLS, TRIP = [0], [0]


def hooks_left(model: torch.nn.Module) -> list[str]:
    """Every module of `model` (and torch's global registries) still holding a hook."""
    from torch.nn.modules import module as torch_module

    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    left = [f"{n or '(model)'}.{k}" for n, m in model.named_modules() for k in kinds if getattr(m, k, None)]
    return left + [k for k in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
                   if getattr(torch_module, k, None)]


@pytest.mark.parametrize("family, name", TOOLS)
def test_an_exception_mid_forward_leaves_no_hook_and_the_mode(family, name, env):
    """Every tool, stopped by an exception in the middle of a forward pass (early, half-way, at its last forward),
    leaves no hook on the caller's model and its train/eval mode as it was: hooks are registered by context
    managers that always remove them."""
    from trojanbench.models import build_model

    env = env_for(family, name, env)
    model = build_model(env["card"].arch, **env["card"].arch_kwargs)
    model.load_state_dict(env["state"])
    name_last = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]

    def wired():
        m = build_model(env["card"].arch, **env["card"].arch_kwargs)
        m.load_state_dict(env["state"])
        parent = m.get_submodule(name_last.rpartition(".")[0]) if "." in name_last else m
        old = m.get_submodule(name_last)
        new = Tripwire(old.in_features, old.out_features, bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        setattr(parent, name_last.rpartition(".")[2], new)
        return mid_training(m)

    CALLS[0], TRIP[0] = 0, -1
    call(family, name, wired(), env)  # count the forwards of a whole call
    total = CALLS[0]
    for trip in sorted({1, max(1, total // 2), max(1, total)}):
        CALLS[0], TRIP[0] = 0, trip
        model = wired()
        modes = {n: m.training for n, m in model.named_modules()}
        try:
            call(family, name, model, env)
        except RuntimeError as e:
            assert "tripwire" in str(e), e
        left = hooks_left(model)
        assert not left, f"{family}:{name} stopped at forward {trip} of {total} left hooks on {left[:5]}"
        changed = [n or "(model)" for n, m in model.named_modules() if m.training != modes[n]]
        assert not changed, f"{family}:{name} stopped at forward {trip} of {total} left the mode of {changed[:5]} changed"


REPAIRERS = [p for p in TOOLS if p.values[0] == "repair"]


@pytest.mark.parametrize("family, name", REPAIRERS)
def test_a_repair_of_a_partly_frozen_model_repairs_every_layer(family, name, env):
    """A caller's frozen layers (`requires_grad=False`) stayed frozen in the repaired copy, so fine-tuning left them
    as the trojan had them. The repaired model's parameters are all trainable; the caller's flags are untouched."""
    from trojanbench.models import build_model

    env = env_for(family, name, env)
    model = build_model(env["card"].arch, **env["card"].arch_kwargs)
    model.load_state_dict(env["state"])
    frozen = [n for n, _ in model.named_parameters()][:2]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    repaired = call(family, name, model, env)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == frozen
    assert [n for n, p in repaired.named_parameters() if not p.requires_grad] == [], name


def test_evaluating_gives_every_submodule_its_own_mode_back():
    """`model.train(was_training)` set one mode on every submodule: a caller who kept BatchNorm in eval mode while
    fine-tuning the rest got it back in training mode. `evaluating` restores each submodule's own mode, also
    after an exception."""
    from trojanbench.tools import evaluating

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    model.train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="mid-block"):
        with evaluating(model) as m:
            assert m is model and not any(x.training for x in model.modules())
            raise RuntimeError("mid-block")
    assert [m.training for m in model.modules()] == before == [True, True, False, True]
