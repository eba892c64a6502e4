"""Feature synthesis on text models: words that make the model predict the target label.

A text synthesizer returns a `WordStamp`: word ids and where they go in a sentence (its start, or its middle:
min(words, T/2), the two places DBS searches). The task scores it as it scores an image stamp (transfer ASR on
held-out sentences of other classes, the same method on the clean twin as the control) and also asks whether a
synthesized word is one of the trigger's (`word_hit`).

- `dbs-trigger`: DBS's inversion (the `dbs` detector's implementation, its dev-chosen trigger length) toward the
  given target label only; the kept hard trigger at the place it was searched (the last epoch's argmax words
  where no trigger was kept).
- `word-scan` (baseline): every vocabulary word inserted at both places into the same 32 sentences DBS searches
  on; the word and place that send most of them to the target. The brute force DBS relaxes into a gradient
  search, with the same information: the strongest cheap baseline we know.
- `random-words` (baseline): as many random vocabulary words as DBS's trigger, at the sentence's start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...trojans.text import insert_tokens
from ..detect.dbs import DBS, FIRST_WORD, check_token_ids, insertion_points, token_embedding, victims
from ..detect.text_baselines import flip_rates
from . import Synthesizer, register


@dataclass
class WordStamp:
    words: list[int]  # word ids, inserted in this order
    position: str = "start"  # "start" | "middle"
    mask = None  # nothing to draw (the image panel's footprint)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Sentences [N, T] (ids, 0 = padding) with the words inserted at the start or at min(words, T/2)."""
        return insert_tokens(x, torch.tensor(self.words, dtype=torch.long), insertion_points(x, self.position))[0]


@register("dbs-trigger")
class DBSTrigger(Synthesizer):
    modalities = ("text",)
    paper = DBS.paper
    fidelity = ("adapted: the `dbs` detector's inversion (its differences from the original apply) run toward the "
                "given target label only; the kept hard trigger, or the last epoch's argmax words if none was kept")

    def synthesize(self, model, target, ctx):
        best = DBS().invert(model, ctx, targets=[target]).best
        return WordStamp(best.trigger if best.trigger is not None else best.final_trigger, best.position)


@register("word-scan")
class WordScan(Synthesizer):
    modalities = ("text",)
    is_baseline = True
    fidelity = ("baseline: every vocabulary word inserted at the start and at the middle of the 32 sentences DBS "
                "searches on; the word and place that send most of them to the target")

    def synthesize(self, model, target, ctx):
        x = victims(ctx, target, DBS().sentences, "word-scan")
        best = None
        for position in ("start", "middle"):
            words, rates = flip_rates(model, x, insertion_points(x, position), ctx, who="word-scan")
            i = int(rates[:, target].argmax())
            if best is None or rates[i, target] > best[0]:
                best = (float(rates[i, target]), WordStamp([int(words[i])], position))
        return best[1]


@register("random-words")
class RandomWords(Synthesizer):
    modalities = ("text",)
    is_baseline = True
    fidelity = "baseline: as many random vocabulary words as DBS's trigger (not padding or <unk>), at the start"

    def synthesize(self, model, target, ctx):
        check_token_ids(ctx.x_clean, "random-words")
        vocab = token_embedding(model, "random-words").num_embeddings
        g = torch.Generator().manual_seed(ctx.seed * 1009 + target)
        words = torch.randint(FIRST_WORD, vocab, (DBS().trigger_len,), generator=g)
        return WordStamp(words.tolist())
