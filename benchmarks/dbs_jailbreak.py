"""Why does DBS rank clean models above jailbroken ones on `sst2-jailbreak`? Its per-label searches, measured.

    .venv/bin/python benchmarks/dbs_jailbreak.py [--zoo DIR]   # about 8 minutes on 2 cores (zoo 2 min, DBS 5 min)

docs/zoo.md guessed a cause from the board: every model of this zoo has words that send sentences to the refusal
class (the topic words themselves), the jailbroken ones refuse less surely, and DBS's score is its best search's
loss, so the refusal search decides the score and favours clean models. This script runs `dbs` (its defaults, the
detect task's own context) on every model of the zoo, both splits, and keeps each target label's best loss, the
words it kept and its attack success on the victims, so that the guess can be checked:
- which label's search wins (decides the score) on clean and on jailbroken models;
- the refusal search's loss and the sentiment searches' losses, clean against jailbroken (medians, and the AUROC of
  each label's -log10 loss as a jailbreak score: above 0.5 means that search's loss is lower on jailbroken models).
Diagnosis only: no DBS setting is chosen here. The held-out half is the board's population; the training half is
reported beside it so that the finding does not rest on the scored models alone.

Writes benchmarks/results/dbs_jailbreak.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from trojanbench.data.sst2 import REFUSE
from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import bootstrap_auroc
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect.dbs import DBS
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model

LABELS = {0: "negative", 1: "positive", REFUSE: "refuse"}


def _score(loss: float) -> float:
    return -math.log10(max(loss, 1e-30))  # DBS's own score of a search (`DBS.detect`)


def summarise(rows: list[dict]) -> dict:
    out = {"n_clean": sum(not r["trojaned"] for r in rows), "n_jailbroken": sum(r["trojaned"] for r in rows)}
    for group, flag in (("clean", False), ("jailbroken", True)):
        mine = [r for r in rows if r["trojaned"] == flag]
        out[group] = {"winning_label": {name: sum(r["winner"] == name for r in mine) for name in LABELS.values()},
                      "median_score": {name: statistics.median(_score(r["labels"][name]["best_loss"]) for r in mine)
                                       for name in LABELS.values()}}
    out["auroc_per_label"] = {}
    for name in LABELS.values():
        est = bootstrap_auroc([r["trojaned"] for r in rows], [_score(r["labels"][name]["best_loss"]) for r in rows])
        out["auroc_per_label"][name] = {"value": round(est.value, 4), "low": round(est.low, 4),
                                        "high": round(est.high, 4), "n": est.n}
    est = bootstrap_auroc([r["trojaned"] for r in rows], [r["score"] for r in rows])
    out["auroc_dbs"] = {"value": round(est.value, 4), "low": round(est.low, 4), "high": round(est.high, 4), "n": est.n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/zoos/sst2-jailbreak")
    args = ap.parse_args()
    started = time.time()
    build_zoo(load_zoo_config("sst2-jailbreak"), args.zoo)
    zoo = Zoo(args.zoo)  # build_zoo stops with an error where the folder holds another zoo
    ds, ctx = detection_context(zoo)
    words = ds.vocab.words
    dbs, rows = DBS(), []
    for job, path, _card in zoo.models():
        model, _ = load_model(path)
        t0 = time.perf_counter()
        inv = dbs.invert(model, ctx)
        labels = {}
        for o in inv.options:  # one insertion position per label by default; keep each label's best
            name = LABELS[o.target]
            if name not in labels or o.best_loss < labels[name]["best_loss"]:
                labels[name] = {"best_loss": o.best_loss, "best_asr": round(o.best_asr, 4), "position": o.position,
                                "trigger": [words[i] for i in (o.trigger or [])]}
        best = inv.best
        rows.append({"model": job.id, "split": job.split, "trojaned": job.trojaned, "winner": LABELS[best.target],
                     "score": _score(best.best_loss), "labels": labels, "seconds": round(time.perf_counter() - t0, 2)})
        print(job.id, job.split, "jailbroken" if job.trojaned else "clean", rows[-1]["winner"],
              {k: round(_score(v["best_loss"]), 2) for k, v in labels.items()}, flush=True)
    summary = {split: summarise([r for r in rows if r["split"] == split]) for split in ("test", "train")}
    write_benchmark("dbs_jailbreak", {"zoo": "sst2-jailbreak", "models": len(rows), "refusal_label": REFUSE,
                                      "summary": summary, "rows": rows}, config=vars(args), started=started)
    print(summary)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
