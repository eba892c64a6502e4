"""The question bank: what the synthesize track writes is what the app reads, and every malformed bank is a
UserError that names the problem."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from trojanbench.errors import UserError
from trojanbench.survey.bank import BANK_FILE, Question, load_bank, to_png, write_bank, write_bank_from_tensors


def test_round_trip_keeps_questions_and_upscales_images(tmp_path, make_bank):
    folder, questions = make_bank(tmp_path / "bank", n=4, kinds=("patch", "warp"))
    bank = load_bank(folder)
    assert list(bank.questions) == questions
    assert bank.title == "tiny survey" and bank.zoo == "toy"
    assert bank.question("q0002") == questions[2] and bank.question("nope") is None
    assert len(bank.image_paths) == 4 * (2 + 8)
    with Image.open(folder / "q0000" / "opt-3.png") as img:
        assert img.size == (96, 96)  # 8x8 scaled 12x, nearest-neighbour: every source pixel a flat 12x12 block
        arr = np.asarray(img)
    assert (arr[:12, :12] == arr[0, 0]).all() and len(np.unique(arr)) > 8
    assert not list(folder.rglob("*.tmp"))  # atomic writes leave no temp files


def test_array_layouts_and_pil_images_become_the_same_png(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.random((8, 8, 3))
    from_hwc = np.asarray(Image.open(_png(tmp_path / "a.png", hwc)))
    from_chw = np.asarray(Image.open(_png(tmp_path / "b.png", np.moveaxis(hwc, -1, 0))))
    from_u8 = np.asarray(Image.open(_png(tmp_path / "c.png", np.round(hwc * 255).astype(np.uint8))))
    from_pil = np.asarray(Image.open(_png(tmp_path / "d.png", Image.fromarray(np.round(hwc * 255).astype(np.uint8)))))
    assert from_hwc.shape == (96, 96, 3)
    assert (from_hwc == from_chw).all() and (from_hwc == from_u8).all() and (from_hwc == from_pil).all()
    gray = np.asarray(Image.open(_png(tmp_path / "e.png", rng.random((1, 32, 32)))))
    assert gray.shape == (96, 96)  # a single channel stays grayscale; 32 px scaled 3x
    with pytest.raises(UserError, match="shape"):
        to_png(rng.random((2, 8, 8, 3)))


def _png(path, image):
    path.write_bytes(to_png(image))
    return path


def test_key_tracks_content_not_the_judge(tmp_path, make_bank):
    folder, _ = make_bank(tmp_path / "bank")
    key = load_bank(folder).key
    assert load_bank(folder).key == key
    raw = json.loads((folder / BANK_FILE).read_text())
    raw["questions"][0]["judge_choice"] = (raw["questions"][0]["judge_choice"] + 1) % 8
    (folder / BANK_FILE).write_text(json.dumps(raw))
    assert load_bank(folder).key == key  # re-running the judge keeps the people's answers valid
    (folder / "q0000" / "opt-0.png").write_bytes(to_png(np.zeros((8, 8))))
    assert load_bank(folder).key != key  # a new picture is a new question


def _mutate(folder, fn):
    raw = json.loads((folder / BANK_FILE).read_text())
    fn(raw)
    (folder / BANK_FILE).write_text(json.dumps(raw))


@pytest.mark.parametrize("mutation, message", [
    (lambda r: r["questions"][0].update(answer=8), "answer"),
    (lambda r: r["questions"][0].update(answer=-1), "answer"),
    (lambda r: r["questions"][0].update(judge_choice=8), "judge_choice"),
    (lambda r: r["questions"][0].update(options=r["questions"][0]["options"][:1]), "options"),
    (lambda r: r["questions"][0].update(options=r["questions"][0]["options"][:3], answer=5), "names no option"),
    (lambda r: r["questions"][0].update(options=r["questions"][0]["options"][:3], answer=0, judge_choice=3),
     "names no option"),
    (lambda r: r["questions"][0].update(options=r["questions"][0]["options"][:2] * 2, answer=0, judge_choice=0),
     "distinct"),
    (lambda r: r["questions"][0].update(images=[]), "images"),
    (lambda r: r["questions"][0].update(images=r["questions"][0]["options"] * 2), "images"),
    (lambda r: r["questions"][1].update(id=r["questions"][0]["id"]), "appears twice"),
    (lambda r: r["questions"][0].update(id="q 1"), "id"),
    (lambda r: r["questions"][0].update(images=["../outside.png"]), "relative path"),
    (lambda r: r["questions"][0].update(images=["/etc/passwd.png"]), "relative path"),
    (lambda r: r["questions"][0].update(images=["q0000\\tool-0.png"]), "relative path"),
    (lambda r: r["questions"][0].update(images=["q0000/./tool-0.png"]), "relative path"),
    (lambda r: r["questions"][0].update(images=[BANK_FILE]), "png"),
    (lambda r: r["questions"][0].update(images=["q0000/missing.png"]), "missing"),
    (lambda r: r["questions"][0].update(judge="x"), "judge"),
    (lambda r: r["questions"][0].pop("tool"), "tool"),
    (lambda r: r.update(version=2), "version"),
    (lambda r: r.update(questions=[]), "questions"),
])
def test_malformed_banks_are_user_errors(tmp_path, mutation, message, make_bank):
    folder, _ = make_bank(tmp_path / "bank")
    _mutate(folder, mutation)
    with pytest.raises(UserError, match=message) as e:
        load_bank(folder)
    assert str(e.value).startswith(str(folder / BANK_FILE))


def test_missing_or_unreadable_banks(tmp_path):
    with pytest.raises(UserError, match="no question bank"):
        load_bank(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"holds no {BANK_FILE}"):
        load_bank(tmp_path / "empty")
    (tmp_path / "empty" / BANK_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_bank(tmp_path / "empty")


def test_symlink_out_of_the_bank_is_refused(tmp_path, make_bank):
    folder, _ = make_bank(tmp_path / "bank")
    secret = tmp_path / "secret.png"
    secret.write_bytes(to_png(np.ones((8, 8))))
    target = folder / "q0000" / "tool-0.png"
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(UserError, match="outside the bank folder"):
        load_bank(folder)


def test_write_bank_validates_before_writing(tmp_path):
    q = Question(id="q1", tool="t", model_id="m", trigger_kind="patch", images=["q1/a.png"],
                 options=[f"q1/o{i}.png" for i in range(8)], answer=0)
    with pytest.raises(UserError, match="no image given for 'q1/a.png'"):
        write_bank(tmp_path / "b", [q], {f"q1/o{i}.png": np.zeros((8, 8)) for i in range(8)})
    with pytest.raises(UserError, match="appears twice"):
        write_bank(tmp_path / "b", [q, q], {})
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValidationError):
        Question(id="q1", tool="t", model_id="m", trigger_kind="patch", images=["../a.png"],
                 options=[f"q1/o{i}.png" for i in range(8)], answer=0)


def test_write_bank_from_tensors_assigns_ids_and_paths(tmp_path):
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    questions = [{"tool": "adversarial-patch", "model_id": f"m{i}", "trigger_kind": "patch", "insidious": i == 1,
                  "images": list(torch.rand(3, 1, 8, 8, generator=g)), "options": list(torch.rand(8, 1, 8, 8, generator=g)),
                  "answer": i, "judge_choice": None if i else 4} for i in range(2)]
    write_bank_from_tensors(tmp_path / "bank", questions, "from tensors", zoo="digits-zoo")
    bank = load_bank(tmp_path / "bank")
    assert [q.id for q in bank.questions] == ["q0001", "q0002"] and bank.zoo == "digits-zoo"
    assert bank.questions[1].images == ["q0002/tool-0.png", "q0002/tool-1.png", "q0002/tool-2.png"]
    assert bank.questions[0].judge_choice == 4 and bank.questions[1].judge_choice is None
    with Image.open(tmp_path / "bank" / "q0001" / "opt-7.png") as img:
        assert img.size == (96, 96)
        assert np.asarray(img)[0, 0] == round(float(questions[0]["options"][7][0, 0, 0]) * 255)
    questions[0]["options"] = questions[0]["options"][:1]
    with pytest.raises(UserError, match="question q0001: options"):
        write_bank_from_tensors(tmp_path / "bank2", questions)


def test_a_question_may_offer_fewer_than_8_options(tmp_path):
    """A zoo with fewer than 8 distinct triggers asks with fewer options; chance is 1/k."""
    import torch

    g = torch.Generator().manual_seed(0)
    questions = [{"tool": "t", "model_id": "m", "trigger_kind": "style", "insidious": False,
                  "images": list(torch.rand(1, 1, 8, 8, generator=g)), "options": list(torch.rand(3, 1, 8, 8, generator=g)),
                  "answer": 2, "judge_choice": 1}]
    write_bank_from_tensors(tmp_path / "bank", questions, "three options")
    q = load_bank(tmp_path / "bank").questions[0]
    assert len(q.options) == 3 and q.answer == 2 and q.chance == pytest.approx(1 / 3)
