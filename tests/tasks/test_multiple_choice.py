"""The 8-way multiple-choice judge: options are well formed, and the judge recognises a trigger's pattern when a
tool paints it somewhere else, far above chance, while a random patch stays near chance."""

import pytest
import torch

from trojanbench.implant import implant
from trojanbench.tasks.multiple_choice import OPTIONS, Candidate, Judge, draw_options
from trojanbench.tools.synthesize import Stamp
from trojanbench.trojans import TriggerSpec, make_trigger

SHAPE = (1, 16, 16)


def _library() -> list[Candidate]:
    specs = [TriggerSpec(kind="patch", params={"pattern": p, "size": s, "location": loc}, seed=i)
             for i, (p, s, loc) in enumerate([("random", 4, "top-left"), ("checkerboard", 3, "bottom-right"),
                                              ("white", 3, "top-right"), ("random", 5, "bottom-left"),
                                              ("checkerboard", 5, "top-left"), ("random", 3, "bottom-right")])]
    specs += [TriggerSpec(kind="blended", params={"pattern": "noise", "alpha": 0.2}, seed=7),
              TriggerSpec(kind="warp", params={"strength": 2.0}, seed=8),
              TriggerSpec(kind="style", params={"filter": "emboss"}, seed=9),
              TriggerSpec(kind="natural", params={"feature": "ink", "threshold": 0.3}, seed=10)]
    return [Candidate(s.model_dump_json(), make_trigger(s, SHAPE)) for s in specs]


def test_options_hold_the_true_trigger_once_and_are_deterministic():
    lib = _library()
    options, answer = draw_options(lib[0], lib, seed=3)
    assert len(options) == OPTIONS and options[answer] is lib[0]
    assert len({o.key for o in options}) == OPTIONS
    assert [o.key for o in draw_options(lib[0], lib, seed=3)[0]] == [o.key for o in options]
    orders = {tuple(o.key for o in draw_options(lib[0], lib, seed=s)[0]) for s in range(6)}
    assert len(orders) > 1
    small, answer = draw_options(lib[1], lib[:3], seed=0)  # too few distinct triggers: random ones top it up
    assert len({o.key for o in small}) == OPTIONS and small[answer] is lib[1]


@pytest.fixture(scope="module")
def reference(digits):
    return implant(digits, "cnn", {"width": 16, "depth": 3}, None, seed=1).model


def test_judge_recognises_a_moved_patch_far_above_chance(digits, reference):
    lib = _library()
    judge = Judge(digits.x_test[:32], reference)
    hits, noise_hits, trials = 0, 0, 0
    g = torch.Generator().manual_seed(0)
    for i, true in enumerate(lib[:6]):
        t = true.trigger
        for seed in range(3):
            options, answer = draw_options(true, lib, seed=10 * i + seed)
            sigs = [judge.signature(judge.apply_candidate(o)) for o in options]
            # the tool found the trigger's pattern but pasted it at another place
            r, c = (16 - t.size) // 2, (16 - t.size) // 2 + seed - 1
            mask = torch.zeros(16, 16)
            mask[r:r + t.size, c:c + t.size] = 1
            pattern = torch.zeros(SHAPE)
            pattern[:, r:r + t.size, c:c + t.size] = t.pattern
            hits += int(judge.scores(judge.signature(Stamp(pattern, mask).apply(judge.probes)), sigs).argmax()) == answer
            noise = Stamp(torch.rand(SHAPE, generator=g), mask)
            noise_hits += int(judge.scores(judge.signature(noise.apply(judge.probes)), sigs).argmax()) == answer
            trials += 1
    assert hits / trials >= 0.6 and noise_hits / trials <= 0.35, (hits / trials, noise_hits / trials)


def test_the_true_trigger_itself_is_always_picked(digits, reference):
    lib = _library()
    judge = Judge(digits.x_test[:32], reference)
    for i, true in enumerate(lib):
        options, answer = draw_options(true, lib, seed=i)
        sigs = [judge.signature(judge.apply_candidate(o)) for o in options]
        assert int(judge.scores(sigs[answer], sigs).argmax()) == answer
