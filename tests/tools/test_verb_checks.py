"""Every tool family's verb checks what it is given and what it returns (`tools.check_verb`), whichever class
implements it, so a plug-in's bad output or a caller's bad images are a one-line error naming the tool, never a
wrong number on a board (a NaN detector score made the board's AUROC nan) or an IndexError deep in the scoring.
Also: the clean context checks its images, and model cards write out the architecture's defaults."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from trojanbench.errors import DataWarning, UserError
from trojanbench.implant import prepare
from trojanbench.models import build_model, with_defaults
from trojanbench.testing import tiny_dataset
from trojanbench.tools.attribute import Attributor
from trojanbench.tools.detect import DetectContext, Detection, Detector, SampleDetector
from trojanbench.tools.edit import EditInputs, Editor
from trojanbench.tools.repair import RepairContext, Repairer
from trojanbench.tools.synthesize import Stamp, Synthesizer

DS = tiny_dataset(n_train=32, n_test=16)


def ctx() -> DetectContext:
    return DetectContext(DS.x_test, DS.y_test, DS.num_classes)


def model() -> nn.Module:
    return prepare(DS, "cnn", {"width": 4, "depth": 1}).model


class Returns(SampleDetector):
    """A plug-in sample detector that returns whatever it is told to."""

    def __init__(self, make):
        self.make = make

    def suspicion(self, model, x, y, ctx):
        return self.make(x)


@pytest.mark.parametrize("make, message", [
    (lambda x: torch.zeros(len(x) - 1), r"returned scores of shape \(31,\) for 32 samples"),
    (lambda x: torch.zeros(len(x), 2), r"returned scores of shape \(32, 2\)"),
    (lambda x: torch.full((len(x),), float("nan")), "returned NaN for 32 of 32 samples"),
    (lambda x: "high", "returned str, not one score per sample"),
])
def test_a_sample_detectors_bad_scores_are_one_line_errors_naming_it(make, message):
    with pytest.raises(UserError, match=f"sample detector Returns.*{message}"):
        Returns(make).suspicion(model(), DS.x_train, DS.y_train, ctx())


def test_sample_scores_may_be_an_array_or_infinite():
    """One score per sample as numpy comes back a tensor; ±inf ranks a sample first or last and is kept."""
    s = Returns(lambda x: np.r_[np.inf, np.zeros(len(x) - 1)]).suspicion(model(), DS.x_train, DS.y_train, ctx())
    assert torch.is_tensor(s) and s.shape == (32,) and s[0] == float("inf")


def test_a_sample_detector_refuses_images_outside_the_unit_range():
    normalised = (DS.x_train - 0.5) / 0.25
    with pytest.raises(UserError, match=r"sample detector Returns: images have values in \[-1\.9.*undo any normalisation"):
        Returns(lambda x: torch.zeros(len(x))).suspicion(model(), normalised, DS.y_train, ctx())
    with pytest.raises(UserError, match="one length"):
        Returns(lambda x: torch.zeros(len(x))).suspicion(model(), DS.x_train, DS.y_train[:3], ctx())


class Says(Detector):
    def __init__(self, answer):
        self.answer = answer

    def detect(self, model, ctx):
        return self.answer


@pytest.mark.parametrize("answer, message", [
    (Detection(float("nan")), "returned the score NaN"),
    (Detection("high"), "returned the score 'high', not a number"),
    (0.7, "returned float, not a Detection"),
    (Detection(0.5, target_label=9), "target 9 is not a class label of this model"),
    (Detection(0.5, mask=torch.ones(3, 3)), r"returned a mask \(3, 3\); a trigger footprint is \[H, W\] = \(16, 16\)"),
    (Detection(0.5, mask=torch.full((16, 16), 3.0)), r"returned a mask \(16, 16\); .* with values in \[0, 1\]"),
])
def test_a_detectors_bad_answer_is_a_one_line_error_naming_it(answer, message):
    with pytest.raises(UserError, match=f"detector Says.*{message}"):
        Says(answer).detect(model(), ctx())


def test_a_detectors_score_is_made_a_float_and_a_subclass_is_checked_once():
    d = Says(Detection(np.float32(2.5), target_label=np.int64(1))).detect(model(), ctx())
    assert type(d.score) is float and d.score == 2.5 and type(d.target_label) is int
    w = torch.tensor(0.25, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a score with a gradient is taken without torch's warning
        assert Says(Detection(w * 2)).detect(model(), ctx()).score == 0.5

    class Louder(Says):
        def detect(self, model, ctx):
            d = super().detect(model, ctx)
            return Detection(d.score * 2)

    assert Louder(Detection(1.0)).detect(model(), ctx()).score == 2.0
    assert Louder.detect.checked and Says.detect.checked


def test_a_verb_inherited_from_a_mixin_is_checked_too():
    """A plug-in may take its verb from a class outside the family (a mixin); it is checked all the same."""

    class NaNMixin:
        def detect(self, model, ctx):
            return Detection(float("nan"))

    class ShortMixin:
        def suspicion(self, model, x, y, ctx):
            return torch.zeros(3)

    class MixedDetector(NaNMixin, Detector):
        pass

    class MixedSamples(ShortMixin, SampleDetector):
        pass

    with pytest.raises(UserError, match="detector MixedDetector returned the score NaN"):
        MixedDetector().detect(model(), ctx())
    with pytest.raises(UserError, match=r"sample detector MixedSamples returned scores of shape \(3,\) for 32"):
        MixedSamples().suspicion(model(), DS.x_train, DS.y_train, ctx())
    assert not getattr(NaNMixin.detect, "checked", False)  # the mixin itself is left as it is


class Paints(Attributor):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def attribute(self, model, x, target):
        return self.make(x)


@pytest.mark.parametrize("make, message", [
    (lambda x: torch.rand(len(x), 8, 8), r"returned maps \(16, 8, 8\); it must return \[16, 16, 16\]"),
    (lambda x: -torch.ones(len(x), 16, 16), r"returned maps with values in \[-1, -1\]"),
    (lambda x: torch.full((len(x), 16, 16), float("nan")), "returned maps with values"),
])
def test_an_attributors_bad_maps_are_one_line_errors_naming_it(make, message):
    with pytest.raises(UserError, match=f"attributor Paints {message}"):
        Paints(make).attribute(model(), DS.x_test, 1)


def test_an_attributor_refuses_images_outside_the_unit_range_and_mismatched_targets():
    ok = Paints(lambda x: torch.zeros(len(x), 16, 16))
    with pytest.raises(UserError, match=r"attributor Paints: images have values in \[0.*1\.3.*scale them to \[0, 1\]"):
        ok.attribute(model(), DS.x_test * 2, 1)
    with pytest.raises(UserError, match=r"\(3,\) targets for 16 samples"):
        ok.attribute(model(), DS.x_test, torch.tensor([1, 2, 3]))
    with pytest.raises(UserError, match=r"attributor Paints: target 99 is not a class label of this model \(0 to 3\)"):
        ok.attribute(model(), DS.x_test, 99)
    with pytest.raises(UserError, match="target -1 is not a class label"):
        ok.attribute(model(), DS.x_test, torch.cat([DS.y_test[:-1], torch.tensor([-1])]))
    assert ok.attribute(model(), DS.x_test, DS.y_test).shape == (16, 16, 16)


def test_a_synthesizer_that_returns_no_stamp_is_a_one_line_error_naming_it():
    """A pattern tensor where a Stamp belongs was an AttributeError ('apply') deep in the synthesize track."""

    class Draws(Synthesizer):
        def synthesize(self, model, target, ctx):
            return torch.rand(1, 16, 16)

    with pytest.raises(UserError, match="synthesizer Draws returned Tensor, not a Stamp or TriggerStamp"):
        Draws().synthesize(model(), 1, ctx())


def zero_in_place(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return m


class Fixes(Repairer):
    def __init__(self, make):
        self.make = make

    def repair(self, model, x_clean, y_clean, ctx):
        return self.make(model)


class Edits(Editor):
    def __init__(self, make):
        self.make = make

    def edit(self, model, inputs):
        return self.make(model)


@pytest.mark.parametrize("make, message", [
    (lambda m: None, r"returned NoneType, not a model \(an nn.Module\)"),
    (lambda m: m, "returned the model it was given"),
    (lambda m: zero_in_place(m) and copy.deepcopy(m), r"changed the model it was given \('1.weight'\)"),
    (lambda m: m.eval() and copy.deepcopy(m), r"changed the model it was given \(train/eval modes"),
])
def test_a_repairer_or_editor_that_returns_no_new_model_or_changes_the_callers_is_a_one_line_error(make, message):
    """What a repairer or an editor returns is a new model, and the caller's is left as it was; a plug-in that
    worked in place was scored on the model it had changed (and the caller's model was lost)."""
    inputs = EditInputs("1", DS.x_test, DS.y_test, DS.x_test, DS.x_train, DS.y_train)
    for call, who in ((lambda m: Fixes(make).repair(m, DS.x_train, DS.y_train, RepairContext(DS.num_classes)),
                       "repairer Fixes"), (lambda m: Edits(make).edit(m, inputs), "editor Edits")):
        m = model().train()
        with pytest.raises(UserError, match=f"{who} {message}"):
            call(m)
    good = model().train()
    assert isinstance(Fixes(copy.deepcopy).repair(good, DS.x_train, DS.y_train, RepairContext(DS.num_classes)), nn.Module)


class CarelessDetector(Detector):
    """A plug-in that does `change` to the model it was given (forgot `evaluating`, pruned in place, ...)."""

    def __init__(self, change):
        self.change = change

    def detect(self, model, ctx):
        self.change(model)
        return Detection(0.5)


class CarelessSamples(SampleDetector):
    def __init__(self, change):
        self.change = change

    def suspicion(self, model, x, y, ctx):
        self.change(model)
        return torch.zeros(len(x))


class CarelessSynthesizer(Synthesizer):
    def __init__(self, change):
        self.change = change

    def synthesize(self, model, target, ctx):
        self.change(model)
        return Stamp(torch.zeros(1, 16, 16), torch.zeros(16, 16))


def run_forward_in_train_mode(m: nn.Module) -> None:
    with torch.no_grad():
        m.train()(DS.x_test)  # BatchNorm's running statistics move, and the model stays in train mode


@pytest.mark.parametrize("change, message", [
    (run_forward_in_train_mode, r"'.*running_mean'"),
    (lambda m: m.train(), "train/eval modes or requires_grad"),
    (lambda m: zero_in_place(m), "'1.weight'"),
    (lambda m: [p.requires_grad_(False) for p in m.parameters()], "train/eval modes or requires_grad"),
])
def test_a_detector_or_synthesizer_that_changes_the_callers_model_is_a_one_line_error(change, message):
    """The audit runs every detector, then the synthesizers, on one model: a plug-in that left it in train mode or
    changed a weight had every tool after it score another model (entropy's score of one audited model moved
    eightfold after such a detector), with nothing said."""
    calls = (("detector CarelessDetector", lambda m, c: CarelessDetector(c).detect(m, ctx())),
             ("sample detector CarelessSamples", lambda m, c: CarelessSamples(c).suspicion(m, DS.x_train, DS.y_train, ctx())),
             ("synthesizer CarelessSynthesizer", lambda m, c: CarelessSynthesizer(c).synthesize(m, 1, ctx())))
    for who, call in calls:
        with pytest.raises(UserError, match=fr"{who} changed the model it was given \({message}\); run the model inside"):
            call(model().eval(), change)
        m = model().eval()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        call(m, lambda m: None)  # a tool that only reads the model passes, and the model is as it was
        assert not m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_the_clean_context_checks_its_images_and_labels():
    with pytest.raises(UserError, match=r"DetectContext x_clean have values in \[-0\.9.*pixels must be in \[0, 1\]"):
        DetectContext(DS.x_test * 2 - 1, DS.y_test, DS.num_classes)
    with pytest.raises(UserError, match="16 clean samples but 3 labels"):
        DetectContext(DS.x_test, DS.y_test[:3], DS.num_classes)
    with pytest.raises(UserError, match="classes 0 to 1"):
        DetectContext(DS.x_test, DS.y_test, 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        c = DetectContext((DS.x_test * 255).round().to(torch.uint8), DS.y_test, DS.num_classes)
    assert c.x_clean.dtype == torch.float32 and float(c.x_clean.max()) <= 1
    assert any(issubclass(w.category, DataWarning) for w in seen)
    with pytest.raises(UserError, match=r"x_clean is \(16, 16, 16\); images are \[N, C, H, W\].*x\[:, None\]"):
        DetectContext(DS.x_test[:, 0], DS.y_test, DS.num_classes)
    with pytest.raises(UserError, match="y_clean must be integer class labels"):
        DetectContext(DS.x_test, DS.y_test + 0.5, DS.num_classes)
    with pytest.raises(UserError, match="y_clean must be integer class labels"):
        DetectContext(DS.x_test, DS.y_test[:, None], DS.num_classes)
    tokens = torch.randint(0, 50, (4, 6))  # token ids pass as they are
    assert DetectContext(tokens, torch.zeros(4, dtype=torch.long), 2).x_clean is tokens


def test_a_card_writes_out_the_architectures_defaults():
    """A card rebuilds its model exactly even if a default in the code changes later: width and depth are written
    out though the caller gave neither; what the caller gave wins."""
    kwargs = prepare(DS, "cnn").arch_kwargs
    assert kwargs["width"] == 32 and kwargs["depth"] == 3 and kwargs["in_channels"] == 1
    mlp = prepare(DS, "mlp", {"width": 5}).arch_kwargs
    assert (mlp["width"], mlp["depth"], mlp["init"]) == (5, 2, "default")
    assert with_defaults("cnn", {"width": 4})["width"] == 4
    m = build_model("cnn", **kwargs)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in prepare(DS, "cnn").model.parameters())
