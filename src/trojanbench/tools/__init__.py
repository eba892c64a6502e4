"""Tool families, each a registry of small classes with one verb (see DESIGN.md).

Every tool class declares, besides its verb:
- `version`: bumped when its behaviour changes (stored on every result row);
- `is_baseline`: a cheap reference the other tools of its board must beat;
- `paper`: the citation of the method it implements ("" for the project's own baselines);
- `fidelity`: "faithful" when it is a faithful port of that paper, otherwise "adapted: <what differs>"; for
  baselines "baseline: <what it is>". A paper's name goes on a tool only when the port is faithful;
- `modalities`: the inputs it supports ("image", "text").
`trojanbench tools list` and the report show `paper` and `fidelity` for every registered tool.

A tool never changes the caller's model: one that runs the model without training it does so inside
`evaluating(model)` (eval mode for the block, every submodule's mode restored after). Each family's verb check
holds it to that (`left_as_it_was`; the audit runs every detector on one model).
"""

from __future__ import annotations

import functools
import operator
from contextlib import contextmanager
from typing import Callable, ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..utils import evaluating, frozen  # noqa: F401  (for tools: `from trojanbench.tools import evaluating, frozen`)

FAMILIES = ("detect", "detect-samples", "attribute", "synthesize", "repair", "edit")


class ToolInfo:
    """The metadata every tool declares (class attributes; see the module docstring)."""

    version: ClassVar[str] = "1"
    is_baseline: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    fidelity: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    # (verb, check): set on each family's base class; applied to the verb of every subclass (`check_verb`), so what
    # a tool is given and returns is checked whichever class implements it
    verb_check: ClassVar[tuple[str, Callable] | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.verb_check is not None:
            check_verb(cls, *cls.verb_check)


def check_target(target, num_classes: int, who: str) -> None:
    """A one-line error unless `target` is a class label of the model (an int in [0, num_classes))."""
    try:
        label = None if isinstance(target, bool) else operator.index(target)  # int, numpy or 0-d torch integers
    except TypeError:
        label = None
    if label is None or not 0 <= label < num_classes:
        raise UserError(f"{who}: target {target!r} is not a class label of this model (0 to {num_classes - 1})")


def check_verb(cls: type, verb: str, checked) -> None:
    """Wrap the `verb` that `cls` resolves to (its own, or one it inherits, from a mixin too) in
    `checked(self, method, *args, **kw)`, once: how a tool family checks what its verb is given and what it returns
    whichever subclass implements it (called from `ToolInfo.__init_subclass__` with the family's `verb_check`), so a
    plug-in's bad output is a one-line error naming it, not a wrong number or a traceback deep in the scoring."""
    method = next((k.__dict__[verb] for k in cls.__mro__ if verb in k.__dict__), None)
    if method is None or getattr(method, "checked", False) or getattr(method, "__isabstractmethod__", False):
        return

    @functools.wraps(method)
    def verb_checked(self, *args, **kw):
        return checked(self, method, *args, **kw)

    verb_checked.checked = True
    setattr(cls, verb, verb_checked)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal tensors, NaN included (a model that came with a NaN weight is not one a tool changed)."""
    return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and (
        torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))


@contextmanager
def left_as_it_was(model: nn.Module, who: str, advice: str):
    """The block leaves `model` as it found it (every parameter and buffer, requires_grad, every submodule's mode),
    or a one-line error naming `who` (`advice`: what the tool must do instead). A tool that changed the caller's
    model in place had every tool after it (an audit runs them all on one model) measure the model it changed."""
    if not isinstance(model, nn.Module):  # not a model: the verb's own checks say what is wrong
        yield
        return
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    yield
    now = model.state_dict(keep_vars=True)
    changed = [k for k, v in state.items() if k not in now or not _same(now[k].detach(), v)]
    if changed or flags != ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]):
        what = repr(changed[0]) if changed else "train/eval modes or requires_grad"
        raise UserError(f"{who} changed the model it was given ({what}); {advice}")


def checked_copy(family: str):
    """The `check_verb` check of a verb that returns a new model (`repair`, `edit`): what it returns is a model
    (an nn.Module), and the model it was given, the first argument, is left as it was (`left_as_it_was`): a tool
    that changed it in place, or returned it, is a one-line error naming the tool rather than a board that
    measured the wrong model."""

    def checked(self, method, model, *args, **kw):
        who = f"{family} {type(self).__name__}"
        with left_as_it_was(model, who, "it must change a copy and return that"):
            out = method(self, model, *args, **kw)
            if not isinstance(out, nn.Module):
                raise UserError(f"{who} returned {type(out).__name__}, not a model (an nn.Module)")
            if out is model:
                raise UserError(f"{who} returned the model it was given; it must change a copy and return that")
        return out

    return checked


# what a tool that only reads the model (a detector, a synthesizer) must do instead of changing it
READ_ONLY = "run the model inside evaluating(model) or frozen(model) (from trojanbench.tools) and train only a copy"


def tool_registries() -> dict[str, object]:
    """Every tool family's registry, by family name (imports the families, which registers their tools)."""
    from .attribute import ATTRIBUTORS
    from .detect import DETECTORS, SAMPLE_DETECTORS
    from .edit import EDITORS
    from .repair import REPAIRERS
    from .synthesize import SYNTHESIZERS

    return {"detect": DETECTORS, "detect-samples": SAMPLE_DETECTORS, "attribute": ATTRIBUTORS,
            "synthesize": SYNTHESIZERS, "repair": REPAIRERS, "edit": EDITORS}
