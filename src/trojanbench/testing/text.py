"""Sentences for tests of text tools whose answer must not be flipped by a word or two of sentiment: every
sentence's label is the majority of its sentiment words by a margin of at least three, so inserting one or two
words flips no clean model, and only a trigger does (on `data.sst2.write_synthetic_tarball`'s sentences one or two
sentiment words flip a clean model as surely as a trigger flips a trojaned one)."""

from __future__ import annotations

import random

POS = ["good", "great", "fine", "lovely", "superb", "moving", "funny", "charming"]
NEG = ["bad", "awful", "dull", "boring", "weak", "tedious", "flat", "clumsy"]
NEUTRAL = ["the", "a", "film", "movie", "story", "is", "with", "and", "of", "about", "its", "one", "that", "plot",
           "scenes", "time"]


def margin_sentences(n: int, seed: int, neutral: list[str] = NEUTRAL,
                     n_neutral: tuple[int, int] = (3, 6)) -> tuple[list[list[str]], list[int]]:
    """`n` sentences (word lists) and labels (0/1): `n_neutral` (inclusive range) neutral words and 3-5 sentiment
    words of the label, plus at most (that many - 3) of the other sentiment, at random places."""
    rng = random.Random(seed)
    out, labels = [], []
    for _ in range(n):
        y = rng.randrange(2)
        major = rng.randint(3, 5)
        words = [rng.choice(neutral) for _ in range(rng.randint(*n_neutral))]
        polar = [rng.choice(POS if y else NEG) for _ in range(major)]
        polar += [rng.choice(NEG if y else POS) for _ in range(rng.randint(0, major - 3))]
        for w in polar:
            words.insert(rng.randrange(len(words) + 1), w)
        out.append(words)
        labels.append(y)
    return out, labels
