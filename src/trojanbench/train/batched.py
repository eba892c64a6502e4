"""Train many models of one architecture at once: `torch.func.stack_module_state` + `vmap` over
`functional_call`, each model on its own (poisoned) data, its own batch order and its own initialisation.

SGD is elementwise, so one optimizer over the stacked parameters is exactly K independent optimizers.
BatchNorm buffers are stacked too, so running statistics stay per model.

This is the one trainer of every zoo executor, and a model's weights do not depend on the chunk it is trained
in: trained alone (K = 1) or beside any other models (any K, any position), its weights are bit-identical on
CPU at a fixed torch thread count (`benchmarks/zoo_determinism.py`, `tests/train/test_batched_identity.py`).
What makes it so:
- randomness: model k's batch order and augmentation come from a generator seeded by its own seed, drawn in
  the same order as `train_model` draws them; `vmap` runs with randomness="error", so a random op inside a
  model (dropout) fails loudly instead of drawing from a stream shared by the chunk;
- arithmetic: under `vmap` a convolution over K stacked models becomes one grouped convolution (groups = K).
  oneDNN computes groups = 1 with other kernels than groups > 1, so with it a model trained alone differs
  from the same model trained in a chunk (max weight difference 0.01 after one epoch on digits). We train with
  oneDNN off, where ATen computes a grouped convolution as one ordinary convolution per group: the same
  arithmetic whatever K is. On the digits CNN at one thread this costs 1.17x the CPU time of oneDNN's grouped
  kernels and 1.79x that of the plain loop; with two threads on a loaded 2-core machine ATen's kernels cost far
  more CPU time than with one, one more reason the zoo trains each chunk with one thread. Linear layers (bmm),
  BatchNorm (per-channel reductions), pooling, the loss and the optimiser were measured identical across K.
Not identical: `train_model` (the plain loop: oneDNN, channels-last) makes the same random draws with other
rounding, so its models match this trainer's in quality, not in bits. Not covered: CUDA (cuDNN picks
algorithms per shape and was not measured), other torch versions or CPUs, and other thread counts than the
one a card records (1 and 2 threads gave identical weights here, which other counts and CPUs need not; the
plain loop's CNN weights already differ between 1 and 2 threads).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from ..config import TrainConfig
from .augment import AugmentDraw, apply_augment, draw_augment
from .loop import optimizer_for, param_groups, run_steps, steps_per_epoch


def train_models_batched(models: list[nn.Module], xs: list[torch.Tensor], ys: list[torch.Tensor], cfg: TrainConfig,
                         *, seeds: list[int], augment: dict | None = None, device: torch.device | str = "cpu",
                         pull_to: list[dict[str, torch.Tensor] | None] | None = None, pull_weight: float = 0.0,
                         progress=None) -> list[nn.Module]:
    """Train `models` (same architecture) in place, model k on (xs[k], ys[k]); returns them in eval mode.

    `pull_to[k]`, if given, is a reference state dict: model k is then trained with an extra
    `pull_weight * ||theta_k - theta_ref||^2` term that keeps its weights near the reference
    (insidious trojans stay close to a clean model)."""
    k_models, device = len(models), torch.device(device)
    n = len(xs[0])
    if any(len(x) != n for x in xs):
        raise ValueError("batched training needs the same number of training samples for every model")
    for m, x in zip(models, xs):
        m.to(device).train()
        if hasattr(m, "init_from_data"):
            m.init_from_data(x)
    params, buffers = stack_module_state(models)  # frozen parameters stay frozen when stacked
    trainable = {k: v for k, v in params.items() if v.requires_grad}
    base = copy.deepcopy(models[0]).to("meta")

    x_all, y_all = torch.stack(xs).to(device), torch.stack(ys).to(device)  # [K, N, ...], [K, N]
    # one generator per model, seeded by that model's seed alone and drawn in the same order as `train_model`
    # (each epoch's permutation, then each batch's augmentation): batch order and augmentation do not depend
    # on which models share the chunk
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def model_loss(p, b, x, y):
        return loss_fn(functional_call(base, (p, b), (x,)), y)

    # no random op may run inside a model: its draws would come from one stream shared by the whole chunk
    batched_loss = torch.vmap(model_loss, randomness="error")
    # stacked tensors have one more dimension: matrices and kernels are those of more than 2
    opt = optimizer_for(param_groups(trainable.values(), cfg.weight_decay, matrix_dim=2), cfg)
    pull = None
    if pull_to is not None and pull_weight > 0 and any(r is not None for r in pull_to):
        weights = torch.tensor([0.0 if r is None else pull_weight for r in pull_to], device=device)
        refs = {name: torch.stack([(r[name] if r is not None else params[name][i].detach()).to(device)
                                   for i, r in enumerate(pull_to)]) for name in trainable}
        pull = (weights, refs)

    augment = augment if (cfg.augment and augment) else {}
    rows = torch.arange(k_models, device=device).view(-1, 1)

    def batches():
        for epoch in range(cfg.epochs):
            perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # [K, N]
            for i in range(0, n, cfg.batch_size):
                yield epoch, perms[:, i:i + cfg.batch_size]

    def loss_of(idx):
        xb, yb = x_all[rows, idx], y_all[rows, idx]  # [K, B, ...]
        if augment:  # each model's choices from its own generator, applied in one gather
            draw = AugmentDraw.cat([draw_augment(idx.shape[1], generator=g, **augment) for g in gens])
            xb = apply_augment(xb.flatten(0, 1), draw).view_as(xb)
        losses = batched_loss(params, buffers, xb, yb)
        loss = losses.sum()
        if pull is not None:
            w, refs = pull
            dist = sum(((trainable[name] - refs[name]) ** 2).flatten(1).sum(1) for name in trainable)
            loss = loss + (w * dist).sum()
        return loss, losses.mean()

    with _per_model_arithmetic(device):
        run_steps(opt, batches(), loss_of, lr=cfg.lr, warmup=cfg.warmup,
                  total=cfg.epochs * steps_per_epoch(n, cfg.batch_size), on_epoch=progress)

    with torch.no_grad():
        for k, m in enumerate(models):
            m.load_state_dict({name: v[k] for name, v in {**params, **buffers}.items()})
            m.eval()
    return models


@contextmanager
def _per_model_arithmetic(device: torch.device):
    """On CPU, oneDNN off: ATen then runs a grouped convolution group by group with the groups = 1 kernels.
    (Only the `enabled` switch: `torch.backends.mkldnn.flags` would also reset its TF32 and determinism flags.)"""
    if device.type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
