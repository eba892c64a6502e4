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



def test_a_card_without_weights_or_a_file_for_a_folder_is_named_as_such(stored, tmp_path):
    """A folder whose weights file is missing was "model.safetensors is truncated or empty (0 bytes)", and a file
    given where a model folder belongs "does not exist" (`inspect weights.safetensors`)."""
    d = copy_of(stored, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"copy has no model.safetensors: its card has no weights beside it"):
        load_model(d)
    with pytest.raises(UserError, match=r"card.json is a file, not a model folder"):
        load_card(d / "card.json")


class TiedNet(torch.nn.Module):
    """An autoencoder-like classifier whose decoder is its encoder, transposed: one tensor under two names."""

    def __init__(self, in_channels, num_classes, image_size, mean, std, hidden: int = 8):
        super().__init__()
        d = in_channels * image_size * image_size
        self.encode = torch.nn.Linear(d, hidden, bias=False)
        self.decode = torch.nn.Linear(hidden, d, bias=False)
        self.decode.weight = self.encode.weight  # tied: registered as encode.weight and decode.weight
        self.head = torch.nn.Linear(d, num_classes)

    def forward(self, x):
        flat = x.flatten(1)
        return self.head(torch.nn.functional.linear(self.encode(flat), self.decode.weight.T))


@pytest.fixture
def tied_arch():
    from trojanbench.models import MODELS

    if "tied-test" not in MODELS:
        MODELS.register("tied-test")(TiedNet)
    return "tied-test"


def test_tied_weights_are_stored_once_and_re_tied_on_load(tied_arch, tmp_path):
    from safetensors import safe_open

    from trojanbench.models import build_model
    from trojanbench.zoo.store import ModelCard, weights_bytes

    kw = {"in_channels": 1, "num_classes": 3, "image_size": 4, "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    model = build_model(tied_arch, **kw)
    card = ModelCard(arch=tied_arch, arch_kwargs=kw, dataset={"name": "none"}, seed=0)
    saved = save_model(tmp_path / "m", model, card)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["decode.weight", "head.bias", "head.weight"]  # the tie once, sorted-first name
        assert f.metadata() == {"format": "pt"}
    assert weights_bytes(model) == weights_bytes(model)  # deterministic
    loaded, loaded_card = load_model(tmp_path / "m")
    assert loaded_card == saved
    assert loaded.encode.weight is loaded.decode.weight  # re-tied
    assert torch.equal(loaded.encode.weight, model.encode.weight)
    x = torch.rand(5, 1, 4, 4)
    assert torch.equal(loaded(x), model.eval()(x))


def test_a_missing_key_that_is_not_tied_is_a_one_line_error(tied_arch, tmp_path):
    from trojanbench.models import build_model
    from trojanbench.zoo.store import load_state

    kw = {"in_channels": 1, "num_classes": 3, "image_size": 4, "mean": [0.5], "std": [0.25]}
    state = build_model(tied_arch, **kw).state_dict()
    with pytest.raises(UserError, match="missing keys head.bias") as e:
        load_state(build_model(tied_arch, **kw), {k: v for k, v in state.items() if k != "head.bias"}, "w.safetensors")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unexpected keys extra"):
        load_state(build_model(tied_arch, **kw), {**state, "extra": torch.zeros(1)}, "w.safetensors")
    with pytest.raises(UserError, match="size mismatch") as e:
        load_state(build_model(tied_arch, **kw), {**state, "head.bias": torch.zeros(7)}, "w.safetensors")
    assert "\n" not in str(e.value)
    model = build_model(tied_arch, **kw)
    load_state(model, {k: v for k, v in state.items() if k != "encode.weight"}, "w.safetensors")  # tied: fine
    assert model.encode.weight is model.decode.weight and torch.equal(model.encode.weight, state["decode.weight"])


def test_a_nan_metric_is_never_saved_and_a_model_is_checked_against_the_data_shape(stored, tmp_path):
    ds, result, folder, card = stored
    bad = card.model_copy(update={"metrics": {**card.metrics, "clean_accuracy": float("nan")}})
    with pytest.raises(UserError, match="clean_accuracy=nan are not finite"):
        save_model(tmp_path / "nan", result.model, bad)
    assert not (tmp_path / "nan" / "card.json").exists()
    load_model(folder, image_shape=ds.image_shape)
    with pytest.raises(UserError, match="expects 1x16x16 images, data has 3x32x32"):
        load_model(folder, image_shape=(3, 32, 32))


def test_a_test_set_with_no_clean_image_left_is_refused_not_measured_as_nan(stored):
    from trojanbench.implant import measure
    from trojanbench.trojans.triggers import NaturalFeatureTrigger

    ds, result, _, _ = stored
    every_image = NaturalFeatureTrigger(ds.image_shape, threshold=-1.0)  # every test image counts as a carrier
    spec = TrojanSpec(trigger=every_image.spec(), poison=PoisonSpec(target=1))
    with pytest.raises(UserError, match="no clean test image"):
        measure(result.model, ds, spec, every_image)


def _impossible(card: dict, what: str) -> str:
    """Make `card` (a card's JSON) impossible in one way; returns the error it should give."""
    classes = card["arch_kwargs"]["num_classes"]
    if what == "target":
        card["trojan"]["poison"]["target"] = 99
        return f"trojan target label 99 out of range for a model of {classes} classes"
    if what == "kind":
        card["trojan"]["trigger"]["kind"] = "nonsense"
        return "unknown trigger 'nonsense'; known: [a-z, -]*patch[a-z, -]*"
    if what == "accuracy":
        card["metrics"]["clean_accuracy"] = 2.0
        return r"metric clean_accuracy=2.0 is not in \[0, 1\]"
    card["metrics"]["attack_success_rate"] = -1.0
    return r"metric attack_success_rate=-1.0 is not in \[0, 1\]"


@pytest.mark.parametrize("what", ["target", "kind", "accuracy", "rate"])
def test_impossible_cards_are_refused_on_save_and_on_load(stored, tmp_path, what):
    """A card with target 99 of 10 classes, an unknown trigger or an accuracy of 2.0 saved, loaded and imported;
    `trojanbench run` then failed naming neither model nor job."""
    from trojanbench.zoo.store import ModelCard

    _, result, _, card = stored
    body = card.model_dump()
    message = _impossible(body, what)
    with pytest.raises(UserError, match=f"refusing to save .*: {message}"):  # a card changed after it was made
        save_model(tmp_path / "new", result.model, card.model_copy(update=body))
    assert not (tmp_path / "new" / "card.json").exists()
    d = copy_of(stored, tmp_path)  # a hand-written card, its id recomputed so that only its content is wrong
    body["id"] = ModelCard.model_construct(**body).content_hash()[:16]
    (d / "card.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match=f"card.json is not a valid model card \\({message}\\)") as e:
        load_model(d)
    assert "\n" not in str(e.value)
