"""DBS (Shen et al., ICML 2022, "Constrained Optimization with Dynamic Bound-Scaling for Effective NLP Backdoor
Defense"), ported from the authors' code (github.com/Megum1/DBS, read in its PurduePAML/DBS copy:
`trojai_r6/scanner.py`, `trojai_r6/dbs.py`, `trojai_r6/utils/utils.py`, `trojai_r6/config/config.yaml`).

The trigger is a soft sequence of `trigger_len` words: a free variable theta [L, V] (zeros at the start), and at
each position the word embedding softmax(theta / tau) @ E, a point of the convex hull of the vocabulary's
embeddings. It is inserted into the auditor's clean sentences of the other classes (placeholder ids whose
token-embedding output a forward hook replaces, so the model is not touched), and theta is fitted with Adam (lr
0.5, step decay x0.5 every 50 of the 200 epochs) to minimise the cross-entropy toward a candidate target label.
As in `DBS_Scanner.generate`, one full-batch step an epoch, and:

- dynamic bound scaling: temperature scaling starts once the loss first falls to the loss barrier (0.1); from
  then on, every 5 epochs, a loss below the barrier divides tau by 2 (the bound tightens towards one-hot), and
  a loss above it counts a rollback, multiplies tau by 2 (at most max_temp = 2) and adds uniform noise x 10 to
  theta / tau for that epoch (the code uses its down-multiplier, 2, both ways; its config's up-multiplier is unused);
- after `rollback_thres` (5) rollbacks the barrier is raised: min(2 barrier, best loss - 1e-3);
- a trigger is kept when the bound is within eps (1e-3) of one-hot (L minus the sum of each position's largest
  probability) and the loss is at most the barrier; its loss becomes the best loss, the barrier drops to half of
  it and the rollback count restarts. The kept trigger is the argmax words: the hard trigger.

Every (target label, insertion position) option is its own search with its own tau, barrier and rollbacks, as
the original's one scanner per option; all options share each forward pass (their sentences batched, the loss a
sum of theirs: theta's Adam update is elementwise, so each option takes the step it would take alone). The model's
verdict is the original's: the lowest best loss over the options (flagged below 1e-3); `Detection.score` is
-log10 of it (higher = more suspicious; 3 is the original's threshold, -10 the original's 1e10 for a model on
which no option ever kept a trigger) and `target_label` that option's target.

Differences from the original, one a line (also in `DBS.fidelity`); the original's hyperparameters otherwise:
- trigger length 1 word, chosen on the dev zoo (original 10 word pieces in sentences of up to 100; here whole words, sentences of up to 32).
- 32 victim sentences per target label (original: those of TrojAI round 6's 20 clean examples a model with the victim label).
- victims are the sentences of all the other classes pooled (original: one search per victim label; the same on two classes).
- positions: the sentence's start and min(length, T/2) (original: after [CLS] and at index 50 of 100; our models have no [CLS]).
- no benign reference model: the original adds a hinge penalty from a clean TrojAI model, which a detector here does not get.
- the softmax spans the vocabulary less padding (0) and <unk> (1) (original: the tokenizer's whole vocabulary).
- where no option kept a trigger, the target label is that of the option with the lowest final loss (original: the last option).

The trigger length is chosen on the text dev zoo (`benchmarks/dbs_dev.py`, `benchmarks/results/dbs_dev.json`),
never on a zoo a board is scored on (rule and per-length numbers in that file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...models.hooks import hooked
from ...trojans.text import insert_tokens
from ...utils import evaluating
from .. import check_target
from . import DetectContext, Detection, Detector, register

PLACEHOLDER = 1  # <unk>: non-zero, so the placeholders count as words in the padding mask; its embedding is replaced
FIRST_WORD = 2  # ids below are padding (0) and <unk> (1)
NO_TRIGGER_LOSS = 1e10  # the original's best loss before any trigger is kept


def token_embedding(model: nn.Module, who: str = "dbs") -> nn.Embedding:
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise UserError(f"{who} needs a text model with a token embedding (nn.Embedding); this is {type(model).__name__}")
    return embeddings[0]  # the first one, as token-scan: TextTransformer's `tok_embed`


def victims(ctx: DetectContext, target: int, n: int, who: str) -> torch.Tensor:
    """The first `n` clean sentences of the auditor's sample whose label is not `target` (on the CPU)."""
    check_token_ids(ctx.x_clean, who)
    x = ctx.x_clean[ctx.y_clean.cpu() != target][:n].cpu()
    if len(x) == 0:
        raise UserError(f"{who} needs clean sentences of a class other than {target}; the context holds none")
    return x


def insertion_points(x: torch.Tensor, position: str) -> torch.Tensor:
    """Where DBS inserts a trigger into each sentence of `x` [N, T]: its start (0) or its middle, min(words, T/2)."""
    if position == "start":
        return torch.zeros(len(x), dtype=torch.long)
    return (x != 0).sum(1).clamp(max=x.shape[1] // 2)


def check_token_ids(x: torch.Tensor, who: str) -> None:
    """A one-line UserError unless `x` holds token ids [N, T] (a text model's inputs)."""
    if torch.is_floating_point(x) or x.dim() != 2:
        raise UserError(f"{who} works on token ids [N, T] (text models); got {x.dtype} of shape {list(x.shape)}")


def loss_score(loss: float) -> float:
    """DBS's score of a search's best loss: -log10 of it (-10 where no trigger was kept, NO_TRIGGER_LOSS)."""
    return -math.log10(max(loss, 1e-30))


@dataclass
class Option:
    """One search (the original's `trigger_opt`): its target label and insertion place, and what it found."""

    target: int
    position: str
    best_loss: float = NO_TRIGGER_LOSS  # loss of the kept trigger (NO_TRIGGER_LOSS if none was kept)
    best_asr: float = 0.0  # attack success on the victims when it was kept
    trigger: list[int] | None = None  # the kept hard trigger (word ids)
    final_loss: float = math.inf  # the loss at the last epoch
    final_trigger: list[int] | None = None  # the argmax words at the last epoch


@dataclass
class Inversion:
    options: list[Option]

    @property
    def best(self) -> Option:
        """The option with the lowest best loss (ties: the lowest final loss)."""
        return min(self.options, key=lambda o: (o.best_loss, o.final_loss))


@register("dbs")
class DBS(Detector):
    modalities = ("text",)
    version = "1"
    paper = ("Guangyu Shen, Yingqi Liu, Guanhong Tao, Qiuling Xu, Zhuo Zhang, Shengwei An, Shiqing Ma, Xiangyu Zhang. "
             "Constrained Optimization with Dynamic Bound-scaling for Effective NLP Backdoor Defense. ICML 2022")
    fidelity = ("adapted: the original's soft trigger, dynamic temperature/bound scaling, rollback, one-hot check, "
                "hyperparameters (200 epochs) and lowest-loss verdict, with: trigger length 1 word, chosen on the dev zoo "
                "(original 10 word pieces); 32 victim sentences per target (original: TrojAI's 20 examples a model); victims of all "
                "other classes pooled (original: per victim label, the same on two classes); inserted at the start "
                "and at min(length, T/2) (original: after [CLS] and at index 50 of 100); no benign reference model "
                "penalty (the original's TrojAI clean model); padding and <unk> left out of the softmax; with no "
                "trigger kept, the target is the lowest-final-loss option's (original: the last option's)")

    def __init__(self, epochs: int = 200, trigger_len: int = 1, sentences: int = 32, lr: float = 0.5,
                 scheduler_step_size: int | None = None, scheduler_gamma: float = 0.5, init_temp: float = 2.0,
                 max_temp: float = 2.0, temp_scaling_check_epoch: int = 5, temp_scaling_multiplier: float = 2.0,
                 loss_barrier: float = 0.1, noise_ratio: float = 10.0, rollback_thres: int = 5,
                 eps_to_one_hot: float = 1e-3, positions: tuple[str, ...] = ("start", "middle")):
        if trigger_len < 1 or epochs < 1 or sentences < 1:
            raise UserError("dbs needs epochs, trigger_len and sentences of at least 1")
        if set(positions) - {"start", "middle"} or not positions:
            raise UserError(f"dbs inserts its trigger at 'start' and/or 'middle', not {positions}")
        self.epochs, self.trigger_len, self.sentences, self.lr = epochs, trigger_len, sentences, lr
        self.scheduler_step_size = scheduler_step_size or max(1, epochs // 4)  # the original's 50 of 200
        self.scheduler_gamma = scheduler_gamma
        self.init_temp, self.max_temp = init_temp, max_temp
        self.check_every, self.multiplier = temp_scaling_check_epoch, temp_scaling_multiplier
        self.loss_barrier, self.noise_ratio, self.rollback_thres = loss_barrier, noise_ratio, rollback_thres
        self.eps_to_one_hot, self.positions = eps_to_one_hot, tuple(positions)

    def detect(self, model, ctx):
        best = self.invert(model, ctx).best
        return Detection(score=loss_score(best.best_loss), target_label=best.target)

    # -- the search --------------------------------------------------------------------------------------------
    def invert(self, model: nn.Module, ctx: DetectContext, targets: list[int] | None = None) -> Inversion:
        """Run every (target label, position) search (the labels `targets`, default all); each option's kept
        trigger and loss."""
        check_token_ids(ctx.x_clean, "dbs")
        for target in targets or []:
            check_target(target, ctx.num_classes, "dbs")
        embed = token_embedding(model)
        t, length = ctx.x_clean.shape[1], self.trigger_len
        if length >= t:
            raise UserError(f"a {length}-word trigger does not fit sentences of {t} tokens")
        options, rows, masks, owner = [], [], [], []
        for target in (range(ctx.num_classes) if targets is None else targets):
            for position in self.positions:
                x = victims(ctx, target, self.sentences, "dbs")
                stamped, mask = insert_tokens(x, torch.full((length,), PLACEHOLDER), insertion_points(x, position))
                owner.append(torch.full((len(x),), len(options)))
                options.append(Option(target, position))
                rows.append(stamped)
                masks.append(mask)
        x, inside, owner = torch.cat(rows), torch.cat(masks), torch.cat(owner)
        width = int((x != 0).sum(1).max())  # padding no sentence reaches: not run
        x, inside = x[:, :width], inside[:, :width]
        targets = torch.tensor([o.target for o in options])

        device = ctx.device
        c, v = len(options), embed.num_embeddings - FIRST_WORD
        if v < 1:
            raise UserError("dbs needs a vocabulary with words besides padding and <unk>")
        words = embed.weight.detach()[FIRST_WORD:].to(device)  # [V', D]: the model's own, never a copy it sees
        rel = (inside.long().cumsum(1) - 1).clamp(0, length - 1).to(device)  # [R, T]: which trigger word sits there
        inside = inside.to(device)
        owner_d, x_d, row_targets = owner.to(device), x.to(device), targets[owner].to(device)
        counts = torch.bincount(owner, minlength=c).to(device).float()

        g = torch.Generator().manual_seed(ctx.seed)
        theta = torch.zeros(c, length, v, device=device, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=self.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, self.scheduler_step_size, gamma=self.scheduler_gamma)
        temp = [self.init_temp] * c
        barrier = [self.loss_barrier] * c
        started, rollbacks = [False] * c, [0] * c
        ce_prev = [math.inf] * c
        slot: list[torch.Tensor | None] = [None]

        def patch(mod, inp, out):  # the trigger's soft embeddings at the placeholders, the sentence's elsewhere
            soft = slot[0][owner_d]  # [R, L, D]
            at_pos = soft.gather(1, rel.unsqueeze(-1).expand(-1, -1, soft.shape[-1]))  # [R, T, D]
            return torch.where(inside.unsqueeze(-1), at_pos.to(out.dtype), out)

        try:
            with evaluating(model), hooked(embed, patch):
                for epoch in range(self.epochs):
                    noise = torch.zeros(c, length, v)
                    for i in range(c):
                        if rollbacks[i] >= self.rollback_thres:
                            rollbacks[i] = 0
                            barrier[i] = min(barrier[i] * 2, options[i].best_loss - 1e-3)
                        if epoch % self.check_every == 0 and started[i]:
                            if ce_prev[i] < barrier[i]:
                                temp[i] /= self.multiplier
                            else:
                                rollbacks[i] += 1
                                noise[i] = torch.rand(length, v, generator=g) * self.noise_ratio
                                temp[i] = min(temp[i] * self.multiplier, self.max_temp)
                    tau = torch.tensor(temp, device=device).view(c, 1, 1)
                    bound = torch.softmax(theta / tau + noise.to(device), -1)  # [C, L, V']
                    slot[0] = bound @ words  # [C, L, D]
                    logits = model(x_d)
                    ce_rows = F.cross_entropy(logits.float(), row_targets, reduction="none")
                    ce = torch.zeros(c, device=device).index_add(0, owner_d, ce_rows) / counts  # [C]
                    (grad,) = torch.autograd.grad(ce.sum(), theta)  # theta's alone: no .grad on the model
                    theta.grad = grad
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        hits = torch.zeros(c, device=device).index_add(
                            0, owner_d, (logits.argmax(1) == row_targets).float()) / counts
                        peak, argmax = bound.max(-1)  # [C, L]
                        off_one_hot = (length - peak.sum(-1)).cpu().tolist()
                    ce_now, asr = ce.detach().cpu().tolist(), hits.cpu().tolist()
                    for i, o in enumerate(options):
                        ce_prev[i] = ce_now[i]
                        if ce_now[i] <= barrier[i]:
                            started[i] = True
                        if off_one_hot[i] < self.eps_to_one_hot and ce_now[i] <= barrier[i]:  # dim_check
                            o.best_loss, o.best_asr = ce_now[i], asr[i]
                            o.trigger = (argmax[i].cpu() + FIRST_WORD).tolist()
                            barrier[i] = o.best_loss / 2
                            rollbacks[i] = 0
                    if epoch == self.epochs - 1:
                        for i, o in enumerate(options):
                            o.final_loss, o.final_trigger = ce_now[i], (argmax[i].cpu() + FIRST_WORD).tolist()
        finally:
            slot[0] = None
        return Inversion(options)
