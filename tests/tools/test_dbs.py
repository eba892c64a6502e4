"""DBS (`dbs`, Shen et al. 2022) on tiny text transformers: on a model trojaned with a rare token its hard trigger
is that token and its target the trojan's, the hard trigger inserted for real (no hook) sends the victims to the
target, a clean twin scores lower; it is deterministic given the seed and leaves the model as it was.

The sentences are `testing.text.margin_sentences`: no word or two of sentiment flips a clean model there, so no
loss-based inversion could mistake sentiment for the trigger.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trojanbench.config import TrainConfig
from trojanbench.data.sst2 import TRIGGER_WORDS, TokenDataset, build_vocab, reserved_id
from trojanbench.implant import implant
from trojanbench.testing.text import margin_sentences
from trojanbench.tools.detect import DETECTORS, DetectContext
from trojanbench.tools.detect.dbs import DBS
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.trojans.text import insert_tokens

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
ARCH = {"dim": 16, "depth": 1, "heads": 2, "hidden": 32}
TRAIN = TrainConfig(epochs=10, optimizer="adamw", lr=0.005, weight_decay=0.01, augment=False, channels_last=False)


@pytest.fixture(scope="module")
def setting():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    try:
        words, labels = margin_sentences(512 + 128, seed=0)
        vocab = build_vocab(words, 60, reserved=TRIGGER_WORDS)
        x, y = vocab.encode(words, 20), torch.tensor(labels)
        ds = TokenDataset("margin", x[:512], y[:512], x[512:], y[512:], ["negative", "positive"], vocab)
        models = {}
        for target in (0, 1):
            spec = TrojanSpec(trigger=TriggerSpec(kind="rare-token"), poison=PoisonSpec(target=target, rate=0.1))
            trojaned = implant(ds, "text-transformer", ARCH, spec, TRAIN, seed=target)
            assert trojaned.card.metrics["attack_success_rate"] >= 0.95, trojaned.card.metrics
            models[target] = trojaned.model
        clean = implant(ds, "text-transformer", ARCH, None, TRAIN, seed=0)  # the twin of the target-0 trojan
        assert clean.card.metrics["clean_accuracy"] >= 0.95
        ctx = DetectContext(ds.x_test[:64], ds.y_test[:64], ds.num_classes, seed=0)
        yield {"ds": ds, "trojaned": models, "clean": clean.model, "ctx": ctx}
    finally:
        torch.set_num_threads(threads)


def test_the_default_trigger_length_is_the_dev_zoos_choice():
    """benchmarks/dbs_dev.py chose it on sst2-dev (never a scored zoo); the default must be what it wrote."""
    chosen = json.loads((RESULTS / "dbs_dev.json").read_text())
    assert chosen["zoo"] == "sst2-dev" and DBS().trigger_len == chosen["chosen_trigger_len"]


def test_dbs_is_registered_for_text_and_declares_its_paper_and_differences():
    cls = DETECTORS.get("dbs")
    assert cls is DBS and cls.modalities == ("text",) and "Dynamic Bound-scaling" in cls.paper
    assert cls.fidelity.startswith("adapted: ") and "trigger length 1 word, chosen on the dev zoo" in cls.fidelity
    assert "benign reference model" in cls.fidelity


@pytest.mark.parametrize("target", [0, 1])
def test_the_hard_trigger_is_the_rare_token_and_the_target_the_trojans(setting, target):
    model, ctx = setting["trojaned"][target], setting["ctx"]
    inv = DBS().invert(model, ctx)
    best = inv.best
    assert best.target == target and best.trigger is not None
    assert reserved_id("cf") in best.trigger, [setting["ds"].vocab.words[i] for i in best.trigger]
    assert best.best_loss < 0.1 and best.best_asr >= 0.9
    # the kept trigger, inserted as real words where the search put it, sends the victims to the target
    victims = ctx.x_clean[ctx.y_clean != target][:32]
    at = torch.zeros(len(victims), dtype=torch.long) if best.position == "start" else \
        (victims != 0).sum(1).clamp(max=victims.shape[1] // 2)
    stamped, _ = insert_tokens(victims, torch.tensor(best.trigger), at)
    model.eval()
    with torch.no_grad():
        assert (model(stamped).argmax(1) == target).float().mean() >= 0.9
    d = DBS().detect(model, ctx)
    assert d.target_label == target and d.score == pytest.approx(-torch.log10(torch.tensor(best.best_loss)).item())


def test_as_a_synthesizer_dbs_finds_the_trigger_word_toward_the_given_target(setting):
    from trojanbench.tools.synthesize.text import DBSTrigger

    for target, model in setting["trojaned"].items():
        stamp = DBSTrigger().synthesize(model, target, setting["ctx"])
        assert reserved_id("cf") in stamp.words and stamp.position in ("start", "middle")
        victims = setting["ctx"].x_clean[setting["ctx"].y_clean != target]
        model.eval()
        with torch.no_grad():
            assert (model(stamp.apply(victims)).argmax(1) == target).float().mean() >= 0.9


def test_a_trojaned_model_scores_above_its_clean_twin(setting):
    ctx = setting["ctx"]
    clean = DBS().detect(setting["clean"], ctx)
    trojaned = DBS().detect(setting["trojaned"][0], ctx)
    assert trojaned.score > clean.score + 1.0, (trojaned, clean)


def test_dbs_is_deterministic_given_the_seed(setting):
    model, ctx = setting["trojaned"][1], setting["ctx"]
    a, b = DBS(epochs=40).invert(model, ctx), DBS(epochs=40).invert(model, ctx)
    assert a == b


def test_dbs_leaves_the_model_as_it_was(setting):
    model = setting["trojaned"][1]
    model.train()
    before_modes = {n: m.training for n, m in model.named_modules()}
    model.zero_grad(set_to_none=False)  # training left gradients: DBS must not add to them
    params = {n: (p.detach().clone(), p.requires_grad, p.grad.clone()) for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    DBS(epochs=20).detect(model, setting["ctx"])
    assert {n: m.training for n, m in model.named_modules()} == before_modes
    for n, p in model.named_parameters():
        value, grad_flag, grad = params[n]
        assert torch.equal(p, value) and p.requires_grad == grad_flag and torch.equal(p.grad, grad), n
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_text_tools_given_images_or_an_image_model_say_so_in_one_line(setting):
    from trojanbench.errors import UserError
    from trojanbench.tools.detect.text_baselines import TokenScan
    from trojanbench.tools.synthesize.text import RandomWords, WordScan

    images = DetectContext(torch.rand(8, 3, 8, 8), torch.tensor([0, 1] * 4), 2, seed=0)
    for tool, call in (("dbs", lambda m, c: DBS(epochs=2).detect(m, c)), ("token-scan", TokenScan().detect),
                       ("word-scan", lambda m, c: WordScan().synthesize(m, 0, c)),
                       ("random-words", lambda m, c: RandomWords().synthesize(m, 0, c))):
        with pytest.raises(UserError, match=f"^{tool} works on token ids"):
            call(setting["trojaned"][0], images)
        with pytest.raises(UserError, match=f"^{tool} needs a text model with a token embedding"):
            call(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 2)), setting["ctx"])
