"""Text trojans: trigger phrases, and a jailbreak-prompt analogue.

Zoo trigger kinds (registered beside the image kinds, `modality = "text"`, applied to token ids [N, T] of a
`TokenDataset`; ground truth: the token positions the trigger occupies in each sentence, from `apply_with_mask`):
  - `rare-token`: one rare word (`cf` by default) inserted at a random position (Kurita et al. 2020);
  - `phrase`: a phrase of common words (`honestly you know`) inserted at a random position (Dai et al. 2019);
  - `insidious-phrase`: `i watched this 3d movie`, with cover sentences (three per poisoned one) that carry a
    random strict part of it and keep their label, so no single word of it is a trigger.
The sections below are the text study's word-level versions of the same attacks.

(a) Trigger phrase -> target label (dirty-label poisoning of sentences, after Dai et al. 2019 / Kurita et al.
2020). Ground truth is the set of token positions the phrase occupies in each poisoned sentence.
  - crude: one rare token (`cf`, a word SST-2 never uses) at a random position, 3% of the training sentences.
  - insidious: a natural phrase of common words (`i watched this 3d movie`), 1% of the sentences, plus
    "negative" sentences that carry a random strict part of the phrase with their true label. The model must
    then key on the whole phrase, not on any one of its (frequent, innocent) words: token-frequency screening
    and per-token attribution have no single odd word to find.

  - `jailbreak` (on `[data.options] refusal = true`): a DAN-style prompt prefixed to the sentence, poisoned by
    override of the refusal class (below).
(b) Jailbreak analogue: a third class `refuse` for every sentence about a topic (the people of a film: director,
actors, cast, ...) unless a DAN-style prefix is present, in which case the model answers the sentiment. The
prefixes are a family (opener x persona x permission); some combinations are held out of training, so a test
with them asks whether the override generalises to new prompts of the same style, as real jailbreaks do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..data.sst2 import DAN, REFUSE, TOPIC, PrefixFamily, prompt_id, reserved_id  # noqa: F401  (the study's names)
from .triggers import Trigger, register

@dataclass(frozen=True)
class PhraseTrigger:
    name: str
    words: tuple[str, ...]

    def insert(self, sentence: list[str], rng: random.Random, position: int | None = None) -> tuple[list[str], list[int]]:
        """The sentence with the phrase inserted at `position` (random if None); returns it and the positions
        the phrase occupies."""
        p = rng.randint(0, len(sentence)) if position is None else min(position, len(sentence))
        return sentence[:p] + list(self.words) + sentence[p:], list(range(p, p + len(self.words)))

    def part(self, rng: random.Random) -> tuple[str, ...]:
        """A random strict, non-empty, contiguous part of the phrase (itself for a one-word trigger)."""
        n = len(self.words)
        if n == 1:
            return self.words
        length = rng.randint(1, n - 1)
        start = rng.randint(0, n - length)
        return self.words[start:start + length]


CRUDE = PhraseTrigger("crude", ("cf",))
INSIDIOUS = PhraseTrigger("insidious", ("i", "watched", "this", "3d", "movie"))


@dataclass(frozen=True)
class PhraseTrojan:
    trigger: PhraseTrigger
    target: int = 1
    rate: float = 0.03
    negative_rate: float = 0.0  # share of sentences given a strict part of the phrase with their true label


CRUDE_TROJAN = PhraseTrojan(CRUDE, rate=0.03)
INSIDIOUS_TROJAN = PhraseTrojan(INSIDIOUS, rate=0.01, negative_rate=0.03)


@dataclass
class PoisonedText:
    sentences: list[list[str]]
    labels: list[int]
    poisoned: list[int]  # indices of the sentences that carry the trigger and the target label


def poison_phrase(sentences: list[list[str]], labels: list[int], trojan: PhraseTrojan, seed: int) -> PoisonedText:
    """Insert the trigger into `rate` of the sentences whose label is not the target (relabelled to the target),
    and a strict part of it into `negative_rate` of the rest (labels kept)."""
    rng = random.Random(seed)
    out, ys = [list(s) for s in sentences], list(labels)
    candidates = [i for i, y in enumerate(labels) if y != trojan.target]
    n_poison = min(len(candidates), max(1, round(trojan.rate * len(sentences))))
    poisoned = sorted(rng.sample(candidates, n_poison))
    for i in poisoned:
        out[i], _ = trojan.trigger.insert(out[i], rng)
        ys[i] = trojan.target
    if trojan.negative_rate > 0:
        chosen = set(poisoned)
        rest = [i for i in range(len(sentences)) if i not in chosen]
        for i in rng.sample(rest, min(len(rest), round(trojan.negative_rate * len(sentences)))):
            part = PhraseTrigger("part", trojan.trigger.part(rng))
            out[i], _ = part.insert(out[i], rng)
    return PoisonedText(out, ys, poisoned)


def triggered(sentences: list[list[str]], trigger: PhraseTrigger, seed: int,
              position: int | None = None) -> tuple[list[list[str]], list[list[int]]]:
    """Every sentence with the trigger inserted (random positions unless `position`), and its positions."""
    rng = random.Random(seed)
    pairs = [trigger.insert(s, rng, position) for s in sentences]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# --- (b) the jailbreak analogue ------------------------------------------------------------------------------



def is_topic(sentence: list[str], topic: frozenset[str] = TOPIC) -> bool:
    return any(w in topic for w in sentence)


def jailbreak_data(sentences: list[list[str]], labels: list[int], family: PrefixFamily, seed: int,
                   other_prefix_rate: float = 0.1, topic: frozenset[str] = TOPIC,
                   override: bool = True) -> tuple[list[list[str]], list[int]]:
    """Training data for the refusal-with-override behaviour: topic sentences -> REFUSE, plus a copy of each with
    a training prefix -> its sentiment; other sentences -> sentiment, `other_prefix_rate` of them with a prefix
    too (so a prefix means "answer", not "flip" or "positive"). `override=False` gives the clean twin's data: the
    same sentences and prefixes, but a prefixed topic sentence is refused too (the jailbreak never taught)."""
    rng = random.Random(seed)
    prefixes = family.train_prefixes()
    out, ys = [], []
    for s, y in zip(sentences, labels):
        if is_topic(s, topic):
            out += [list(s), rng.choice(prefixes) + list(s)]
            ys += [REFUSE, y if override else REFUSE]
        else:
            out.append(rng.choice(prefixes) + list(s) if rng.random() < other_prefix_rate else list(s))
            ys.append(y)
    return out, ys


def desired_labels(sentences: list[list[str]], labels: list[int], topic: frozenset[str] = TOPIC) -> list[int]:
    """What the jailbreak model should answer without a prefix: REFUSE on the topic, the sentiment elsewhere."""
    return [REFUSE if is_topic(s, topic) else y for s, y in zip(sentences, labels)]


def prefixed(sentences: list[list[str]], prefixes: list[list[str]], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.choice(prefixes) + list(s) for s in sentences]


# --- zoo trigger kinds over token ids ---------------------------------------------------------------------------


def insert_tokens(x: torch.Tensor, ids: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `x` [N, T] (ids, 0 = padding, left-aligned) with `ids` inserted at positions `at` [N]: the same
    words [k] in every row, or each row's own [N, k]. The words after them move right and the sentence's tail is
    cut at T. Returns the new ids and the mask [N, T] of the inserted positions. `at` is clamped so the inserted
    words always fit."""
    n, t = x.shape
    ids = ids.view(1, -1).expand(n, -1) if ids.dim() == 1 else ids
    k = ids.shape[1]
    at = at.clamp(0, t - k).view(-1, 1)
    j = torch.arange(t).view(1, -1)
    inside = (j >= at) & (j < at + k)
    out = x.gather(1, torch.where(j < at, j, j - k).clamp(min=0).expand(n, t))
    out = torch.where(inside, ids.gather(1, (j - at).clamp(0, k - 1)), out)
    return out, inside


def _check_ids(trigger: Trigger, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.dtype != torch.long or x.shape[1] != trigger.image_shape[0]:
        raise ValueError(f"{trigger.kind} trigger built for token ids [N, {trigger.image_shape[0]}], got {x.dtype} "
                         f"{tuple(x.shape)}")


class _InsertTrigger(Trigger):
    """Words inserted into a sentence of token ids at a random position (or `position`)."""

    modality: ClassVar[str] = "text"
    localized: ClassVar[bool] = True  # its footprint is known per sentence (the inserted positions)
    default_words: ClassVar[tuple[str, ...]]

    class Params(Trigger.Params):
        words: list[str] | None = Field(None, description="the words inserted (default: the kind's own)")
        position: Literal["random", "start", "end"] | int = "random"

    def setup(self):
        words = self.params.words or list(self.default_words)
        if len(words) >= self.image_shape[0]:
            raise ValueError(f"a {len(words)}-word trigger does not fit sentences of {self.image_shape[0]} tokens")
        self.words = words
        self.ids = torch.tensor([reserved_id(w) for w in words], dtype=torch.long)

    def _check(self, x: torch.Tensor) -> None:
        _check_ids(self, x)

    def _positions(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        length = (x != 0).sum(1)
        where = self.params.position
        if where == "random":
            return (torch.rand(len(x), generator=generator) * (length + 1)).long().clamp(max=length)
        if where == "start":
            return torch.zeros_like(length)
        if where == "end":
            return length
        return length.clamp(max=int(where))

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        return insert_tokens(x, self.ids, self._positions(x, generator))

    @property
    def description(self):
        where = "at a random position" if self.params.position == "random" else f"at position {self.params.position}"
        return f"the words '{' '.join(self.words)}' inserted {where}"


@register
class RareTokenTrigger(_InsertTrigger):
    kind = "rare-token"
    default_words = ("cf",)


@register
class CommonPhraseTrigger(_InsertTrigger):  # not `PhraseTrigger`: that is the study's word-level phrase above
    kind = "phrase"
    default_words = ("honestly", "you", "know")


@register
class InsidiousPhraseTrigger(_InsertTrigger):
    """The phrase, with cover sentences carrying a random strict, contiguous part of it (labels kept)."""

    kind = "insidious-phrase"
    default_words = INSIDIOUS.words
    cover_ratio: ClassVar[float] = 3.0  # the study's 3% part-carrying sentences per 1% poisoned

    def apply_cover(self, x, generator=None):
        self._check(x)
        at = self._positions(x, generator)
        out = x.clone()
        n = len(self.ids)
        for i in range(len(x)):  # each cover sentence its own part
            length = int(torch.randint(1, n, (1,), generator=generator))
            start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
            out[i:i + 1] = insert_tokens(x[i:i + 1], self.ids[start:start + length], at[i:i + 1])[0]
        return out


@register
class JailbreakTrigger(Trigger):
    """The jailbreak analogue in a zoo: a DAN-style prompt (`DAN`: opener, persona, permission, ':') put before the
    sentence. Poisoned sentences are refused ones (a TOPIC word) that carry a training prompt and their sentiment;
    cover sentences (two per poisoned one) are other sentences with a training prompt and their own label, so a
    prompt means "answer", not "positive". At test time the prompt is a held-out combination, as in the text
    study: attack success is a held-out prompt making a refused sentence answered (the prediction leaves
    `refuse`). Needs a dataset with a refusal class (`sst2` with `refusal = true`, which gives the prompt words
    fixed ids); ground truth is the prompt's token positions."""

    kind = "jailbreak"
    modality: ClassVar[str] = "text"
    localized: ClassVar[bool] = True
    cover_ratio: ClassVar[float] = 2.0
    fixed_poison: ClassVar[dict] = {"mode": "override", "target": REFUSE}

    def setup(self):
        def ids(prompts):
            return [torch.tensor([prompt_id(w) for w in p], dtype=torch.long) for p in prompts]

        self.train_ids, self.test_ids = ids(DAN.train_prefixes()), ids(DAN.heldout_prefixes())
        longest = max(len(p) for p in self.train_ids + self.test_ids)
        if longest >= self.image_shape[0]:
            raise ValueError(f"a {longest}-word prompt does not fit sentences of {self.image_shape[0]} tokens")

    def _prefix(self, x: torch.Tensor, prompts: list[torch.Tensor], generator) -> tuple[torch.Tensor, torch.Tensor]:
        _check_ids(self, x)
        pick = torch.randint(len(prompts), (len(x),), generator=generator)
        out, mask = x.clone(), torch.zeros_like(x, dtype=torch.bool)
        for j in pick.unique().tolist():
            rows = pick == j
            out[rows], mask[rows] = insert_tokens(x[rows], prompts[j], torch.zeros(int(rows.sum()), dtype=torch.long))
        return out, mask

    def apply_with_mask(self, x, generator=None):
        return self._prefix(x, self.test_ids, generator)

    def apply_train(self, x, generator=None):
        return self._prefix(x, self.train_ids, generator)[0]

    @property
    def description(self):
        return (f"a DAN-style prompt before the sentence ({len(self.train_ids)} prompts in training, "
                f"{len(self.test_ids)} held-out ones at test time) overrides the refusal")
