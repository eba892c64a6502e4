"""Data-level detectors: which training samples were poisoned?

- spectral signatures (Tran et al. 2018): per class, the squared projection of centred features on their
  top singular vector;
- activation clustering (Chen et al. 2019): per class, 2-means on PCA-reduced features. Which cluster is
  the poison is decided by a cheap form of the paper's exclusionary reclassification: a poisoned sample
  looks like its source class, so its nearest neighbours in pixel space mostly carry other labels than the
  one it was given. The cluster whose members disagree more with their pixel neighbours is the suspect, and
  the gap between the two clusters says how suspect the whole class is. (The paper's other criterion,
  "the smaller cluster", fails when a 10% all-to-one poison makes half of the target class poison.)

Both use `spatial_features` (the last activation before global pooling), not the penultimate vector:
pooling averages a small trigger's footprint away.
- STRIP (Gao et al. 2019): superimpose each sample on random clean images; a trigger keeps predictions
  fixed, so low prediction entropy is suspicious. Superimposition is the original's saturating sum
  (cv2.addWeighted with weights 1 and 1), which keeps a trigger at full strength; a 50/50 blend halves it, and
  on the digits zoo's crude trojans scored 0.47 against 0.86 for the sum;
- k-NN label disagreement in pixel space: a baseline that looks at no model. A relabelled sample's
  nearest neighbours (cosine, raw pixels) mostly carry its true class, not the label it was given;
  cost O(N^2 D), fine for digits, slow for CIFAR-sized sets;
- random.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from . import SampleDetector, register_sample, spatial_features


@register_sample("random")
class RandomSamples(SampleDetector):
    is_baseline = True

    def suspicion(self, model, x, y, ctx):
        return torch.rand(len(x), generator=torch.Generator().manual_seed(ctx.seed))


@register_sample("knn-pixels")
class KnnPixels(SampleDetector):
    is_baseline = True

    def __init__(self, k: int = 10, chunk: int = 1024):
        self.k, self.chunk = k, chunk

    def suspicion(self, model, x, y, ctx):
        return knn_disagreement(x, y, self.k, self.chunk)


def knn_disagreement(x: torch.Tensor, y: torch.Tensor, k: int = 10, chunk: int = 1024) -> torch.Tensor:
    """Per sample, the fraction of its k nearest neighbours (cosine, raw pixels) with another label."""
    f = torch.nn.functional.normalize(x.flatten(1).float(), dim=1)
    out = torch.empty(len(x))
    for i in range(0, len(x), chunk):
        sim = f[i:i + chunk] @ f.T
        sim[torch.arange(len(sim)), torch.arange(i, i + len(sim))] = -2.0  # not its own neighbour
        nn_idx = sim.topk(min(k, len(x) - 1), dim=1).indices
        out[i:i + chunk] = (y[nn_idx] != y[i:i + chunk, None]).float().mean(1)
    return out


@register_sample("spectral")
class SpectralSignatures(SampleDetector):
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


@register_sample("activation-clustering")
class ActivationClustering(SampleDetector):
    def __init__(self, components: int = 10):
        self.components = components

    def suspicion(self, model, x, y, ctx):
        feats = spatial_features(model, x).numpy()
        disagree = knn_disagreement(x, y).numpy()
        scores = np.zeros(len(x))
        for c in y.unique().tolist():
            idx = np.flatnonzero(y.numpy() == c)
            if len(idx) < 4:
                continue
            f = feats[idx] - feats[idx].mean(0)
            k = min(self.components, f.shape[1], len(idx) - 1)
            reduced = PCA(k, random_state=ctx.seed).fit_transform(f)
            km = KMeans(2, n_init=5, random_state=ctx.seed).fit(reduced)
            rate = np.array([disagree[idx][km.labels_ == j].mean() if (km.labels_ == j).any() else 0.0 for j in (0, 1)])
            bad = int(np.argmax(rate))
            d = np.linalg.norm(reduced[:, None, :] - km.cluster_centers_[None], axis=2)
            membership = d[:, 1 - bad] / (d.sum(1) + 1e-12)  # 1 at the suspect centre, 0 at the other
            scores[idx] = (rate[bad] - rate[1 - bad]) * membership
        return torch.tensor(scores, dtype=torch.float32)


@register_sample("strip")
class Strip(SampleDetector):
    version = "2"

    def __init__(self, overlays: int = 8):
        self.overlays = overlays

    def suspicion(self, model, x, y, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        entropy = torch.zeros(len(x))
        model.eval()
        with torch.no_grad():
            for i in range(0, len(x), 256):
                xb = x[i:i + 256]
                others = ctx.x_clean[torch.randint(len(ctx.x_clean), (len(xb), self.overlays), generator=g)]
                mixed = (xb[:, None] + others).clamp(0, 1)  # [B, O, C, H, W]
                p = torch.softmax(model(mixed.flatten(0, 1).to(ctx.device)).cpu(), 1).view(len(xb), self.overlays, -1)
                entropy[i:i + 256] = -(p * p.clamp_min(1e-12).log()).sum(2).mean(1)
        return -entropy
