import numpy as np
import pytest

from trojanbench.survey.bank import Question, write_bank


def _make_bank(folder, n=3, tools=("adversarial-patch",), kinds=("patch", "blended"), seed=0, title="tiny survey",
              zoo="toy"):
    """A bank of `n` questions with 8x8 images made with numpy: each option is a distinct random pattern, and
    the tool's images are noisy copies of the true one. Returns the folder and the questions."""
    rng = np.random.default_rng(seed)
    questions, images = [], {}
    for i in range(n):
        qid = f"q{i:04d}"
        options = rng.random((8, 8, 8))
        answer = int(rng.integers(8))
        judge = int(rng.integers(8))
        q = Question(id=qid, tool=tools[i % len(tools)], model_id=f"model-{i}", trigger_kind=kinds[i % len(kinds)],
                     insidious=bool(i % 3 == 2), images=[f"{qid}/tool-{k}.png" for k in range(2)],
                     options=[f"{qid}/opt-{k}.png" for k in range(8)], answer=answer, judge_choice=judge)
        for k in range(2):
            images[f"{qid}/tool-{k}.png"] = np.clip(options[answer] + rng.normal(0, 0.1, (8, 8)), 0, 1)
        for k in range(8):
            images[f"{qid}/opt-{k}.png"] = options[k]
        questions.append(q)
    write_bank(folder, questions, images, title=title, zoo=zoo)
    return folder, questions


@pytest.fixture
def make_bank():
    return _make_bank


@pytest.fixture(scope="session")
def tiny_bank(tmp_path_factory):
    """Read-only for tests (written once: every PNG is fsynced, which is slow on a busy disk)."""
    from trojanbench.survey.bank import load_bank

    folder, _ = _make_bank(tmp_path_factory.mktemp("tiny") / "bank")
    return load_bank(folder)
