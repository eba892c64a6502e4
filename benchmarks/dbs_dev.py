"""DBS's trigger length, chosen on the text DEV zoo only (`sst2-dev`; never `sst2-bench` or `sst2-jailbreak`).

    .venv/bin/python benchmarks/dbs_dev.py [--zoo /work/zoos/sst2-dev] [--lengths 1,2,3]   # about 8 minutes on 2 cores

Builds the `sst2-dev` zoo into --zoo if it is not there (24 SST-2 transformers, half trojaned, every trojan beside
its clean twin), then runs `dbs` with each trigger length on every model with the detect task's own context
(`detection_context`: the first 200 test sentences) and scores each length by model-detection AUROC (bootstrap
CI over models) and target accuracy on the trojans. The choice: the highest AUROC; a tie (within 0.01) goes to the
shorter trigger (cheaper, and fewer clean-model false positives from sentiment words). The original's trigger is
10 word pieces in sentences of up to 100; ours are whole words in sentences of up to 32, so the length is chosen.

Writes benchmarks/results/dbs_dev.json (per model and length: score, target found, seconds); tests/tools/test_dbs.py
checks that DBS's default trigger length is this file's choice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from trojanbench.results.provenance import write_benchmark
from trojanbench.results.stats import bootstrap_auroc
from trojanbench.tasks.detect import detection_context
from trojanbench.tools.detect.dbs import DBS
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model

TIE = 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/zoos/sst2-dev")
    ap.add_argument("--lengths", default="1,2,3")
    args = ap.parse_args()
    started = time.time()
    cfg = load_zoo_config("sst2-dev")
    build_zoo(cfg, args.zoo)
    zoo = Zoo(args.zoo)  # build_zoo stops with an error where the folder holds another zoo
    _, ctx = detection_context(zoo)
    lengths = [int(v) for v in args.lengths.split(",")]
    rows = []
    for job, path, card in zoo.models():
        model, _ = load_model(path)
        for length in lengths:
            t0 = time.perf_counter()
            d = DBS(trigger_len=length).detect(model, ctx)
            rows.append({"model": job.id, "trojaned": job.trojaned, "kind": job.trojan.trigger.kind if job.trojaned else None,
                         "target": job.trojan.poison.target if job.trojaned else None,
                         "trigger_len": length, "score": d.score, "target_found": d.target_label,
                         "seconds": time.perf_counter() - t0})
        print(job.id, [round(r["score"], 2) for r in rows[-len(lengths):]], flush=True)
    summary = {}
    for length in lengths:
        mine = [r for r in rows if r["trigger_len"] == length]
        est = bootstrap_auroc([r["trojaned"] for r in mine], [r["score"] for r in mine])
        trojans = [r for r in mine if r["trojaned"]]
        summary[str(length)] = {"auroc": est.value, "ci": [est.low, est.high], "n": est.n,
                                "target_accuracy": sum(r["target_found"] == r["target"] for r in trojans) / len(trojans),
                                "seconds_per_model": sum(r["seconds"] for r in mine) / len(mine)}
    top = max(s["auroc"] for s in summary.values())
    chosen = min(length for length in lengths if summary[str(length)]["auroc"] >= top - TIE)
    write_benchmark("dbs_dev", {"zoo": "sst2-dev", "models": len(rows) // len(lengths), "rows": rows,
                                "summary": summary, "rule": f"highest AUROC; within {TIE}, the shorter",
                                "chosen_trigger_len": chosen},
                    config=vars(args), started=started)
    print(summary, "chosen", chosen)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    torch.set_num_threads(2)
    script_main(main)
