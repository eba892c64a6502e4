"""Choose latent adversarial training's defaults (`lat`: the hidden layer and the L2 radius epsilon) on the DEV zoo.

    .venv/bin/python benchmarks/lat_sweep.py [ZOO_DIR] [--layers -1,-2] [--epsilons 0.03,0.1,0.3] [--max-models 6]

ZOO_DIR defaults to /work/zoos/digits-dev (never a scoring zoo: digits-bench and digits-eval2 are refused). Each
(layer, epsilon) of the grid is registered for this process only as a `lat` variant and repaired beside the
fine-tuning references (`finetune-matched` is the equal-budget one) and `ft-sam`, with `run_repair_track` on the
zoo's train split, the first `--max-models` trojans, a 5% clean budget, nothing stored. The chosen setting is the
one with the lowest mean ASR after repair among those whose mean clean cost is at most 3 points (if none is,
the one with the lowest clean cost). Writes benchmarks/results/lat_sweep.json: per setting the mean ASR after,
clean cost and robust accuracy with 95% intervals and the paired verdict against the strongest fine-tuning
baseline, the full board, and the choice.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import time
from pathlib import Path

import torch

from trojanbench.results.boards import board_json
from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.repair import run_repair_track
from trojanbench.tools.repair import REPAIRERS, register
from trojanbench.tools.repair.lat import LatentAdversarialTraining

MAX_CLEAN_COST = 0.03
SCORING_ZOOS = ("digits-bench", "digits-eval2")


def variant(layer: int, epsilon: float) -> str:
    """Register `lat` with these settings under its own name (this process only) and return the name."""
    name = f"lat[layer={layer},eps={epsilon:g}]"
    if name not in REPAIRERS:
        cls = type(f"LAT_{abs(layer)}_{epsilon:g}".replace(".", "_"), (LatentAdversarialTraining,),
                   {"__init__": functools.partialmethod(LatentAdversarialTraining.__init__, layer=layer, epsilon=epsilon)})
        register(name)(cls)
    return name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", nargs="?", default="/work/zoos/digits-dev")
    ap.add_argument("--layers", default="-1,-2")
    ap.add_argument("--epsilons", default="0.03,0.1,0.3")
    ap.add_argument("--max-models", type=int, default=6)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="lat_sweep", help="a name under benchmarks/results/, or a .json path")
    a = ap.parse_args()
    if Path(a.zoo).name in SCORING_ZOOS:
        raise SystemExit(f"{a.zoo} is a scoring zoo; tune on the dev zoo only")
    torch.set_num_threads(a.threads)
    grid = [(int(layer), float(eps)) for layer in a.layers.split(",") for eps in a.epsilons.split(",")]
    names = {variant(layer, eps): (layer, eps) for layer, eps in grid}
    kwargs = {"holds": False} if "holds" in inspect.signature(run_repair_track).parameters else {}
    started, start = time.time(), time.perf_counter()
    boards = run_repair_track(a.zoo, None, tools=[*names, "ft-sam"], budgets=(a.budget,), split="train",
                              max_models=a.max_models, **kwargs)
    wall = time.perf_counter() - start
    board = boards[a.budget]
    data = board_json(board)
    rows = []
    for item in data["tools"]:
        layer, eps = names.get(item["tool"], (None, None))
        m = item["metrics"]
        rows.append({"tool": item["tool"], "layer": layer, "epsilon": eps, "role": item["role"], "verdict": item["verdict"],
                     "asr": m.get("asr"), "clean_cost": m.get("clean_cost"), "robust_acc": m.get("robust_acc"),
                     "der": m.get("der"), "seconds": m.get("seconds_per_model", m.get("seconds")), "vs_reference": item.get("vs_reference")})
    lat_rows = [r for r in rows if r["layer"] is not None]
    ok = [r for r in lat_rows if r["clean_cost"]["value"] <= MAX_CLEAN_COST]
    chosen = min(ok, key=lambda r: r["asr"]["value"]) if ok else min(lat_rows, key=lambda r: r["clean_cost"]["value"])
    payload = {"zoo": a.zoo, "split": "train", "budget": a.budget, "max_models": a.max_models, "n_models": board.scores[0].n_models,
               "rule": f"lowest mean ASR after with mean clean cost <= {MAX_CLEAN_COST}" + ("" if ok else " (none qualified: lowest clean cost)"),
               "epsilon_is": "L2 radius relative to each sample's activation norm at the layer",
               "layer_is": "index into trojanbench.tools.repair.lat.latent_sites(model) (cnn: its ReLU outputs)",
               "chosen": {"layer": chosen["layer"], "epsilon": chosen["epsilon"], "tool": chosen["tool"]},
               "settings": rows, "wall_seconds": round(wall, 1), "board": data}
    path = write_benchmark(a.out, payload, config=vars(a), started=started)
    for r in rows:
        print(f"{r['tool']:<26} {r['role']:<8} {r['verdict']:<8} asr {r['asr']['value']:.3f}  "
              f"clean_cost {r['clean_cost']['value']:.3f}  robust {r['robust_acc']['value']:.3f}  s/model {(r['seconds'] or {}).get('value') or float('nan'):.1f}")
    print(f"chosen: layer {chosen['layer']}, epsilon {chosen['epsilon']}  wall {wall:.0f} s -> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
