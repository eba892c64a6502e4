"""The random-prior baseline: a trigger drawn from the zoo's trigger prior, independent of the model.

An auditor who knows what kinds of trigger a zoo plants (the kinds and variants of its config), but learns
nothing from the model, can still guess: draw a kind, a variant and a fresh seed, and answer with that trigger.
Its multiple-choice accuracy is what knowing the prior alone is worth, so it is the floor a synthesizer must
clear, a stronger one than chance 1/k whenever a kind has few distinct triggers (an emboss style always looks the
same). The draw follows the zoo's own plan (`trojanbench.zoo.plan.expand`): kinds equally often, then a variant
uniformly. The seed comes from the context's seed, the target and a digest of the model's weights, used only as
a nonce so that different models get different draws; nothing the model computes is read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import torch

from ...errors import UserError
from ...trojans import TriggerSpec, make_trigger
from . import Synthesizer, TriggerStamp, register


def trigger_prior(cfg) -> list[TriggerSpec]:
    """The trigger prior of a zoo config (`ZooConfig`): one spec per kind x variant (seeds are drawn later)."""
    return [TriggerSpec(kind=kind, params=dict(params))
            for kind in cfg.trojans.kinds for params in (cfg.trojans.variants.get(kind) or [{}])]


def _nonce(model: torch.nn.Module) -> int:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:6], "big")


@register("random-prior")
class RandomPrior(Synthesizer):
    is_baseline = True
    fidelity = "baseline: a random draw from the zoo's trigger prior"

    def synthesize(self, model, target, ctx):
        if not getattr(ctx, "prior", None):
            raise UserError("random-prior needs the zoo's trigger prior (DetectContext.prior, e.g. "
                            "trigger_prior(zoo config)); none was given")
        by_kind: dict[str, list[TriggerSpec]] = defaultdict(list)
        for spec in ctx.prior:
            spec = spec if isinstance(spec, TriggerSpec) else TriggerSpec(**spec)
            by_kind[spec.kind].append(spec)
        kinds = sorted(by_kind)
        g = torch.Generator().manual_seed((ctx.seed * 1_000_003 + target * 7_919 + _nonce(model)) % (1 << 62))
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
        spec = by_kind[kind][int(torch.randint(len(by_kind[kind]), (1,), generator=g))]
        seed = int(torch.randint(1 << 30, (1,), generator=g))
        trigger = make_trigger(TriggerSpec(kind=kind, params=dict(spec.params), seed=seed), ctx.image_shape)
        return TriggerStamp(trigger, placement_seed=seed + 1)
