"""MNTD's mechanics: target-invariant features, jumbo shadow models, the audited models left untouched."""

import copy

import torch

from trojanbench.implant import implant
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.detect.mntd import MNTD, jumbo_models


def _model(seed=0):
    ds = tiny_dataset(classes=4, seed=seed)
    return ds, implant(ds, "cnn", {"width": 8, "depth": 2}, None, fast_train_config(3), seed=seed).model


def test_features_do_not_depend_on_which_label_is_which():
    ds, model = _model()
    permuted = copy.deepcopy(model)
    head = [m for m in permuted.modules() if isinstance(m, torch.nn.Linear)][-1]
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        head.bias.copy_(head.bias[perm])
    q = ds.x_test[:6]
    with torch.no_grad():
        assert torch.allclose(MNTD()._features(model.eval(), q), MNTD()._features(permuted.eval(), q), atol=1e-6)


def test_jumbo_models_are_fine_tuned_copies_and_fit_leaves_models_untouched():
    ds, model = _model()
    ctx = DetectContext(ds.x_test, ds.y_test, 4, seed=0)
    made, labels = jumbo_models([model], ctx, per_model=2, steps=30, g=torch.Generator().manual_seed(0))
    assert labels == [0, 1, 1] and len(made) == 3
    for m in made:  # fine-tuned copies: every weight moved, the original did not
        assert all(not torch.equal(a, b) for a, b in zip(m.parameters(), model.parameters()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    _, other = _model(seed=1)
    det = MNTD(queries=4, epochs=20, jumbo=1, jumbo_steps=10)
    det.fit([model, other], [0, 1], ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert 0.0 <= det.detect(model, ctx).score <= 1.0
