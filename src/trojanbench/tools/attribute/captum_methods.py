"""Attribution methods from captum, one thin class each, with settings sized for small images (16x16 to 32x32).

Reference ("baseline") input, where a method needs one: black (all zeros), which on digits is the background.
Gradient methods are taken with respect to the pixels in [0, 1] (the models normalise inside).
"""

from __future__ import annotations

import torch
from captum.attr import (
    Deconvolution,
    DeepLift,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerGradCam,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

from . import CaptumAttributor, last_conv, register


def grid_mask(shape: tuple[int, int, int], cell: int) -> torch.Tensor:
    """Superpixel ids [1, C, H, W]: a grid of cell x cell squares, shared across channels."""
    c, h, w = shape
    rows, cols = torch.arange(h) // cell, torch.arange(w) // cell
    ids = rows.view(h, 1) * int(cols.max() + 1) + cols.view(1, w)
    return ids.expand(1, c, h, w).contiguous()


@register("saliency")
class SaliencyMap(CaptumAttributor):
    """|d logit_target / d x| (Simonyan et al. 2014)."""

    def _captum(self, model, x, target):
        return Saliency(model).attribute(x, target=target, abs=True)


@register("input-x-gradient")
class InputTimesGradient(CaptumAttributor):
    """x * d logit_target / d x (Shrikumar et al. 2016)."""

    def _captum(self, model, x, target):
        return InputXGradient(model).attribute(x, target=target)


@register("integrated-gradients")
class IntegratedGradientsMap(CaptumAttributor):
    """Integrated gradients from a black image, 32 Riemann steps (Sundararajan et al. 2017)."""

    steps = 32

    def _captum(self, model, x, target):
        return IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=self.steps,
                                                    internal_batch_size=len(x) * 8)


@register("smoothgrad")
class SmoothGrad(CaptumAttributor):
    """Saliency averaged over 16 copies with Gaussian noise of std 0.1 (Smilkov et al. 2017)."""

    def _captum(self, model, x, target):
        return NoiseTunnel(Saliency(model)).attribute(x, target=target, nt_type="smoothgrad", nt_samples=16,
                                                      nt_samples_batch_size=16, stdevs=0.1, abs=True)


@register("gradient-shap")
class GradientShapMap(CaptumAttributor):
    """Expected gradients (Lundberg & Lee 2017): 16 samples between x (+ noise std 0.05) and references drawn
    from {black, 4 uniform-noise images}."""

    def _captum(self, model, x, target):
        refs = torch.cat([torch.zeros(1, *x.shape[1:]), torch.rand(4, *x.shape[1:])]).to(x)
        return GradientShap(model).attribute(x, baselines=refs, target=target, n_samples=16, stdevs=0.05)


@register("deeplift")
class DeepLiftMap(CaptumAttributor):
    """DeepLIFT rescale rule against a black image (Shrikumar et al. 2017)."""

    def _captum(self, model, x, target):
        return DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)


@register("guided-backprop")
class GuidedBackpropMap(CaptumAttributor):
    """Gradients with negative signals stopped at every ReLU module (Springenberg et al. 2015)."""

    def _captum(self, model, x, target):
        return GuidedBackprop(model).attribute(x, target=target)


@register("deconvolution")
class DeconvolutionMap(CaptumAttributor):
    """Deconvnet: ReLUs applied to the backward signal only (Zeiler & Fergus 2014)."""

    def _captum(self, model, x, target):
        return Deconvolution(model).attribute(x, target=target)


@register("gradcam")
class GradCam(CaptumAttributor):
    """Grad-CAM at the output of the last Conv2d (Selvaraju et al. 2017), ReLU-ed, upsampled bilinearly."""

    def _captum(self, model, x, target):
        return LayerGradCam(model, last_conv(model)).attribute(x, target=target, relu_attributions=True)


@register("guided-gradcam")
class GuidedGradCamMap(CaptumAttributor):
    """Guided backprop times the upsampled Grad-CAM of the last Conv2d (Selvaraju et al. 2017)."""

    def _captum(self, model, x, target):
        return GuidedGradCam(model, last_conv(model)).attribute(x, target=target)


@register("occlusion")
class OcclusionMap(CaptumAttributor):
    """Drop in the target logit when a 3x3 black square slides over the image at stride 1 (Zeiler & Fergus 2014)."""

    window = 3

    def _captum(self, model, x, target):
        c = x.shape[1]
        return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(c, self.window, self.window),
                                          strides=(c, 1, 1), baselines=0.0, perturbations_per_eval=16)


@register("feature-ablation")
class FeatureAblationMap(CaptumAttributor):
    """Drop in the target logit when each 2x2 superpixel (non-overlapping) is set to black."""

    def _captum(self, model, x, target):
        return FeatureAblation(model).attribute(x, target=target, feature_mask=grid_mask(tuple(x.shape[1:]), 2).to(x.device),
                                                baselines=0.0, perturbations_per_eval=16)


def _superpixel_cell(x: torch.Tensor) -> int:
    return max(1, min(x.shape[-2:]) // 4)  # a 4x4 grid: 16 superpixels, affordable for sampling methods


@register("lime")
class LimeMap(CaptumAttributor):
    """LIME (Ribeiro et al. 2016): a linear surrogate fitted on 64 random on/off patterns of a 4x4 superpixel grid
    (off = black), one surrogate per image."""

    samples = 64

    def _captum(self, model, x, target):
        mask = grid_mask(tuple(x.shape[1:]), _superpixel_cell(x)).to(x.device)
        return Lime(model).attribute(x, target=target, feature_mask=mask, baselines=0.0, n_samples=self.samples,
                                     perturbations_per_eval=self.samples)


@register("kernel-shap")
class KernelShapMap(CaptumAttributor):
    """KernelSHAP (Lundberg & Lee 2017) over the same 4x4 superpixel grid, 64 coalitions per image (off = black)."""

    samples = 64

    def _captum(self, model, x, target):
        mask = grid_mask(tuple(x.shape[1:]), _superpixel_cell(x)).to(x.device)
        return KernelShap(model).attribute(x, target=target, feature_mask=mask, baselines=0.0, n_samples=self.samples,
                                           perturbations_per_eval=self.samples)
