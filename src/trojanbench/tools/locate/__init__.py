"""Causal tracing for any architecture (after Meng et al.'s ROME, applied to trojans).

Run a triggered input and its clean twin; then run the triggered input again while restoring one layer's
activation *at one position* (a pixel of a conv feature map, a token of a transformer, the whole vector of
an MLP layer) from the clean run, and measure how much of the trojan's pull toward the target it removes:

    effect = (p_target(triggered) - p_target(triggered, restored)) / (p_target(triggered) - p_target(clean))

averaged over images. 1 means that position carries the whole trojan, 0 that it carries none. Layers are
addressed by their module names; forward hooks are removed when the trace ends, whatever happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...models.hooks import hooked
from ...utils import evaluating


def traceable_layers(model: nn.Module) -> list[str]:
    """Names of the layers a trace visits: every Conv2d and Linear (the weight matrices an edit can change),
    except the projections inside nn.MultiheadAttention, which it applies functionally (no forward call)."""
    inside_mha = {f"{name}.{child}" if name else child for name, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in inside_mha]


def called_in_order(model: nn.Module, x: torch.Tensor, candidates, keep=None) -> list[nn.Module]:
    """The `candidates` that one probe forward of `x[:2]` calls (those whose output `keep(out)` accepts), in call
    order, each once. Eval mode, no gradients; the model's mode is restored and every hook removed."""
    seen: list[nn.Module] = []
    with evaluating(model):
        with torch.no_grad(), hooked(candidates, lambda mod, inp, out: seen.append(mod) if keep is None or keep(out)
                                     else None):
            model(x[:2])
    return list(dict.fromkeys(seen))


def _positions(out: torch.Tensor) -> int:
    if out.dim() == 4:
        return out.shape[2] * out.shape[3]
    if out.dim() == 3:
        return out.shape[1]
    return 1


def _restore(out: torch.Tensor, clean: torch.Tensor, p: int, window: int = 1) -> torch.Tensor:
    out = out.clone()
    if out.dim() == 4:
        w = out.shape[3]
        r, c = p // w, p % w
        out[:, :, r:r + window, c:c + window] = clean[:, :, r:r + window, c:c + window]
    elif out.dim() == 3:
        out[:, p:p + window] = clean[:, p:p + window]
    else:
        out[:] = clean
    return out


@dataclass
class Trace:
    """Per layer, the effect of restoring each position: a tensor [positions] (reshaped to the map's H x W for
    conv layers); `best` is the layer whose single most important position removes the most."""

    effects: dict[str, torch.Tensor]
    p_triggered: float
    p_clean: float

    @property
    def peak(self) -> dict[str, float]:
        return {name: float(e.max()) for name, e in self.effects.items()}

    @property
    def best(self) -> str:
        """The layer to edit: the deepest layer with a spatial or token layout where restoring one small window
        still removes at least half of the trojan's pull (there the trigger is a localized feature closest to
        the decision); if none does, the one with the largest peak. Restoring a whole vector layer always
        removes everything, so vector layers are chosen only when there is nothing else (an MLP: then the
        last hidden layer before the head)."""
        peak = self.peak
        spatial = [n for n, e in self.effects.items() if e.numel() > 1]
        if not spatial:
            return list(peak)[-2] if len(peak) > 1 else list(peak)[-1]
        strong = [n for n in spatial if peak[n] >= 0.5]
        return strong[-1] if strong else max(spatial, key=lambda n: peak[n])


@torch.no_grad()
def causal_trace(model: nn.Module, x_triggered: torch.Tensor, x_clean: torch.Tensor, target: int,
                 layers: list[str] | None = None, window: int = 2) -> Trace:
    """Trace every layer in `layers` (default: `traceable_layers`). `x_triggered[i]` is `x_clean[i]` with the
    trigger. Each step restores a `window` x `window` block of a conv map (or `window` consecutive tokens)
    anchored at the position: after a few 3x3 convolutions a small trigger spans neighbouring positions."""
    modules = dict(model.named_modules())
    layers = layers or traceable_layers(model)
    with evaluating(model):
        p_trig = torch.softmax(model(x_triggered), 1)[:, target]
        p_clean = torch.softmax(model(x_clean), 1)[:, target]
        denom = (p_trig - p_clean).mean().clamp_min(1e-6)
        effects = {}
        for name in layers:
            store = {}
            with hooked(modules[name], lambda m, i, o: store.__setitem__("clean", o.detach())):
                model(x_clean)
            clean = store["clean"]
            n = _positions(clean)
            eff = torch.empty(n)
            for p in range(n):
                with hooked(modules[name], lambda m, i, o, p=p: _restore(o, clean, p, window)):
                    p_rest = torch.softmax(model(x_triggered), 1)[:, target]
                eff[p] = float((p_trig - p_rest).mean() / denom)
            effects[name] = eff.view(clean.shape[2], clean.shape[3]) if clean.dim() == 4 else eff
        return Trace(effects, float(p_trig.mean()), float(p_clean.mean()))
