"""Score participants' answers beside the automatic judge, as one run of the results store.

Per tool, over every stored answer to that tool's questions (one answer = one participant x one question):
- `mc_accuracy_human`: share of answers that picked the true trigger, also per trigger kind (`[kind=patch]`, ...)
  and crude vs insidious (`[crude]`, `[insidious]`), as the tracks split their metrics;
- `mc_chance_human`: the accuracy blind guessing would get on the same answers (the mean of 1/k over them, k the
  question's number of options);
- `mc_accuracy_judge_answered`: the automatic judge's accuracy on the same answers (each question weighted by
  how often people answered it), so the two accuracies compare like for like;
- `judge_human_agreement`: share of answers where the person picked what the judge picked;
- `human_answers`, `human_participants`: counts.
Answers by one person are not independent, nor are answers about one trojan: the 95% intervals are a two-way
cluster bootstrap over participants and trojans (`results.stats.cluster_bootstrap_mean`), and a cell with fewer
than 5 participants or trojans gets none. `fold_answers` writes the table as a run of its own (kind `survey`),
so `trojanbench report` shows it beside, never inside, the benchmark run whose bank was answered.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate, cluster_bootstrap_mean
from .answers import Answer, AnswerStore
from .bank import Bank

TASK = "survey"
NAN = float("nan")
HUMAN_METRICS = ("mc_accuracy_human", "mc_chance_human", "mc_accuracy_judge_answered", "judge_human_agreement",
                 "human_answers", "human_participants")


def human_metrics(bank: Bank, answers: list[Answer], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{tool: {metric: Estimate}} from the answers to `bank`'s questions (answers to other banks are ignored)."""
    per_tool: dict[str, list[tuple]] = defaultdict(list)
    for a in answers:
        q = bank.question(a.question_id)
        if a.bank != bank.key or q is None:
            continue
        # correctness from the bank, not the stored flag: the bank key pins the answer index anyway
        per_tool[q.tool].append((q, a, a.choice == q.answer))
    out: dict[str, dict[str, Estimate]] = {}

    def clustered(recs, value) -> Estimate:
        v = np.array([float(value(q, a, c)) for q, a, c in recs])
        return cluster_bootstrap_mean(v, [a.participant for _, a, _ in recs], [q.model_id for q, _, _ in recs],
                                      n_boot=n_boot, seed=seed)

    for tool in sorted(per_tool):
        recs = per_tool[tool]
        m: dict[str, Estimate] = {}
        m["mc_accuracy_human"] = clustered(recs, lambda q, a, c: c)
        for g in sorted({g for q, _, _ in recs for g in q.groups}):
            m[f"mc_accuracy_human[{g}]"] = clustered([r for r in recs if g in r[0].groups], lambda q, a, c: c)
        m["mc_chance_human"] = Estimate(float(np.mean([q.chance for q, _, _ in recs])), n=len(recs))
        judged = [(q, a, c) for q, a, c in recs if q.judge_choice is not None]
        m["mc_accuracy_judge_answered"] = clustered(judged, lambda q, a, c: q.judge_choice == q.answer)
        m["judge_human_agreement"] = clustered(judged, lambda q, a, c: q.judge_choice == a.choice)
        m["human_answers"] = Estimate(float(len(recs)), n=len(recs))
        participants = {a.participant for _, a, _ in recs}
        m["human_participants"] = Estimate(float(len(participants)), n=len(participants))
        out[tool] = m
    return out


def fold_answers(bank: Bank, results: str | Path, n_boot: int = 2000, seed: int = 0,
                 write: bool = True) -> list[ResultRow]:
    """Score the stored answers to `bank` and (unless `write=False`, or there are none) write the table into the
    results store as one complete run of kind `survey`. Returns the rows."""
    from ..report.html import View, view_row

    with AnswerStore(results) as store:
        answers = store.answers(bank.key)
    metrics = human_metrics(bank, answers, n_boot, seed)
    zoo_id = f"zoo:{bank.zoo or 'survey'}"
    rows = [ResultRow(tool, zoo_id, TASK, metric, None if np.isnan(est.value) else est.value, seed=seed,
                      extra={"low": est.low, "high": est.high, "n": est.n, "bank": bank.key})
            for tool, ms in metrics.items() for metric, est in ms.items()]
    if write and rows:
        with ResultsStore(results) as rs:
            target = rs.start_run("survey", {"bank": bank.key, "title": bank.title, "zoo": bank.zoo,
                                             "answers": len(answers), "n_boot": n_boot}, seed)
        with ResultsStore(target) as rs:
            view = View("Human study: which trigger is it? (accuracy per answer; 95% two-way cluster bootstrap over "
                        "participants and trojans)", "mc_accuracy_human", True,
                        ("mc_accuracy_human", "mc_chance_human", "mc_accuracy_judge_answered", "judge_human_agreement",
                         "human_answers", "human_participants"))
            rs.write(rows + [view_row(TASK, view)])
            rs.finish_run(target.run_id)
    return rows
