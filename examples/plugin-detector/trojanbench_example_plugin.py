"""A third-party detector: how far a model's logits move under Gaussian noise on the clean sample."""

import torch

from trojanbench.tools import evaluating
from trojanbench.tools.detect import Detection, Detector, register


@register("noise-sensitivity")
class NoiseSensitivity(Detector):
    version = "0.1.0"  # bump when a change alters its scores (every result row records it)
    paper = ""  # no paper: the project's own heuristic, so its fidelity says what it is and where the idea comes from
    fidelity = ("adapted: a model-level take on input-perturbation tests such as STRIP (Gao et al. 2019), not STRIP: "
                "mean |logit change| under Gaussian noise (sigma 0.1) on the auditor's clean sample")

    def detect(self, model, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        x = ctx.x_clean.to(ctx.device)
        with evaluating(model), torch.no_grad():  # eval mode (BatchNorm statistics untouched), restored after
            clean = model(x)
            noisy = model((x + 0.1 * torch.randn(x.shape, generator=g).to(x)).clamp(0, 1))
        return Detection(score=float((clean - noisy).abs().mean()))
