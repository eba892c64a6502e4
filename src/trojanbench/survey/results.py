"""Fold participants' answers into the leaderboard beside the automatic judge.

Per tool, over every stored answer to that tool's questions (one answer = one participant x one question):
- `mc_accuracy_human`: share of answers that picked the true trigger (chance 1/8), also per trigger kind
  (`[kind=patch]`, ...) and crude vs insidious (`[crude]`, `[insidious]`), as the tracks split their metrics;
- `mc_accuracy_judge_answered`: the automatic judge's accuracy on the same answers (each question weighted by
  how often people answered it), so the two accuracies compare like for like;
- `judge_human_agreement`: share of answers where the person picked what the judge picked;
- `human_answers`, `human_participants`: counts.
CIs are percentile bootstraps over answers; answers by one person are not independent, so with few
participants read them as optimistic.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate, bootstrap, mean
from .answers import Answer, AnswerStore
from .bank import Bank

TASK = "synthesize"
NAN = float("nan")
HUMAN_METRICS = ("mc_accuracy_human", "mc_accuracy_judge_answered", "judge_human_agreement", "human_answers",
                 "human_participants")


def human_metrics(bank: Bank, answers: list[Answer], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{tool: {metric: Estimate}} from the answers to `bank`'s questions (answers to other banks are ignored)."""
    per_tool: dict[str, list[tuple]] = defaultdict(list)
    for a in answers:
        q = bank.question(a.question_id)
        if a.bank != bank.key or q is None:
            continue
        # correctness from the bank, not the stored flag: the bank key pins the answer index anyway
        per_tool[q.tool].append((q, a, a.choice == q.answer))
    out: dict[str, dict[str, Estimate]] = {}
    for tool in sorted(per_tool):
        recs = per_tool[tool]
        m: dict[str, Estimate] = {}
        m["mc_accuracy_human"] = bootstrap(mean, np.array([c for _, _, c in recs], dtype=float), n_boot=n_boot, seed=seed)
        for g in sorted({g for q, _, _ in recs for g in q.groups}):
            vals = np.array([c for q, _, c in recs if g in q.groups], dtype=float)
            m[f"mc_accuracy_human[{g}]"] = bootstrap(mean, vals, n_boot=n_boot, seed=seed)
        judged = [(q, a) for q, a, _ in recs if q.judge_choice is not None]
        m["mc_accuracy_judge_answered"] = bootstrap(
            mean, np.array([q.judge_choice == q.answer for q, _ in judged], dtype=float), n_boot=n_boot, seed=seed)
        m["judge_human_agreement"] = bootstrap(
            mean, np.array([q.judge_choice == a.choice for q, a in judged], dtype=float), n_boot=n_boot, seed=seed)
        m["human_answers"] = Estimate(float(len(recs)), NAN, NAN, len(recs))
        participants = {a.participant for _, a, _ in recs}
        m["human_participants"] = Estimate(float(len(participants)), NAN, NAN, len(participants))
        out[tool] = m
    return out


def fold_answers(bank: Bank, results: str | Path, n_boot: int = 1000, seed: int = 0,
                 write: bool = True) -> list[ResultRow]:
    """Score the stored answers to `bank` and (unless `write=False`) write the aggregate rows into the results
    store, under task `synthesize` and model_id `zoo:<bank's zoo>` like the track's own rows. Returns the rows."""
    with AnswerStore(results) as store:
        answers = store.answers(bank.key)
    zoo_id = f"zoo:{bank.zoo or 'survey'}"
    metrics = human_metrics(bank, answers, n_boot, seed)
    with ResultsStore(results) as rs:
        # keep the track's own baseline flag for each tool: the report marks a tool a baseline from its rows
        baseline = {r.tool: bool(r.extra.get("baseline", False)) for r in rs.rows(task=TASK, model_id=zoo_id)
                    if r.metric not in HUMAN_METRICS and not r.metric.startswith("mc_accuracy_human[")}
        rows = [ResultRow(tool, zoo_id, TASK, metric, None if np.isnan(est.value) else est.value, seed=seed,
                          extra={"low": est.low, "high": est.high, "n": est.n, "baseline": baseline.get(tool, False),
                                 "bank": bank.key})
                for tool, ms in metrics.items() for metric, est in ms.items()]
        if write and rows:
            rs.write(rows)
    return rows
