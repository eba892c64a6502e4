"""MNTD (Xu et al. 2021) as the paper builds it: trained on its own shadow models only, so it never reads a zoo
model's label; the jumbo trojan distribution of the authors' code; shadows that owe nothing to the audited
models' weights; everything cached and read back; the audited models and the caller's RNG left untouched."""

import numpy as np
import pytest
import torch

from trojanbench.implant import implant
from trojanbench.results.stats import auroc
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tools.detect import DETECTORS, DetectContext, jumbo
from trojanbench.tools.detect.jumbo import JumboConfig, jumbo_dataset, sample_jumbo_trojan, shadow_states
from trojanbench.tools.detect.mntd import MNTD, MetaConfig, MNTDOneClass
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

ARCH = {"width": 8, "depth": 2}
# shadows per kind and their epochs (the default recipe: SGD as the audited models train)
TINY = JumboConfig(train=32, val=16, epochs=10)
SMALL = JumboConfig(train=16, val=16, epochs=1)  # enough to run the pipeline


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    ds = tiny_dataset(n_train=256, n_test=160, classes=4, seed=0)
    models, labels = [], []
    for i in range(12):  # audited models: alternately clean and a crude patch trojan (size, place, target vary)
        spec = None if i % 2 == 0 else TrojanSpec(
            trigger=TriggerSpec(kind="patch", params={"size": 3 + i % 3, "location": ["top-left", "bottom-right",
                                                                                      "top-right"][i % 3]}),
            poison=PoisonSpec(target=i % 4, rate=0.1))
        models.append(implant(ds, "cnn", ARCH, spec, fast_train_config(10), seed=i).model)
        labels.append(int(spec is not None))
    return ds, DetectContext(ds.x_test, ds.y_test, 4, seed=0), models, labels


class SealedLabels:
    """A zoo's labels that fail the test the moment anything reads them."""

    def _read(self, *_, **__):
        raise AssertionError("the detector read a zoo model's label")

    __getitem__ = __iter__ = __len__ = __bool__ = __contains__ = __array__ = __index__ = _read

    @property
    def trojaned(self):
        self._read()


def test_mntd_never_reads_a_zoo_label(tiny, tmp_path):
    _, ctx, models, _ = tiny
    for cls in (MNTD, MNTDOneClass):
        det = cls(shadows=SMALL, cache=tmp_path)
        assert not det.learned  # so the detect track never hands it the training split and its labels
        det.fit(models, SealedLabels(), ctx)  # a caller that does anyway: nothing is read
        scores = [det.detect(m, ctx).score for m in models]
        assert all(np.isfinite(scores)) and len(set(scores)) > 1
    assert {"mntd", "mntd-oc"} <= set(DETECTORS.names())
    assert DETECTORS.get("mntd").paper.startswith("Xiaojun Xu") and DETECTORS.get("mntd").fidelity


def test_mntd_tells_trojans_from_clean_models_on_shadows_alone_and_reuses_its_cache(tiny, tmp_path, monkeypatch):
    _, ctx, models, labels = tiny
    trained = []
    real = jumbo.train_shadow
    monkeypatch.setattr(jumbo, "train_shadow", lambda *a, **k: trained.append(1) or real(*a, **k))
    before = {k: v.clone() for k, v in models[1].state_dict().items()}
    grads = [p.requires_grad for p in models[1].parameters()]
    models[1].train()  # left in training mode: detection must put that back
    rng_state = torch.get_rng_state()

    det = MNTD(shadows=TINY, cache=tmp_path)
    scores = np.array([det.detect(m, ctx).score for m in models])
    assert torch.equal(torch.get_rng_state(), rng_state)  # the build left the caller's RNG alone
    assert len(trained) == 2 * (TINY.train + TINY.val) and det.builds[0].shadows_trained == len(trained)
    assert max(det.builds[0].val_auroc) > 0.5
    assert auroc(np.array(labels), scores) >= 0.8  # chance is 0.5

    again = MNTD(shadows=TINY, cache=tmp_path)
    assert np.allclose([again.detect(m, ctx).score for m in models], scores, atol=1e-5)
    assert again.builds[0].meta_cached and len(trained) == 2 * (TINY.train + TINY.val)  # read back, not retrained
    other_meta = MNTD(shadows=TINY, meta=MetaConfig(epochs=2), cache=tmp_path)
    other_meta.detect(models[0], ctx)  # another meta-classifier on the same shadows: no shadow is retrained
    assert not other_meta.builds[0].meta_cached and other_meta.builds[0].shadows_trained == 0
    assert all(torch.equal(before[k], v) for k, v in models[1].state_dict().items())
    assert [p.requires_grad for p in models[1].parameters()] == grads and models[1].training
    models[1].eval()


def test_shadows_owe_nothing_to_the_audited_weights(tiny, tmp_path):
    _, ctx, models, _ = tiny
    cfg = JumboConfig(epochs=1)
    a, _ = shadow_states(models[0], ctx.x_clean, ctx.y_clean, 4, cfg, "jumbo", 2, tmp_path / "a")
    b, _ = shadow_states(models[1], ctx.x_clean, ctx.y_clean, 4, cfg, "jumbo", 2, tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for sa, sb in zip(a, b) for k in sa)  # other weights, same shadows
    c, trained = shadow_states(models[0], ctx.x_clean[1:], ctx.y_clean[1:], 4, cfg, "jumbo", 2, tmp_path / "a")
    assert trained > 0 and not torch.equal(a[0]["1.weight"], c[0]["1.weight"])  # other data, other shadows
    first = dict(models[0].named_parameters())
    assert all(not torch.equal(s[k], first[k]) for s in a for k in first)


def test_jumbo_distribution_is_the_authors():
    rng = np.random.default_rng(0)
    draws = [sample_jumbo_trojan((1, 16, 16), 10, rng) for _ in range(2000)]
    sides = [d.pattern.shape[-1] for d in draws]
    assert set(sides) == {2, 3, 4, 5, 16}
    patches = [d for d in draws if d.pattern.shape[-1] < 16]
    blends = [d for d in draws if d.pattern.shape[-1] == 16]
    assert all(0.2 <= d.alpha <= 0.5 or d.alpha == 1.0 for d in patches)
    assert 0.15 < np.mean([d.alpha == 1.0 for d in patches]) < 0.35  # P(U(0.2, 0.6) > 0.5) = 1/4
    assert all(0.05 <= d.alpha <= 0.2 and d.row == d.col == 0 for d in blends)
    assert all(set(d.pattern.unique().tolist()) <= {0.0, 1.0} and 1 <= d.pattern.sum() < d.pattern.numel() for d in draws)
    assert all(0.05 <= d.rate <= 0.5 for d in draws) and {d.target for d in draws} == set(range(10))
    colour = sample_jumbo_trojan((3, 16, 16), 10, rng)
    assert colour.pattern.shape[0] == 3 and 0 <= colour.pattern.min() and colour.pattern.max() <= 1

    x, y = torch.rand(200, 1, 16, 16), torch.randint(10, (200,))
    d = patches[0]
    xj, yj = jumbo_dataset(x, y, d, rng)
    added = int(200 * d.rate)
    assert len(xj) == 200 + added and torch.equal(xj[:200], x) and (yj[200:] == d.target).all()
    h = d.pattern.shape[-1]
    stamped = xj[200:, :, d.row:d.row + h, d.col:d.col + h]
    if d.alpha == 1.0:
        assert torch.equal(stamped, d.pattern.expand_as(stamped))


def test_workers_that_need_the_same_shadows_share_their_training(tiny, tmp_path):
    """A pool's workers build MNTD's shadows at once: each chunk another worker is building is left to it and read
    from its file when it is done, so no chunk is trained twice (here the other worker holds chunk 0)."""
    import threading

    from trojanbench.tools.detect.jumbo import CHUNK, FORMAT, chunk_key
    from trojanbench.tools.detect.shadow import claim, save_states

    _, ctx, models, _ = tiny
    cfg = JumboConfig(epochs=1)
    path = tmp_path / f"mntd-jumbo-{chunk_key(models[0], ctx.x_clean, ctx.y_clean, 4, cfg, 'jumbo', 0)}.safetensors"
    others_done, held = threading.Event(), threading.Event()
    marker = {"1.weight": torch.full_like(models[0].state_dict()["1.weight"], 7.0)}

    def other_worker():
        with claim(path) as got:
            assert got
            held.set()
            assert others_done.wait(120)  # this worker is slow: it finishes chunk 0 after the rest
            save_states(path, [{k: v.clone() for k, v in marker.items()} for _ in range(CHUNK)], fmt=FORMAT)

    thread = threading.Thread(target=other_worker)
    thread.start()
    assert held.wait(30)
    done = []
    states, trained = shadow_states(models[0], ctx.x_clean, ctx.y_clean, 4, cfg, "jumbo", 3 * CHUNK, tmp_path,
                                    progress=lambda i, n: done.append(i) or (len(done) == 2 and others_done.set()))
    thread.join()
    assert trained == 2 * CHUNK  # chunks 1 and 2 here, chunk 0 by the other worker
    assert all(torch.equal(s["1.weight"], marker["1.weight"]) for s in states[:CHUNK])
    assert len(states) == 3 * CHUNK and not torch.equal(states[CHUNK]["1.weight"], marker["1.weight"])
