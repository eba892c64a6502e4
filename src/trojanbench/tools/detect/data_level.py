"""Data-level detectors: which training samples were poisoned? Each returns a suspicion per sample (higher =
more likely poisoned); the detect task scores the ranking by AUROC against the recorded poisoned indices.

- spectral signatures (Tran et al. 2018): per class, the squared projection of centred features on their
  top singular vector;
- activation clustering (Chen et al. 2018): `activation_clustering.py`;
- STRIP (Gao et al. 2019): superimpose each sample on N = 100 random clean images; a trigger keeps the
  predictions fixed, so low mean prediction entropy is suspicious;
- baselines: Mahalanobis distance to the labelled class in the model's penultimate features; k-NN label
  disagreement in pixel space (looks at no model); random.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance

from ...errors import UserError
from ...utils import evaluating
from . import SampleDetector, penultimate, register_sample, spatial_features
from .activation_clustering import ActivationClustering  # noqa: F401  (registers it)


@register_sample("random")
class RandomSamples(SampleDetector):
    modalities = ("image", "text")
    is_baseline = True
    fidelity = "baseline: a seeded random score per sample (chance level)"

    def suspicion(self, model, x, y, ctx):
        return torch.rand(len(x), generator=torch.Generator().manual_seed(ctx.seed))


@register_sample("knn-pixels")
class KnnPixels(SampleDetector):
    is_baseline = True
    fidelity = ("baseline: fraction of a sample's 10 nearest neighbours in raw pixel space (cosine) that carry "
                "another label; reads no model")

    def __init__(self, k: int = 10, chunk: int = 1024):
        self.k, self.chunk = k, chunk

    def suspicion(self, model, x, y, ctx):
        return knn_disagreement(x, y, self.k, self.chunk)


def knn_disagreement(x: torch.Tensor, y: torch.Tensor, k: int = 10, chunk: int = 1024) -> torch.Tensor:
    """Per sample, the fraction of its k nearest neighbours (cosine, raw pixels) with another label. A
    relabelled sample still looks like its source class. Cost O(N^2 D): fine for digits, slow for CIFAR."""
    f = torch.nn.functional.normalize(x.flatten(1).float(), dim=1)
    out = torch.empty(len(x))
    for i in range(0, len(x), chunk):
        sim = f[i:i + chunk] @ f.T
        sim[torch.arange(len(sim)), torch.arange(i, i + len(sim))] = -2.0  # not its own neighbour
        nn_idx = sim.topk(min(k, len(x) - 1), dim=1).indices
        out[i:i + chunk] = (y[nn_idx] != y[i:i + chunk, None]).float().mean(1)
    return out


@register_sample("mahalanobis")
class Mahalanobis(SampleDetector):
    """Squared Mahalanobis distance of each sample's penultimate features to the mean of its labelled class,
    with one covariance shared by all classes (class-conditional Gaussians with tied covariance, as Lee et al.
    2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks").
    A poisoned sample carries the target label but, trigger aside, the features of its source class.

    `fit_on`: where the class means and the covariance come from. "clean" (default): the auditor's clean
    sample (ctx.x_clean, 200 images on digits), which every sample-level detector is given (STRIP draws its
    overlays from it); "train": the (poisoned) training set itself, as Lee et al. fit on their training data,
    where the poison pulls its target class's mean toward itself. Chosen on the dev zoo: mean poisoned-sample
    AUROC 0.995 (clean) vs 0.932 (train) over its 17 trojans (benchmarks/results/detect_dev.json)."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = ("baseline: squared Mahalanobis distance to the labelled class's mean in penultimate features, "
                "one shared covariance (as Lee et al. 2018), fitted on the auditor's clean sample")

    def __init__(self, fit_on: str = "clean"):
        if fit_on not in ("train", "clean"):
            raise UserError(f"mahalanobis: fit_on must be 'train' or 'clean', got {fit_on!r}")
        self.fit_on = fit_on

    def suspicion(self, model, x, y, ctx):
        feats = penultimate(model, x).double().numpy()
        if self.fit_on == "clean":
            ref, ref_y = penultimate(model, ctx.x_clean).double().numpy(), ctx.y_clean.numpy()
        else:
            ref, ref_y = feats, y.numpy()
        classes = np.unique(ref_y)
        means = np.zeros((ctx.num_classes, feats.shape[1]))
        means[classes] = np.stack([ref[ref_y == c].mean(0) for c in classes])
        precision = EmpiricalCovariance().fit(ref - means[ref_y]).precision_  # tied: one covariance of the residuals
        diff = feats - means[y.numpy()]
        return torch.tensor(np.einsum("nd,de,ne->n", diff, precision, diff), dtype=torch.float32)


@register_sample("spectral")
class SpectralSignatures(SampleDetector):
    modalities = ("image", "text")
    paper = "Tran, Li and Madry, Spectral Signatures in Backdoor Attacks, NeurIPS 2018"
    fidelity = ("adapted: reads the last activation before global pooling (spatial_features) and returns every "
                "sample's score as its ranking instead of removing the top 1.5 x epsilon per class")

    def suspicion(self, model, x, y, ctx):
        feats = spatial_features(model, x).double()
        scores = torch.zeros(len(x), dtype=torch.float64)
        for c in y.unique():
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < 3:
                continue
            centred = feats[idx] - feats[idx].mean(0)
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            # raw squared projections rank best across classes (per-class normalisation measured worse)
            scores[idx] = (centred @ v[0]) ** 2
        return scores.float()


@register_sample("strip")
class Strip(SampleDetector):
    """STRIP as the authors' code (github.com/garrisongys/STRIP): each sample is superimposed on N randomly
    drawn held-out clean images with cv2.addWeighted(x, 1, overlay, 1, 0) on float images, which is a plain
    sum (OpenCV saturates only integer types, so nothing is clipped: values reach 2); the entropy of each
    perturbed input's prediction (log2) is averaged over the N (the paper's Eq. 2-4). N = 100 as in the
    paper's MNIST and CIFAR-10 experiments. Low entropy is suspicious, so the suspicion is -H. The overlays
    come from the auditor's clean sample (ctx.x_clean), the paper's held-out set D_test."""

    version = "3"  # v3: N = 100 and the original's unclipped sum (v2: 8 overlays, sum clipped to [0, 1])
    paper = "Gao et al., STRIP: A Defence Against Trojan Attacks on Deep Neural Networks, ACSAC 2019"
    fidelity = "faithful"

    def __init__(self, overlays: int = 100, images_per_batch: int = 4096):
        if overlays < 1:
            raise UserError(f"strip: overlays must be at least 1, got {overlays}")
        self.overlays, self.images_per_batch = overlays, images_per_batch

    def suspicion(self, model, x, y, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        entropy = torch.zeros(len(x))
        step = max(1, self.images_per_batch // self.overlays)
        with evaluating(model), torch.no_grad():
            for i in range(0, len(x), step):
                xb = x[i:i + step]
                others = ctx.x_clean[torch.randint(len(ctx.x_clean), (len(xb), self.overlays), generator=g)]
                mixed = xb[:, None] + others  # [B, N, C, H, W], unclipped as the original
                logits = model(mixed.flatten(0, 1).to(ctx.device)).cpu().double()
                logp = torch.log_softmax(logits, 1).view(len(xb), self.overlays, -1) / np.log(2)
                entropy[i:i + step] = (-(logp.exp() * logp).sum(2).mean(1)).float()
        return -entropy
