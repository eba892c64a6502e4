"""How strong the retuning attack of the repair track is: its learning rate, chosen on the dev zoo.

    .venv/bin/python benchmarks/retune_dev.py      # about 3 minutes on 2 cores (the dev zoo must be built)

The retuning attack (Min et al., NeurIPS 2024) fine-tunes a repaired model on its clean budget plus 5 poisoned
samples for 5 epochs; P-ASR is the ASR after it. It only means something if it does not implant the trojan from
scratch: the same attack on the trojan's clean twin (the control) must stay low. For each learning rate this
script runs the repair track's holds measures on the dev zoo's training-split trojans (never the scored zoos) with
the anchors and the fine-tuning baselines, and records the clean twins' mean P-ASR beside do-nothing's (which
should stay at its ASR) and the fine-tuning references'. `tasks.repair.RETUNE_LR` is the largest rate whose
clean-twin P-ASR stays at or below 10%. Writes benchmarks/results/retune_dev.json.
"""

from __future__ import annotations

import argparse
import time

import trojanbench.tasks.repair as repair
from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark

LIMIT = 0.10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/zoos/digits-dev")
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--lrs", default="0.001,0.002,0.003,0.01")
    args = ap.parse_args()
    started = time.time()
    out = []
    for lr in [float(v) for v in args.lrs.split(",")]:
        repair.RETUNE_LR = lr
        board = repair.run_repair_track(args.zoo, None, tools=["do-nothing", "finetune"], budgets=(0.05,), split="train",
                                        max_models=args.models)[0.05]
        data = board_json(board)
        p_asr = {t["tool"]: t["metrics"].get("p_asr") for t in data["tools"]}
        asr = {t["tool"]: t["metrics"].get("asr") for t in data["tools"]}
        out.append({"lr": lr, "p_asr": p_asr, "asr": asr})
        print(lr, {k: v["value"] for k, v in p_asr.items() if v})
    ok = [r["lr"] for r in out if r["p_asr"]["clean-twin"]["value"] <= LIMIT]
    chosen = max(ok) if ok else None
    path = write_benchmark("retune_dev", {"population": f"dev zoo {args.zoo}, training split, first {args.models} trojans",
                                          "limit_clean_twin_p_asr": LIMIT, "chosen_lr": chosen, "sweep": out},
                           config=vars(args), started=started)
    print("chosen", chosen, "->", path)


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
