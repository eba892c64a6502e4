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
`evaluating(model)` (eval mode for the block, every submodule's mode restored after).
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..utils import evaluating  # noqa: F401  (for tools: `from trojanbench.tools import evaluating`)

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


def checked_copy(family: str):
    """The `check_verb` check of a verb that returns a new model (`repair`, `edit`): what it returns is a model
    (an nn.Module), and the model it was given, the first argument, is left as it was (every parameter and buffer,
    requires_grad, every submodule's mode): a tool that changed it in place, or returned it, is a one-line error
    naming the tool rather than a board that measured the wrong model."""

    def checked(self, method, model, *args, **kw):
        who = f"{family} {type(self).__name__}"
        state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        flags = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
        out = method(self, model, *args, **kw)
        if not isinstance(out, nn.Module):
            raise UserError(f"{who} returned {type(out).__name__}, not a model (an nn.Module)")
        if out is model:
            raise UserError(f"{who} returned the model it was given; it must change a copy and return that")
        now = model.state_dict(keep_vars=True)
        changed = [k for k, v in state.items() if k not in now or not torch.equal(now[k].detach(), v)]
        if changed or flags != ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]):
            what = repr(changed[0]) if changed else "train/eval modes or requires_grad"
            raise UserError(f"{who} changed the model it was given ({what}); it must change a copy and return that")
        return out

    return checked


def tool_registries() -> dict[str, object]:
    """Every tool family's registry, by family name (imports the families, which registers their tools)."""
    from .attribute import ATTRIBUTORS
    from .detect import DETECTORS, SAMPLE_DETECTORS
    from .edit import EDITORS
    from .repair import REPAIRERS
    from .synthesize import SYNTHESIZERS

    return {"detect": DETECTORS, "detect-samples": SAMPLE_DETECTORS, "attribute": ATTRIBUTORS,
            "synthesize": SYNTHESIZERS, "repair": REPAIRERS, "edit": EDITORS}
