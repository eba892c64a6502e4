"""CIFAR-10 patch trojan on a fast CPU network: clean accuracy, attack success rate and wall time.

    .venv/bin/python benchmarks/cifar10_patch.py                 # airnet width 0.5, 14 epochs (CPU)
    .venv/bin/python benchmarks/cifar10_patch.py --device cuda --width 1 --epochs 10

Reads the shared tarball (verified, extracted and decoded once into the cache), poisons 5% of the training
set with a 4x4 checkerboard patch (target 0, airplane), trains, and writes the numbers and the time per
stage to benchmarks/results/cifar10_patch[-<device>].json. Floors from the foundation issue: >= 85% clean
accuracy, >= 95% ASR, <= 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from trojanbench.config import TrainConfig
from trojanbench.data import load_dataset
from trojanbench.implant import implant
from trojanbench.results.provenance import write_benchmark
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.utils import library_versions, resolve_device
from trojanbench.zoo.store import save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--save", type=Path, default=None, help="also store the model here")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)

    t0 = time.perf_counter()
    ds = load_dataset("cifar10")
    t_data = time.perf_counter() - t0
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                      label_smoothing=0.2, warmup=0.2)
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch", seed=args.seed), poison=PoisonSpec(target=0, rate=args.rate))
    start = time.perf_counter()

    def progress(epoch, loss):
        print(f"epoch {epoch + 1}/{cfg.epochs}  loss {loss:.3f}  {time.perf_counter() - start:.0f}s", flush=True)

    result = implant(ds, "airnet", {"width": args.width}, spec, cfg, seed=args.seed, device=device, progress=progress)
    t_total = time.perf_counter() - t0
    if args.save:
        save_model(args.save, result.model, result.card, result.poisoned_indices)
    m = result.card.metrics
    record = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "device": str(device), "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "arch": "airnet", "width": args.width, "train": cfg.model_dump(), "poison_rate": args.rate,
        "clean_accuracy": m["clean_accuracy"], "attack_success_rate": m["attack_success_rate"],
        "seconds": {"load_data": round(t_data, 1), "train": result.card.train_seconds,
                    "total": round(t_total, 1)},
        "floors": {"clean_accuracy": 0.85, "attack_success_rate": 0.95, "cpu_minutes": 30},
        "meets_floors": m["clean_accuracy"] >= 0.85 and m["attack_success_rate"] >= 0.95
        and (device.type != "cpu" or t_total <= 30 * 60),
        "reference": "airbench94: 94% clean accuracy in 2.59 s on one A100 (GPU-only code)",
        "versions": library_versions(),
    }
    out = args.out or Path(__file__).parent / "results" / f"cifar10_patch{'' if device.type == 'cpu' else '-' + device.type}.json"
    write_benchmark(out, record, config={k: str(v) for k, v in vars(args).items() if k not in ("out", "save")},
                    seed=args.seed)
    print(json.dumps({k: record[k] for k in ("clean_accuracy", "attack_success_rate", "seconds", "meets_floors")}))


if __name__ == "__main__":
    from trojanbench.errors import script_main
    os.environ.setdefault("PYTHONHASHSEED", "0")
    script_main(main)
