"""The multiple-choice test of feature synthesis (after Casper et al. 2023): given a tool's images for a trojaned
model, which of up to 8 candidate triggers (the true one and distractors from the zoo's trigger library) do they
resemble most?

**Options.** The library holds every distinct trigger of the zoo, where *distinct* means distinct *as rendered on
the judge's probe images*: two triggers whose renderings differ by at most `NEAR` (5%) of the larger change they
make are one option. Triggers whose look does not depend on their seed (an emboss style, an ink feature, a
checkerboard or white patch at a fixed place, a checkerboard blend) therefore enter once however many models carry
them, and a question never offers copies of the true trigger as distractors. A question draws up to 7 distractors;
a zoo with fewer than 8 distinct triggers gives questions of k < 8 options, chance 1/k (`chance(options)`).
Moving triggers (a patch at a random place) are rendered with the same placements (`PROBE_SEED`) for every option.
The distractor set of a trojan is the same for every tool; the order in which the options are shown is drawn per
(trojan, tool) (`option_order`), and the judge breaks exact ties by that order, so a tool whose images say nothing
(every score equal) is right at chance rather than whenever the true trigger happens to come first.

**The judge** must not be the audited model, or a tool could pass by reproducing that model's quirks. It compares
*what an image change does* under two views that know nothing of the audited model:
- pixel statistics that do not depend on where the change sits: the amplitude spectrum of the mean *painted
  content* (the changed image wherever it differs from the clean probe), so a tool that recovers the trigger's
  pattern but pastes it elsewhere still matches it (weight 2);
- an independent clean network (a clean model of the zoo's training split, never a model under audit): the mean
  change of its penultimate features (what the change means to a network that learned the data; weight 1).
Each view gives a cosine similarity between the tool's change and each candidate's; the judge picks the
candidate with the highest weighted sum. A tool's images and a candidate are both represented as "the probe
images with it applied", so stamps, blends and global triggers compare on equal terms.

Where the choices come from:
- the two views and their weights were chosen on the `digits-zoo` zoo (its 30 trojans and moved patches,
  tests/tasks/test_multiple_choice.py), before the dev zoo existed: location-bound pixel maps recovered no patch
  trojan, these views 5 of 6. They were re-checked on the dev zoo (`digits-dev`: `benchmarks/judge_ceiling.py
  --zoo <dev zoo> --split all --planned`, benchmarks/results/judge_ceiling-dev.json) and left unchanged: the true
  trigger itself, applied with placements of its own, is picked on all 24 of its trojans (17 built, plus the 5
  warp and 2 white-patch trojans its quality gate rejected), patches at random places included;
- `NEAR` was set on the dev zoo: its seed-invariant triggers (emboss, ink, the checkerboard at random places, the
  fixed white patch) render identically (distance 0), while its closest pair of different triggers (two noise
  blends) is 0.82 apart, so any threshold between leaves the same library; 0.05 is kept well clear of both.
The perfect-tool ceiling and the random-prior floor on the digits-bench zoo are in benchmarks/results/judge_ceiling.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..trojans import make_trigger
from ..trojans.triggers import Trigger

OPTIONS = 8
CHANGED = 0.02  # a pixel counts as painted where the change exceeds this
WEIGHTS = (2.0, 1.0)  # painted-content spectrum, clean network's features
NEAR = 0.05  # renderings closer than this share of their change are one option (chosen on the dev zoo)
PROBE_SEED = 0  # the placements of moving triggers on the probes, the same for every option


@dataclass
class Candidate:
    """An option of the library: a trigger, the spec key it was first seen under, and every other spec key that
    renders the same on the probes (`aliases`)."""

    key: str
    trigger: Trigger
    aliases: set[str] = field(default_factory=set)

    def holds(self, key: str) -> bool:
        return key == self.key or key in self.aliases


def trigger_key(card) -> str:
    return json.dumps(card.trojan["trigger"], sort_keys=True)


def render(trigger: Trigger, probes: torch.Tensor) -> torch.Tensor:
    """The probes with `trigger` applied, moving triggers at the placements every option shares."""
    return trigger.apply(probes, generator=torch.Generator().manual_seed(PROBE_SEED))


def rendering_distance(a: torch.Tensor, b: torch.Tensor, probes: torch.Tensor) -> float:
    """How far apart two renderings of the probes are, as a share of the larger change either makes (L2 over all
    pixels): 0 for pixel-identical renderings, about 1 or more for unrelated triggers."""
    scale = max(float((a - probes).norm()), float((b - probes).norm()))
    gap = float((a - b).norm())
    return 0.0 if gap == 0 else gap / max(scale, 1e-12)


def deduplicate(candidates: list[Candidate], probes: torch.Tensor) -> list[Candidate]:
    """One candidate per distinct rendering (see `NEAR`), in first-seen order; merged keys become aliases."""
    kept: list[tuple[Candidate, torch.Tensor]] = []
    for c in candidates:
        r = render(c.trigger, probes)
        twin = next((k for k, kr in kept if rendering_distance(r, kr, probes) <= NEAR), None)
        if twin is None:
            kept.append((Candidate(c.key, c.trigger, set(c.aliases)), r))
        else:
            twin.aliases |= {c.key, *c.aliases}
    return [k for k, _ in kept]


def trigger_library(cards, probes: torch.Tensor) -> list[Candidate]:
    """Every distinct trigger of the zoo's trojaned models (any split), deduplicated by its rendering on the judge's
    probes, in a fixed order."""
    if not isinstance(probes, torch.Tensor):  # the signature was (cards, image_shape) before options were deduplicated
        raise TypeError("trigger_library(cards, probes) needs the judge's probe images; use Judge.library(cards)")
    image_shape = tuple(probes.shape[1:])
    seen: dict[str, Candidate] = {}
    for card in cards:
        if card.trojan and trigger_key(card) not in seen:
            seen[trigger_key(card)] = Candidate(trigger_key(card), make_trigger(card.trojan["trigger"], image_shape))
    return deduplicate(list(seen.values()), probes)


def find(library: list[Candidate], key: str) -> Candidate:
    """The library's option for a trigger spec key (its own entry, or the entry it was merged into)."""
    for c in library:
        if c.holds(key):
            return c
    raise UserError(f"trigger {key} is not in the zoo's trigger library; rebuild the library from the zoo's cards")


def draw_options(true: Candidate, library: list[Candidate], seed: int) -> tuple[list[Candidate], int]:
    """The true trigger plus up to 7 distractors drawn from the library, in an order drawn from `seed` (one set per
    trojan, shared by every tool); returns the options and the index of the true one. Fewer than 8 distinct
    triggers in the library give fewer options (chance 1/k), never copies."""
    g = torch.Generator().manual_seed(seed)
    others = [c for c in library if not c.holds(true.key)]
    others = [others[i] for i in torch.randperm(len(others), generator=g)[: OPTIONS - 1].tolist()]
    options = [true] + others
    order = torch.randperm(len(options), generator=g).tolist()
    return [options[i] for i in order], order.index(0)


def chance(options: list) -> float:
    return 1.0 / len(options)


def option_order(k: int, seed: int, tool: str) -> list[int]:
    """The order in which `tool`'s question (for the trojan drawn with `seed`) shows its k options: a permutation
    of range(k), different across tools and trojans, stable across runs (a digest, not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}\0{tool}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    return torch.randperm(k, generator=g).tolist()


class Judge:
    """Scores image changes against candidate triggers; see the module docstring."""

    def __init__(self, probes: torch.Tensor, reference: nn.Module | None):
        self.probes = probes
        self.reference = reference.eval() if reference is not None else None
        self._base = self._embed(probes)

    def _embed(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.reference is None:
            return None
        from ..tools.detect import penultimate

        return penultimate(self.reference, x).mean(0)

    def signature(self, changed: torch.Tensor) -> list[torch.Tensor]:
        """The views of `changed` (the probes with a stamp or trigger applied, same order)."""
        diff = changed - self.probes
        painted = (changed * (diff.abs() > CHANGED).to(changed.dtype)).mean(0)
        views = [torch.fft.rfft2(painted).abs().flatten()]
        if self.reference is not None:
            views.append(self._embed(changed) - self._base)
        return views

    def scores(self, tool_sig: list[torch.Tensor], option_sigs: list[list[torch.Tensor]]) -> torch.Tensor:
        """Weighted cosine similarity of the tool's views to each option's: one score per option."""
        return torch.tensor([sum(w * float(F.cosine_similarity(a[None], b[None], eps=1e-8))
                                 for w, a, b in zip(WEIGHTS, tool_sig, sig)) for sig in option_sigs])

    @staticmethod
    def choose(scores: torch.Tensor, order: list[int] | None = None) -> int:
        """The index (into the options as drawn) of the best-scoring option; an exact tie goes to the option shown
        first in `order` (the question's display order), so ties cost a tool chance, not a fixed option."""
        order = list(range(len(scores))) if order is None else order
        best = float(scores.max())
        return next(i for i in order if float(scores[i]) == best)

    def apply_candidate(self, c: Candidate) -> torch.Tensor:
        return render(c.trigger, self.probes)

    def library(self, cards) -> list[Candidate]:
        """The zoo's trigger library deduplicated on this judge's probes."""
        return trigger_library(cards, self.probes)
