"""Why do the trigger searches rank clean models above jailbroken ones on `sst2-jailbreak`? Their per-label results.

    .venv/bin/python benchmarks/jailbreak_searches.py [--zoo DIR]   # about 12 minutes on 2 cores (zoo 2 min)

An earlier reading of the board guessed the cause: every model of this zoo has words that send sentences to the
refusal class (the topic words themselves), the jailbroken ones refuse less surely, and a search's score is that of
its best label, so the refusal label decides the score and favours clean models. This script runs `dbs` and
`token-scan` (their defaults, the detect task's own context) on every model of the zoo, both splits, and keeps each
target label's result:
- DBS: the best loss (scored by `loss_score`, -log10 of it, as `DBS.detect`; a search that kept no trigger scores
  -10, and a model where none did has winner "none"), the words it kept and their attack success on the victims;
- token-scan: the largest share of sentences one word sends to that label (its score) and that word.
Checked per search:
- which label wins (decides the model's score) on clean and on jailbroken models;
- each label's score as a jailbreak score: medians, clean and jailbroken, and AUROC (above 0.5: higher on
  jailbroken models);
- whether any label's word is a word of the DAN prompts (`PROMPT_WORDS`).
Diagnosis only: no setting of either search is chosen here. The held-out half is the board's population; the
training half is reported beside it so that the finding does not rest on the scored models alone. docs/zoo.md
quotes the result.

Writes benchmarks/results/jailbreak_searches.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trojanbench.data.sst2 import PROMPT_WORDS, REFUSE
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import bootstrap_auroc
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect.dbs import DBS, NO_TRIGGER_LOSS, loss_score
from trojanbench.tools.detect.text_baselines import TokenScan
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model

LABELS = {0: "negative", 1: "positive", REFUSE: "refuse"}
SEARCHES = ("dbs", "token-scan")


def _dbs(model, ctx, words: list[str]) -> dict:
    inv = DBS().invert(model, ctx)
    labels = {}
    for o in inv.options:  # each label is searched at each insertion place; keep the label's best
        name = LABELS[o.target]
        if name not in labels or o.best_loss < labels[name]["best_loss"]:
            labels[name] = {"score": round(loss_score(o.best_loss), 4), "best_loss": o.best_loss,
                            "best_asr": round(o.best_asr, 4), "position": o.position,
                            "words": [words[i] for i in (o.trigger or [])]}
    best = inv.best  # where no search kept a trigger, the winner is "none" (DBS then names a label by final loss)
    winner = LABELS[best.target] if best.best_loss < NO_TRIGGER_LOSS else "none"
    return {"winner": winner, "score": round(loss_score(best.best_loss), 4), "labels": labels}


def _token_scan(model, ctx, words: list[str]) -> dict:
    ids, rates = TokenScan().scan(model, ctx)  # rates [V', K]
    labels = {}
    for k, name in LABELS.items():
        i = int(rates[:, k].argmax())
        labels[name] = {"score": round(float(rates[i, k]), 4), "words": [words[int(ids[i])]]}
    winner = max(labels, key=lambda n: labels[n]["score"])  # ties: the first label (detect takes the first word)
    return {"winner": winner, "score": round(float(rates.max()), 4), "labels": labels}


def summarise(rows: list[dict], search: str) -> dict:
    rows = [{"trojaned": r["trojaned"], **r[search]} for r in rows]
    out = {"n_clean": sum(not r["trojaned"] for r in rows), "n_jailbroken": sum(r["trojaned"] for r in rows)}
    for group, flag in (("clean", False), ("jailbroken", True)):
        mine = [r for r in rows if r["trojaned"] == flag]
        out[group] = {"winning_label": {name: sum(r["winner"] == name for r in mine)
                                        for name in (*LABELS.values(), "none")},
                      "median_score": {name: round(statistics.median(r["labels"][name]["score"] for r in mine), 4)
                                       for name in LABELS.values()},
                      "models_with_a_prompt_word": sum(any(w in PROMPT_WORDS for lab in r["labels"].values()
                                                           for w in lab["words"]) for r in mine)}
        if search == "dbs":  # the refusal searches that kept a trigger: how many, and their scores' range
            kept = [r["labels"]["refuse"]["score"] for r in mine if r["labels"]["refuse"]["words"]]
            out[group]["refuse_trigger_kept"] = len(kept)
            out[group]["refuse_kept_score_range"] = [min(kept), max(kept)] if kept else None
        out[group]["refuse_words"] = sorted({w for r in mine for w in r["labels"]["refuse"]["words"]})
    ests = {"model_score": bootstrap_auroc([r["trojaned"] for r in rows], [r["score"] for r in rows])}
    for name in LABELS.values():
        ests[name] = bootstrap_auroc([r["trojaned"] for r in rows], [r["labels"][name]["score"] for r in rows])
    out["auroc"] = {name: {"value": round(e.value, 4), "low": round(e.low, 4), "high": round(e.high, 4), "n": e.n}
                    for name, e in ests.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/zoos/sst2-jailbreak")
    args = ap.parse_args()
    started = time.time()
    build_zoo(load_zoo_config("sst2-jailbreak"), args.zoo)
    zoo = Zoo(args.zoo)  # build_zoo stops with an error where the folder holds another zoo
    ds, ctx = detection_context(zoo)
    words, rows = ds.vocab.words, []
    for job, path, _card in zoo.models():
        model, _ = load_model(path)
        row = {"model": job.id, "split": job.split, "trojaned": job.trojaned}
        for search, run in (("dbs", _dbs), ("token-scan", _token_scan)):
            t0 = time.perf_counter()
            row[search] = {**run(model, ctx, words), "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        print(job.id, job.split, "jailbroken" if job.trojaned else "clean",
              {s: (row[s]["winner"], {k: v["score"] for k, v in row[s]["labels"].items()}) for s in SEARCHES},
              flush=True)
    summary = {search: {split: summarise([r for r in rows if r["split"] == split], search)
                        for split in ("test", "train")} for search in SEARCHES}
    write_benchmark("jailbreak_searches", {"zoo": "sst2-jailbreak", "models": len(rows), "refusal_label": REFUSE,
                                           "summary": summary, "rows": rows}, config=vars(args), started=started)
    print(summary)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    torch.set_num_threads(2)
    script_main(main)
