"""Attribution methods from captum, one thin class each, with settings sized for small images (16x16 to 32x32).

Reference ("baseline") input, where a method needs one: black (all zeros), which on digits is the background;
GradientSHAP draws its references from the clean reference sample (`fit_reference`), the data distribution
SHAP's expectation is over. Gradient methods are taken with respect to the pixels in [0, 1] (the models
normalise inside). Every class is a thin wrapper of captum's implementation of the method, so `fidelity` is
"faithful"; the one convention shared by all (not a method's own) is how a signed [N, C, H, W] attribution
becomes a map: absolute values summed over channels (`reduce_channels`).
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

    paper = ('Simonyan, Vedaldi & Zisserman (2014). Deep Inside Convolutional Networks: '
             'Visualising Image Classification Models and Saliency Maps. ICLR workshop')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return Saliency(model).attribute(x, target=target, abs=True)


@register("input-x-gradient")
class InputTimesGradient(CaptumAttributor):
    """x * d logit_target / d x (Shrikumar et al. 2016)."""

    paper = ('Shrikumar, Greenside, Shcherbina & Kundaje (2016). Not Just a Black Box: '
             'Learning Important Features Through Propagating Activation Differences. arXiv:1605.01713')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return InputXGradient(model).attribute(x, target=target)


@register("integrated-gradients")
class IntegratedGradientsMap(CaptumAttributor):
    """Integrated gradients from a black image, 32 Riemann steps (Sundararajan et al. 2017)."""

    paper = 'Sundararajan, Taly & Yan (2017). Axiomatic Attribution for Deep Networks. ICML'
    fidelity = "faithful"

    steps = 32

    def _captum(self, model, x, target):
        return IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=self.steps,
                                                    internal_batch_size=len(x) * 8)


@register("smoothgrad")
class SmoothGrad(CaptumAttributor):
    """Saliency averaged over 50 copies with Gaussian noise of std 0.1, i.e. 10% of the pixel range (Smilkov et
    al. 2017: about 50 samples, noise 10-20% of the range)."""

    version = "2"  # 50 samples (was 16)
    samples = 50

    paper = ('Smilkov, Thorat, Kim, Viegas & Wattenberg (2017). '
             'SmoothGrad: removing noise by adding noise. arXiv:1706.03825')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return NoiseTunnel(Saliency(model)).attribute(x, target=target, nt_type="smoothgrad", nt_samples=self.samples,
                                                      nt_samples_batch_size=self.samples, stdevs=0.1, abs=True)


@register("gradient-shap")
class GradientShapMap(CaptumAttributor):
    """GradientSHAP, i.e. expected gradients (Lundberg & Lee 2017; Erion et al. 2021): the mean of
    gradient x (x - x') at 32 points drawn uniformly on the segments from references x' to x, the references drawn
    from the clean reference sample (the data distribution the SHAP expectation is over), no input noise."""

    version = "2"  # references from the clean sample (were black + 4 uniform-noise images), no noise
    needs_reference = True
    samples = 32

    paper = ('Lundberg & Lee (2017). A Unified Approach to Interpreting Model Predictions. '
             'NeurIPS (GradientSHAP: expected gradients, Erion et al. 2021, Nature Machine Intelligence)')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        refs = self.reference_for(x).to(x)
        return GradientShap(model).attribute(x, baselines=refs, target=target, n_samples=self.samples, stdevs=0.0)


@register("deeplift")
class DeepLiftMap(CaptumAttributor):
    """DeepLIFT rescale rule against a black image (Shrikumar et al. 2017)."""

    paper = ('Shrikumar, Greenside & Kundaje (2017). Learning Important Features Through Propagating Activation Differences. '
             'ICML')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)


@register("guided-backprop")
class GuidedBackpropMap(CaptumAttributor):
    """Gradients with negative signals stopped at every ReLU module (Springenberg et al. 2015)."""

    paper = ('Springenberg, Dosovitskiy, Brox & Riedmiller (2015). '
             'Striving for Simplicity: The All Convolutional Net. ICLR workshop')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return GuidedBackprop(model).attribute(x, target=target)


@register("deconvolution")
class DeconvolutionMap(CaptumAttributor):
    """Deconvnet: ReLUs applied to the backward signal only (Zeiler & Fergus 2014)."""

    paper = 'Zeiler & Fergus (2014). Visualizing and Understanding Convolutional Networks. ECCV'
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return Deconvolution(model).attribute(x, target=target)


@register("gradcam")
class GradCam(CaptumAttributor):
    """Grad-CAM at the output of the last Conv2d (Selvaraju et al. 2017), ReLU-ed, upsampled bilinearly."""

    paper = ('Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017). '
             'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization. ICCV')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return LayerGradCam(model, last_conv(model)).attribute(x, target=target, relu_attributions=True)


@register("guided-gradcam")
class GuidedGradCamMap(CaptumAttributor):
    """Guided backprop times the upsampled Grad-CAM of the last Conv2d (Selvaraju et al. 2017)."""

    paper = ('Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017). '
             'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization. ICCV')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return GuidedGradCam(model, last_conv(model)).attribute(x, target=target)


@register("occlusion")
class OcclusionMap(CaptumAttributor):
    """Drop in the target logit when a 3x3 black square slides over the image at stride 1 (Zeiler & Fergus 2014)."""

    paper = 'Zeiler & Fergus (2014). Visualizing and Understanding Convolutional Networks. ECCV'
    fidelity = "faithful"

    window = 3

    def _captum(self, model, x, target):
        c = x.shape[1]
        return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(c, self.window, self.window),
                                          strides=(c, 1, 1), baselines=0.0, perturbations_per_eval=16)


@register("feature-ablation")
class FeatureAblationMap(CaptumAttributor):
    """Drop in the target logit when each 2x2 superpixel (non-overlapping) is set to black."""

    paper = ('Kokhlikyan et al. (2020). Captum: A unified and generic model interpretability library for PyTorch. '
             'arXiv:2009.07896 (FeatureAblation)')
    fidelity = "faithful"

    def _captum(self, model, x, target):
        return FeatureAblation(model).attribute(x, target=target, feature_mask=grid_mask(tuple(x.shape[1:]), 2).to(x.device),
                                                baselines=0.0, perturbations_per_eval=16)


def _superpixel_cell(x: torch.Tensor) -> int:
    return max(1, min(x.shape[-2:]) // 4)  # a 4x4 grid: 16 superpixels, affordable for sampling methods


@register("lime")
class LimeMap(CaptumAttributor):
    """LIME (Ribeiro et al. 2016): a linear surrogate fitted on 64 random on/off patterns of a 4x4 superpixel grid
    (off = black), one surrogate per image."""

    paper = ('Ribeiro, Singh & Guestrin (2016). "Why Should I Trust You?": Explaining the Predictions of Any Classifier. '
             'KDD')
    fidelity = "faithful"

    samples = 64

    def _captum(self, model, x, target):
        mask = grid_mask(tuple(x.shape[1:]), _superpixel_cell(x)).to(x.device)
        return Lime(model).attribute(x, target=target, feature_mask=mask, baselines=0.0, n_samples=self.samples,
                                     perturbations_per_eval=self.samples)


@register("kernel-shap")
class KernelShapMap(CaptumAttributor):
    """KernelSHAP (Lundberg & Lee 2017) over the same 4x4 superpixel grid, 64 coalitions per image (off = black)."""

    paper = 'Lundberg & Lee (2017). A Unified Approach to Interpreting Model Predictions. NeurIPS'
    fidelity = "faithful"

    samples = 64

    def _captum(self, model, x, target):
        mask = grid_mask(tuple(x.shape[1:]), _superpixel_cell(x)).to(x.device)
        return KernelShap(model).attribute(x, target=target, feature_mask=mask, baselines=0.0, n_samples=self.samples,
                                           perturbations_per_eval=self.samples)
