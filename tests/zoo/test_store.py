import json
import pickle

import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.implant import implant
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.zoo.store import load_card, load_model, load_poisoned_indices, save_model


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    ds = tiny_dataset()
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=1, rate=0.1))
    result = implant(ds, "cnn", {"width": 8, "depth": 2}, spec, fast_train_config(2), seed=0)
    folder = tmp_path_factory.mktemp("store") / "m"
    card = save_model(folder, result.model, result.card, result.poisoned_indices)
    return ds, result, folder, card


def copy_of(stored, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(stored[2], dst)
    return dst


def test_roundtrip_gives_the_same_model_card_and_indices(stored):
    ds, result, folder, card = stored
    model, loaded = load_model(folder)
    assert loaded == card and len(card.id) == 16 and card.trojaned
    assert torch.equal(model(ds.x_test), result.model(ds.x_test))
    assert torch.equal(load_poisoned_indices(folder), result.poisoned_indices)
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors", "poisoned.json"]
    for key in ("arch", "arch_kwargs", "dataset", "seed", "trojan", "metrics", "train_seconds", "versions",
                "weights_sha256", "poisoned_indices_file"):
        assert getattr(card, key) not in (None, "", {}), key


def test_pickle_named_safetensors_is_refused(stored, tmp_path):
    d = copy_of(stored, tmp_path)
    (d / "model.safetensors").write_bytes(pickle.dumps({"w": torch.zeros(3)}))
    with pytest.raises(UserError, match="pickle") as e:
        load_model(d)
    assert "\n" not in str(e.value)
    torch.save({"w": torch.zeros(3)}, d / "model.safetensors")
    with pytest.raises(UserError, match="pickle"):
        load_model(d)


def test_truncated_weights_are_refused(stored, tmp_path):
    d = copy_of(stored, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="does not match its card|not a valid safetensors"):
        load_model(d)


def test_tampered_card_is_refused(stored, tmp_path):
    d = copy_of(stored, tmp_path)
    card = json.loads((d / "card.json").read_text())
    card["metrics"]["attack_success_rate"] = 0.0
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="modified after it was written"):
        load_model(d)


def test_swapped_weights_and_indices_are_refused(stored, tmp_path):
    ds, result, folder, _ = stored
    d = copy_of(stored, tmp_path)
    from safetensors.torch import save_file

    state = {k: v + 1 if v.is_floating_point() else v for k, v in result.model.state_dict().items()}
    save_file(state, d / "model.safetensors")
    with pytest.raises(UserError, match="does not match its card"):
        load_model(d)
    d2 = copy_of(stored, tmp_path / "b")
    (d2 / "poisoned.json").write_text("[1, 2, 3]")
    with pytest.raises(UserError, match="poisoned.json"):
        load_model(d2)


def test_missing_and_unfinished_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_card(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="unfinished write"):
        load_card(tmp_path / "half")
    (tmp_path / "half" / "card.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid model card"):
        load_card(tmp_path / "half")
