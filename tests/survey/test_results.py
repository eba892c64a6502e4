"""Scoring the answers: a hand-made example whose accuracies and agreement are counted by hand."""

import json

import pytest

from trojanbench.report.html import collect
from trojanbench.results import ResultsStore
from trojanbench.survey.answers import AnswerStore
from trojanbench.survey.bank import BANK_FILE, load_bank
from trojanbench.survey.results import fold_answers

# question: (tool, kind, insidious, answer, judge_choice)
QUESTIONS = {"q0000": ("A", "patch", False, 3, 3),  # the judge is right
             "q0001": ("B", "blended", False, 5, 1),  # the judge is wrong
             "q0002": ("A", "patch", True, 0, 6)}  # the judge is wrong
ANSWERS = [("p1", "q0000", 3), ("p1", "q0001", 1), ("p1", "q0002", 0),
           ("p2", "q0000", 3), ("p2", "q0002", 6),
           ("p3", "q0000", 3), ("p3", "q0002", 6)]


@pytest.fixture
def study(tmp_path, make_bank):
    folder, _ = make_bank(tmp_path / "bank", n=3, tools=("A", "B", "A"), kinds=("patch", "blended", "patch"))
    raw = json.loads((folder / BANK_FILE).read_text())
    for q in raw["questions"]:
        tool, kind, insidious, answer, judge = QUESTIONS[q["id"]]
        q.update(tool=tool, trigger_kind=kind, insidious=insidious, answer=answer, judge_choice=judge)
    (folder / BANK_FILE).write_text(json.dumps(raw))
    bank = load_bank(folder)
    results = tmp_path / "results.sqlite"
    with AnswerStore(results) as store:
        for pid, qid, choice in ANSWERS:
            assert store.add(bank.key, pid, qid, choice, bank.question(qid).answer, 1000)
        store.add("another-bank", "p9", "q0000", 0, 3, 1000)  # a different bank's answers never count here
    return bank, results


def test_accuracy_and_agreement_match_a_hand_count(study):
    bank, results = study
    rows = fold_answers(bank, results, n_boot=200)
    got = {(r.tool, r.metric): r for r in rows}
    value = {k: r.value for k, r in got.items()}
    # tool A, 6 answers: right on p1q0, p1q2, p2q0, p3q0 -> 4/6; the judge is right on the 3 answers to q0000;
    # people agree with the judge on p1q0, p2q0, p2q2, p3q0, p3q2 -> 5/6
    assert value[("A", "mc_accuracy_human")] == pytest.approx(4 / 6)
    assert value[("A", "mc_accuracy_human[kind=patch]")] == pytest.approx(4 / 6)
    assert value[("A", "mc_accuracy_human[crude]")] == pytest.approx(3 / 3)
    assert value[("A", "mc_accuracy_human[insidious]")] == pytest.approx(1 / 3)
    assert value[("A", "mc_accuracy_judge_answered")] == pytest.approx(3 / 6)
    assert value[("A", "judge_human_agreement")] == pytest.approx(5 / 6)
    assert value[("A", "human_answers")] == 6 and value[("A", "human_participants")] == 3
    # tool B, 1 answer: wrong, but what the judge picked
    assert value[("B", "mc_accuracy_human")] == 0 and value[("B", "mc_accuracy_human[kind=blended]")] == 0
    assert value[("B", "judge_human_agreement")] == 1 and value[("B", "mc_accuracy_judge_answered")] == 0
    assert value[("B", "human_answers")] == 1 and value[("B", "human_participants")] == 1
    assert ("A", "mc_accuracy_human[kind=blended]") not in got
    acc = got[("A", "mc_accuracy_human")]
    # 3 participants and 2 trojans: too few clusters for an interval (a cluster bootstrap needs 5 of each)
    assert acc.extra["n"] == 2 and acc.extra["low"] != acc.extra["low"]
    assert all(r.task == "survey" and r.model_id == "zoo:toy" for r in rows)


def test_rows_land_in_the_store_as_a_survey_run_and_the_report_reads_them(study, tmp_path):
    from trojanbench.report.html import render_report

    bank, results = study
    rows = fold_answers(bank, results, n_boot=50)
    with ResultsStore(results) as rs:
        run = rs.latest_complete()
        assert run.kind == "survey" and run.info["config"]["bank"] == bank.key
        stored = rs.rows(run.run_id, task="survey")
    assert len(stored) == len(rows) + 1  # the rows and the table's view
    tables, _ = collect(stored)
    by_tool = {s.tool: s for s in tables["survey"]}
    assert by_tool["A"].metrics["mc_accuracy_human"].value == pytest.approx(4 / 6)
    page = render_report(results, tmp_path / "report").read_text()
    assert "Human study" in page and "mc_accuracy_human" in page
    # folding again is a new run; the first stays as it was
    fold_answers(bank, results, n_boot=50)
    with ResultsStore(results) as rs:
        assert len(rs.runs()) == 2 and len(rs.rows(run.run_id, task="survey")) == len(stored)


def test_no_answers_no_rows(tmp_path, tiny_bank):
    assert fold_answers(tiny_bank, tmp_path / "empty.sqlite") == []
    with ResultsStore(tmp_path / "empty.sqlite") as rs:
        assert rs.count() == 0 and rs.runs() == []
