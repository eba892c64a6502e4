"""`natural-patch-search` (registered as `snafue` until the fidelity review of issue 15), after SNAFUE (Casper et
al. 2023, "Red Teaming Deep Neural Networks with Feature Synthesis Tools"; Casper, Hariharan & Hadfield-Menell
2022, "Debugging Deep Neural Networks with Automated Copy/Paste Attacks"): search for natural adversarial
features. A synthetic adversarial patch says what the model responds to; the method then
looks for natural image patches that the model treats the same way, and returns one that works, so what an
auditor is shown is a real piece of the data, not an optimised pattern.

1. an adversarial patch toward the target (`adversarial-patch`, its size and place);
2. its embedding: the audited model's penultimate features (the input of its last linear layer) averaged over a
   few clean carrier images that carry the patch;
3. a bank of natural patches of the same size cut from the clean images at random places, each embedded the
   same way (pasted at the same place on the same carriers);
4. the `k` natural patches nearest to the adversarial one (cosine similarity) are pasted on all the clean images
   of other classes, and the one that sends the most of them to the target is returned.
The stamp is that natural patch at the adversarial patch's place.

Why not under SNAFUE's name: SNAFUE (the authors' `cp_attack.py`) starts from several feature-level adversarial
patches made by perturbing a pretrained generator, embeds each patch *on its own* in the network's pooled
features, weights the features by a mask of the neurons the synthetic patches excite consistently, searches a
corpus of tens of thousands of natural patches by mean squared cosine similarity, and keeps those that fool the
network most. Here: one pixel-level adversarial patch, patches embedded on carrier images, no neuron mask, and a
bank cut from the auditor's 200 clean images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...train.evaluate import predict
from ..detect import penultimate
from . import AdversarialPatch, Stamp, Synthesizer, register


@register("natural-patch-search")
class NaturalPatchSearch(Synthesizer):
    paper = "Casper et al., Red Teaming Deep Neural Networks with Feature Synthesis Tools, NeurIPS 2023 (SNAFUE)"
    fidelity = ("adapted: SNAFUE's nearest-natural-patch search, from one pixel-level adversarial patch (SNAFUE: "
                "several generator-made feature-level patches), patches embedded on carrier images without SNAFUE's "
                "neuron mask, a bank cut from the auditor's 200 clean images (SNAFUE: a large natural-image corpus)")

    def __init__(self, bank: int = 1024, carriers: int = 16, k: int = 16, patch_steps: int = 120, starts: int = 4):
        self.bank, self.carriers, self.k, self.patch_steps, self.starts = bank, carriers, k, patch_steps, starts

    def synthesize(self, model, target, ctx):
        adv = AdversarialPatch(steps=self.patch_steps, starts=self.starts).synthesize(model, target, ctx)
        rows, cols = torch.nonzero(adv.mask, as_tuple=True)
        r0, c0, s = int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1)
        g = torch.Generator().manual_seed(ctx.seed + 1)
        x = ctx.x_clean
        others = x[ctx.y_clean != target]
        carriers = others[torch.randperm(len(others), generator=g)[:self.carriers]]
        _, h, w = ctx.image_shape

        def embed(patches):  # [P, C, s, s] -> [P, D]: mean penultimate features of the carriers wearing each patch
            stamped = carriers[None].repeat(len(patches), 1, 1, 1, 1)
            stamped[:, :, :, r0:r0 + s, c0:c0 + s] = patches[:, None]
            return penultimate(model, stamped.flatten(0, 1)).view(len(patches), len(carriers), -1).mean(1)

        target_emb = embed(adv.pattern[None, :, r0:r0 + s, c0:c0 + s])
        src = torch.randint(len(x), (self.bank,), generator=g)
        pr, pc = torch.randint(h - s + 1, (self.bank,), generator=g), torch.randint(w - s + 1, (self.bank,), generator=g)
        bank = torch.stack([x[i, :, r:r + s, c:c + s] for i, r, c in zip(src.tolist(), pr.tolist(), pc.tolist())])
        emb = torch.cat([embed(bank[i:i + 64]) for i in range(0, len(bank), 64)])
        nearest = F.cosine_similarity(emb, target_emb).topk(min(self.k, len(bank))).indices

        best = None
        for i in nearest.tolist():
            stamped = others.clone()
            stamped[:, :, r0:r0 + s, c0:c0 + s] = bank[i]
            hit = float((predict(model, stamped) == target).float().mean())
            if best is None or hit > best[0]:
                best = (hit, i)
        pattern = torch.zeros(ctx.image_shape)
        pattern[:, r0:r0 + s, c0:c0 + s] = bank[best[1]]
        return Stamp(pattern, adv.mask.clone())

