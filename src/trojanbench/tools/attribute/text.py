"""Token attributions for text models (issue 18): `attribute(model, ids, target) -> Tensor[N, T]`, a non-negative
relevance per token position for token ids [N, T] (0 = padding, which always gets 0).

The gradient methods are captum's, on the output of the model's token embedding (its first `nn.Embedding`), the
usual place to attribute text models (Sundararajan et al. 2017 attribute through the embedding layer):
- `token-saliency`: the L2 norm over the embedding dimension of the gradient of the target logit (captum
  `LayerGradientXActivation` with `multiply_by_inputs=False`, i.e. the plain gradient);
- `token-input-x-gradient`: |sum over the embedding dimension of gradient x embedding| (captum
  `LayerGradientXActivation`);
- `token-integrated-gradients`: |sum over the embedding dimension| of captum's `LayerIntegratedGradients`, 32
  steps, from the sentence with every word replaced by `<unk>` (padding kept, so the attention mask is the same).
Baselines that look at no model, with the same access (the clean reference sample every attributor gets):
- `token-rarity`: minus the log of how often the word occurs in the clean reference sentences (add-one): the
  rarest word of a sentence ranks first. A trigger made of one rare word is its best case;
- `token-random`: uniform noise per token, seeded by the sentence.
"""

from __future__ import annotations

import warnings
import zlib
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ...errors import UserError
from ...utils import private_rng
from . import Attributor, attribution_copy, register
from .captum_methods import InputTimesGradient, IntegratedGradientsMap, SaliencyMap

UNK = 1


def token_embedding(model: nn.Module) -> nn.Embedding:
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise UserError(f"{type(model).__name__} has no token embedding (nn.Embedding): not a text model")
    return embeddings[0]


class TokenAttributor(Attributor):
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    def fit_reference(self, x_clean: torch.Tensor) -> "TokenAttributor":
        if not torch.is_tensor(x_clean) or x_clean.dim() != 2 or x_clean.dtype != torch.long or len(x_clean) == 0:
            raise UserError(f"{type(self).__name__}.fit_reference needs clean sentences as token ids [N, T], got "
                            f"{tuple(x_clean.shape) if torch.is_tensor(x_clean) else type(x_clean).__name__}")
        self.reference = x_clean.detach().cpu().clone()
        return self

    def attribute(self, model, x, target):
        if x.dim() != 2 or x.dtype != torch.long:
            raise UserError(f"{type(self).__name__} explains token ids [N, T], got {x.dtype} {tuple(x.shape)}")
        maps = self._maps(model, x, target).detach().float().cpu()
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
        return torch.where(x.cpu() != 0, maps, torch.zeros_like(maps))  # padding is never relevant

    def _maps(self, model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        raise NotImplementedError


class _Gradient(TokenAttributor):
    """Runs `_layer(model_copy, embedding, x, target)` -> [N, T, D] on a private copy, in batches, with captum's
    warnings silenced and the RNGs left as they were."""

    batch_size: ClassVar[int] = 128

    def _maps(self, model, x, target):
        m = attribution_copy(model)
        layer = token_embedding(m)
        device = next(m.parameters()).device
        out = []
        with warnings.catch_warnings(), private_rng():
            warnings.simplefilter("ignore")
            torch.manual_seed(self.seed)
            for i in range(0, len(x), self.batch_size):
                xb = x[i:i + self.batch_size].to(device)
                tb = target[i:i + self.batch_size].to(device) if torch.is_tensor(target) and target.dim() else int(target)
                out.append(self._reduce(self._layer(m, layer, xb, tb)).cpu())
        return torch.cat(out) if out else torch.zeros(0, x.shape[1])

    @staticmethod
    def _reduce(a: torch.Tensor) -> torch.Tensor:
        return a.sum(-1).abs()


@register("token-saliency")
class TokenSaliency(_Gradient):
    paper = SaliencyMap.paper
    fidelity = ("adapted: the gradient's L2 norm per token at the token embedding's output (the paper's is per pixel, "
                "max over channels)")

    def _layer(self, model, layer, x, target):
        from captum.attr import LayerGradientXActivation

        return LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(x, target=target)

    @staticmethod
    def _reduce(a):
        return a.norm(dim=-1)


@register("token-input-x-gradient")
class TokenInputXGradient(_Gradient):
    paper = InputTimesGradient.paper
    fidelity = "faithful"  # captum LayerGradientXActivation at the token embedding, summed over its dimension

    def _layer(self, model, layer, x, target):
        from captum.attr import LayerGradientXActivation

        return LayerGradientXActivation(model, layer).attribute(x, target=target)


@register("token-integrated-gradients")
class TokenIntegratedGradients(_Gradient):
    paper = IntegratedGradientsMap.paper
    fidelity = "faithful"  # captum LayerIntegratedGradients at the token embedding (as the paper's text models)
    batch_size: ClassVar[int] = 32

    def _layer(self, model, layer, x, target):
        from captum.attr import LayerIntegratedGradients

        baseline = torch.where(x != 0, torch.full_like(x, UNK), x)
        return LayerIntegratedGradients(model, layer).attribute(x, baselines=baseline, target=target, n_steps=32)


class _TextBaseline(TokenAttributor):
    is_baseline = True
    uses_model = False


@register("token-rarity")
class TokenRarity(_TextBaseline):
    fidelity = "baseline: minus the log frequency of each word in the clean reference sentences (add-one); reads no model"
    needs_reference = True

    def _maps(self, model, x, target):
        if self.reference is None:
            raise UserError("token-rarity needs the clean reference sentences: call fit_reference(x_clean) first")
        size = int(max(x.max(), self.reference.max())) + 1
        counts = torch.bincount(self.reference.flatten(), minlength=size).double()
        counts[0] = 0
        return -torch.log((counts[x.cpu()] + 1) / (counts.sum() + size))


@register("token-random")
class TokenRandom(_TextBaseline):
    fidelity = "baseline: uniform noise per token (chance level)"

    def _maps(self, model, x, target):
        out = [torch.rand(x.shape[1], generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + zlib.crc32(row.numpy().astype(np.int64).tobytes()))) for row in x.cpu()]
        return torch.stack(out) if out else torch.zeros(0, x.shape[1])
