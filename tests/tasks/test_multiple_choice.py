"""The multiple-choice judge: options are distinct as rendered (seed-invariant triggers enter the library once),
the true trigger itself is always picked, option orders differ per tool, ties cost a tool chance, and the judge
recognises a trigger's pattern when a tool paints it somewhere else, far above a random patch."""

from types import SimpleNamespace

import pytest
import torch

from trojanbench.implant import implant
from trojanbench.tasks.multiple_choice import (
    NEAR,
    OPTIONS,
    Candidate,
    Judge,
    chance,
    draw_options,
    find,
    option_order,
    render,
    rendering_distance,
    trigger_key,
    trigger_library,
)
from trojanbench.tools.synthesize import Stamp, TriggerStamp
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


def _cards(specs: list[TriggerSpec]):
    """Stand-ins for model cards: all the library reads is `card.trojan["trigger"]`."""
    return [SimpleNamespace(trojan={"trigger": s.model_dump()}) for s in specs]


# a zoo whose seed-invariant triggers come once per model, as a real zoo's do: emboss style, ink (whose
# threshold does not change what `apply` draws), checkerboard patches and blends, a checkerboard at random places
SEED_INVARIANT = (
    [TriggerSpec(kind="style", params={"filter": "emboss", "strength": 1.0}, seed=s) for s in (1, 2, 3)]
    + [TriggerSpec(kind="natural", params={"feature": "ink", "quantile": q}, seed=s) for s, q in ((4, 0.9), (5, 0.95))]
    + [TriggerSpec(kind="patch", params={"pattern": "checkerboard", "location": "bottom-right"}, seed=s) for s in (6, 7)]
    + [TriggerSpec(kind="blended", params={"pattern": "checkerboard", "alpha": 0.15}, seed=s) for s in (8, 9)]
    + [TriggerSpec(kind="patch", params={"pattern": "checkerboard", "location": "random", "size": 3}, seed=s)
       for s in (10, 11)])
SEED_DEPENDENT = ([TriggerSpec(kind="warp", params={"strength": 2.0}, seed=s) for s in (12, 13, 14)]
                  + [TriggerSpec(kind="blended", params={"pattern": "noise", "alpha": 0.2}, seed=s) for s in (15, 16)]
                  + [TriggerSpec(kind="patch", params={"pattern": "random", "location": "top-left"}, seed=s)
                     for s in (17, 18)])


@pytest.fixture(scope="module")
def probes(digits):
    return digits.x_test[:32]


@pytest.fixture(scope="module")
def reference(digits):
    return implant(digits, "cnn", {"width": 16, "depth": 3}, None, seed=1).model


def test_seed_invariant_triggers_enter_the_library_once(probes):
    cards = _cards(SEED_INVARIANT + SEED_DEPENDENT)
    lib = trigger_library(cards, probes)
    assert len(lib) == 5 + len(SEED_DEPENDENT)  # 5 seed-invariant looks, each seed-dependent trigger its own
    for card in cards:  # every model's trigger is found, merged or not
        assert find(lib, trigger_key(card)).holds(trigger_key(card))
    emboss = find(lib, trigger_key(cards[0]))
    assert emboss is find(lib, trigger_key(cards[2])) and len(emboss.aliases) == 2
    renders = [render(c.trigger, probes) for c in lib]
    for i in range(len(lib)):
        for j in range(i):
            assert rendering_distance(renders[i], renders[j], probes) > NEAR
            assert not torch.equal(renders[i], renders[j])


def test_options_of_every_question_are_pairwise_different_when_rendered(probes):
    lib = trigger_library(_cards(SEED_INVARIANT + SEED_DEPENDENT), probes)
    for i, true in enumerate(lib):
        for seed in range(3):
            options, answer = draw_options(true, lib, seed=100 * i + seed)
            assert len(options) == OPTIONS and options[answer] is true
            renders = [render(o.trigger, probes) for o in options]
            assert all(not torch.equal(renders[a], renders[b]) for a in range(len(options)) for b in range(a))


def test_fewer_distinct_triggers_give_fewer_options_never_copies(probes):
    lib = trigger_library(_cards(SEED_INVARIANT), probes)  # 11 models, 5 distinct looks
    options, answer = draw_options(lib[0], lib, seed=0)
    assert len(options) == 5 and options[answer] is lib[0] and chance(options) == pytest.approx(0.2)
    assert len({id(o) for o in options}) == 5
    options, answer = draw_options(lib[0], lib[:1], seed=0)  # a zoo of one distinct trigger
    assert options == [lib[0]] and answer == 0


def test_options_are_deterministic_and_shown_in_an_order_per_tool():
    lib = _library()
    options, answer = draw_options(lib[0], lib, seed=3)
    assert len(options) == OPTIONS and options[answer] is lib[0]
    assert len({o.key for o in options}) == OPTIONS
    assert [o.key for o in draw_options(lib[0], lib, seed=3)[0]] == [o.key for o in options]
    assert len({tuple(o.key for o in draw_options(lib[0], lib, seed=s)[0]) for s in range(6)}) > 1
    orders = {tool: option_order(OPTIONS, 3, tool) for tool in ("tabor", "noise-patch", "exemplar", "all-methods")}
    assert all(sorted(o) == list(range(OPTIONS)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == len(orders)
    assert option_order(OPTIONS, 3, "tabor") == orders["tabor"] and option_order(OPTIONS, 4, "tabor") != orders["tabor"]


def test_ties_go_to_the_option_shown_first():
    scores = torch.tensor([0.0, 0.5, 0.5, 0.1])
    assert Judge.choose(scores) == 1 and Judge.choose(scores, [3, 2, 1, 0]) == 2
    # a tool whose change says nothing scores every option alike: over questions its picks follow the order
    flat = torch.zeros(OPTIONS)
    picks = [Judge.choose(flat, option_order(OPTIONS, s, "blank")) for s in range(200)]
    assert 0.05 < sum(p == 0 for p in picks) / 200 < 0.25  # about 1/8, not always the first option


def test_the_true_trigger_itself_is_always_picked(probes, reference):
    """The perfect tool: the true trigger, applied with placements of its own (a moving patch lands elsewhere
    than in the options' rendering), is picked on every question of a library that holds seed-invariant triggers."""
    lib = trigger_library(_cards(SEED_INVARIANT + SEED_DEPENDENT), probes)
    judge = Judge(probes, reference)
    for i, true in enumerate(lib):
        options, answer = draw_options(true, lib, seed=i)
        sigs = [judge.signature(judge.apply_candidate(o)) for o in options]
        tool = judge.signature(TriggerStamp(true.trigger, placement_seed=7).apply(judge.probes))
        order = option_order(len(options), i, "perfect")
        assert Judge.choose(judge.scores(tool, sigs), order) == answer, true.key


def test_judge_recognises_a_moved_patch_far_above_chance(probes, reference):
    lib = _library()
    judge = Judge(probes, reference)
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
            order = option_order(len(options), 10 * i + seed, "moved")
            hits += judge.choose(judge.scores(judge.signature(Stamp(pattern, mask).apply(judge.probes)), sigs), order) == answer
            noise = Stamp(torch.rand(SHAPE, generator=g), mask)
            noise_hits += judge.choose(judge.scores(judge.signature(noise.apply(judge.probes)), sigs), order) == answer
            trials += 1
    assert hits / trials >= 0.6 and noise_hits / trials <= 0.35, (hits / trials, noise_hits / trials)
