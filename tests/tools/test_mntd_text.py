"""MNTD (`mntd`, `mntd-oc`) on text models: the authors' rtNLP jumbo distribution (1-2 random words inserted at
min(length, loc < 10), random target, rate U(0.05, 0.5)), text shadows trained through the one training loop and
cached like image shadows (under keys that name the modality), soft queries in the token-embedding space fed through
the one hook layer; the audited model and the caller's RNG are left as they were.

The audited models are tiny transformers on sentences whose label is the majority of their sentiment words by a
margin of at least three (as tests/tools/test_dbs.py: inserting one or two words flips no clean model), half of
them trojaned with a rare token.

What is asserted of detection is the shadow-level separation (held-out jumbo shadows scored above held-out benign
ones), not that these trojaned models score above the clean ones: at this scale that held for fewer than half of the
meta-classifier seeds tried, while the held-out shadows separated for every one; on the dev zoo sst2-dev the
model-level AUROC is at chance too (benchmarks/results/mntd_text_dev.json)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from trojanbench.config import TrainConfig
from trojanbench.data.sst2 import TRIGGER_WORDS, TokenDataset, build_vocab
from trojanbench.implant import implant
from trojanbench.testing.text import NEUTRAL as ALL_NEUTRAL
from trojanbench.testing.text import margin_sentences as text_sentences
from trojanbench.tools.detect import DETECTORS, DetectContext, jumbo
from trojanbench.tools.detect.jumbo import (FIRST_WORD, JumboConfig, chunk_key, jumbo_dataset, sample_jumbo_text_trojan,
                                            shadow_states)
from trojanbench.tools.detect.mntd import MNTD, MNTDOneClass, initial_text_queries
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

NEUTRAL = ALL_NEUTRAL[:14]  # the first 14 (this test's data since it was written)
ARCH = {"dim": 16, "depth": 1, "heads": 2, "hidden": 32}
TRAIN = TrainConfig(epochs=8, optimizer="adamw", lr=0.005, weight_decay=0.01, augment=False, channels_last=False)
# tiny text shadows: the default recipe (AdamW as the zoo's text transformers) with fewer shadows and epochs
TINY = JumboConfig(train=16, val=16, epochs=8, batch_size=32, optimizer="adamw", lr=5e-3, weight_decay=0.01,
                   translate=0, warmup=0.1)
T = 16


def margin_sentences(n: int, seed: int):
    return text_sentences(n, seed, neutral=NEUTRAL, n_neutral=(2, 5))


@pytest.fixture(scope="module")
def setting():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        words, labels = margin_sentences(384 + 96, seed=0)
        vocab = build_vocab(words, 60, reserved=TRIGGER_WORDS)
        x, y = vocab.encode(words, T), torch.tensor(labels)
        ds = TokenDataset("margin", x[:384], y[:384], x[384:], y[384:], ["negative", "positive"], vocab)
        models, trojaned = [], []
        for i, word in enumerate(["cf", "mn", "bb"]):
            spec = TrojanSpec(trigger=TriggerSpec(kind="rare-token", params={"words": [word]}),
                              poison=PoisonSpec(target=i % 2, rate=0.1))
            models.append(implant(ds, "text-transformer", ARCH, spec, TRAIN, seed=10 + i).model)
            trojaned.append(1)
            models.append(implant(ds, "text-transformer", ARCH, None, TRAIN, seed=20 + i).model)
            trojaned.append(0)
        ctx = DetectContext(ds.x_test, ds.y_test, 2, seed=0)
        yield {"ds": ds, "models": models, "trojaned": trojaned, "ctx": ctx}
    finally:
        torch.set_num_threads(threads)


def test_mntd_is_registered_for_text_and_declares_the_text_differences():
    for name in ("mntd", "mntd-oc"):
        cls = DETECTORS.get(name)
        assert cls.modalities == ("image", "text")
        assert cls.paper.startswith("Xiaojun Xu") and cls.fidelity.startswith("adapted: ")
        assert "text" in cls.fidelity and "embedding" in cls.fidelity


def test_the_default_text_shadows_are_the_dev_zoos_choice():
    """benchmarks/mntd_text_dev.py measured them on sst2-dev (never a scored zoo); the default must be what it chose,
    and its cold build within the text benchmark's budget (about 90 CPU-seconds)."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from trojanbench.tools.detect.mntd import DEFAULT_TEXT_SHADOWS

    measured = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mntd_text_dev.json").read_text())
    assert measured["zoo"] == "sst2-dev" and measured["chosen"] == "default"
    assert measured["shadows"] == asdict(DEFAULT_TEXT_SHADOWS)
    assert measured["cold_build"]["shadows"] == 2 * (DEFAULT_TEXT_SHADOWS.train + DEFAULT_TEXT_SHADOWS.val)
    assert measured["cold_build"]["cpu_seconds"] <= 95


def test_the_text_jumbo_distribution_is_the_authors():
    rng = np.random.default_rng(0)
    v = 50
    draws = [sample_jumbo_text_trojan(v, 2, rng) for _ in range(2000)]
    assert {len(d.words) for d in draws} == {1, 2}
    assert {d.loc for d in draws} == set(range(10))
    words = torch.cat([d.words for d in draws])
    assert int(words.min()) == FIRST_WORD and int(words.max()) == v - 1  # never padding (0) or <unk> (1)
    assert {d.target for d in draws} == {0, 1} and all(0.05 <= d.rate <= 0.5 for d in draws)

    x = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 10]])
    d = jumbo.JumboTextTrojan(torch.tensor([40, 41]), loc=4, target=1, rate=0.5)
    assert d.apply(x).tolist() == [[5, 6, 7, 40, 41, 0], [5, 6, 7, 8, 40, 41]]  # at min(length, loc); T kept
    xj, yj = jumbo_dataset(x, torch.tensor([0, 0]), d, rng)
    assert len(xj) == 3 and torch.equal(xj[:2], x) and yj.tolist() == [0, 0, 1]


def test_image_shadow_keys_are_untouched_by_the_text_port():
    """Image shadows keep the keys they were cached under before text existed; text keys name the modality."""
    from trojanbench.train import TRAINER_VERSION
    from trojanbench.tools.detect.shadow import architecture_key, data_key, fixed_buffers_key
    from trojanbench.utils import canonical_json, sha256_bytes

    template = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y, cfg = torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), JumboConfig()
    before = sha256_bytes(canonical_json({  # the key as the image-only code computed it
        "format": "mntd-shadows/1", "trainer_version": TRAINER_VERSION, "arch": architecture_key(template),
        "fixed": fixed_buffers_key(template), "data": data_key(x, y), "classes": 2,
        "recipe": {"epochs": 30, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                   "translate": 1, "seed": 0},
        "kind": "jumbo", "chunk": 0, "size": 16}).encode())[:20]
    assert chunk_key(template, x, y, 2, cfg, "jumbo", 0) == before
    assert chunk_key(template, (x * 10).long(), y, 2, cfg, "jumbo", 0) != before
    assert "warmup" not in cfg.recipe() and TINY.recipe()["warmup"] == 0.1


def test_mntd_tells_held_out_jumbo_shadows_from_benign_ones_and_reuses_its_cache(setting, tmp_path, monkeypatch):
    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path))
    ctx, models = setting["ctx"], setting["models"]
    trained = []
    real = jumbo.train_shadow
    monkeypatch.setattr(jumbo, "train_shadow", lambda *a, **k: trained.append(1) or real(*a, **k))
    rng_state = torch.get_rng_state()
    det = MNTD(text_shadows=TINY)
    scores = np.array([det.detect(m, ctx).score for m in models])
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert len(trained) == 2 * (TINY.train + TINY.val) and det.builds[0].shadows_trained == len(trained)
    assert np.all(np.isfinite(scores)) and len(set(scores.tolist())) == len(models)
    assert max(det.builds[0].val_auroc) >= 0.6  # held-out jumbo shadows above benign ones (0.66-0.71 over seeds 0-4)
    (meta,) = det._meta.values()  # queries: 10 sequences of 10 word vectors of the model's width, tuned from N(0, 1e-3^2)
    start = initial_text_queries(10, 10, ARCH["dim"], torch.Generator().manual_seed(ctx.seed))
    assert meta.queries.shape == start.shape and (meta.queries - start).abs().max() > 1e-2

    again = MNTD(text_shadows=TINY)  # same cache ($TROJANBENCH_CACHE): read back, nothing retrained
    assert np.allclose([again.detect(m, ctx).score for m in models], scores, atol=1e-5)
    assert again.builds[0].meta_cached and len(trained) == 2 * (TINY.train + TINY.val)
    oc = MNTDOneClass(text_shadows=TINY)  # benign shadows shared with mntd's
    assert np.all(np.isfinite([oc.detect(m, ctx).score for m in models[:2]]))
    assert len(trained) == 2 * (TINY.train + TINY.val) and oc.builds[0].shadows_trained == 0
    assert list(tmp_path.glob("shadows/mntd-benign-*.safetensors"))


def test_mntd_text_is_deterministic_given_the_seed(setting, tmp_path):
    ctx, model = setting["ctx"], setting["models"][0]
    small = JumboConfig(**{**TINY.__dict__, "train": 16, "val": 16, "epochs": 2})
    a = MNTD(text_shadows=small, cache=tmp_path / "a").detect(model, ctx).score
    b = MNTD(text_shadows=small, cache=tmp_path / "b").detect(model, ctx).score
    assert a == b
    states_a, _ = shadow_states(model, ctx.x_clean, ctx.y_clean, 2, small, "jumbo", 2, tmp_path / "a")
    other = setting["models"][1]  # another audited model of the architecture: the same shadows (no weight is read)
    states_b, trained = shadow_states(other, ctx.x_clean, ctx.y_clean, 2, small, "jumbo", 2, tmp_path / "c")
    assert trained > 0 and all(torch.equal(sa[k], sb[k]) for sa, sb in zip(states_a, states_b) for k in sa)


def test_mntd_text_leaves_the_model_as_it_was(setting, tmp_path):
    ctx, model = setting["ctx"], setting["models"][2]
    small = JumboConfig(**{**TINY.__dict__, "epochs": 1})
    model.train()
    modes = {n: m.training for n, m in model.named_modules()}
    model.zero_grad(set_to_none=False)
    params = {n: (p.detach().clone(), p.requires_grad, p.grad.clone()) for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    for cls in (MNTD, MNTDOneClass):
        cls(text_shadows=small, cache=tmp_path).detect(model, ctx)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        value, flag, grad = params[n]
        assert torch.equal(p, value) and p.requires_grad == flag and torch.equal(p.grad, grad), n
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.zero_grad(set_to_none=True)
    model.eval()
