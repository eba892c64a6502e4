"""Zoo throughput: the same small models on digits trained one at a time with the plain loop (the `serial`
executor, the reference) and many at once (the `batched` executor), in one run.

    .venv/bin/python benchmarks/zoo_throughput.py                       # 32 CNNs, width 16, 2 CPU cores
    .venv/bin/python benchmarks/zoo_throughput.py --arch mlp --device cuda

Writes models/second both ways, their ratio, and the mean clean accuracy / ASR band of each to
benchmarks/results/zoo_throughput[-<arch>][-<device>].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trojanbench.config import ZooConfig
from trojanbench.results.provenance import write_benchmark
from trojanbench.utils import library_versions
from trojanbench.zoo.build import Zoo, build_zoo


def zoo_config(models: int, arch: str, width: int, epochs: int) -> ZooConfig:
    kwargs = {"width": width, "depth": 3} if arch == "cnn" else {"width": width * 8, "depth": 2}
    return ZooConfig(name="throughput", models_per_arch=models, archs=[{"arch": arch, "kwargs": kwargs}],
                     trojans={"targets": [0, 3, 5, 8], "rates": [0.1]}, train={"epochs": epochs},
                     gate={"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0})


def summarise(folder: Path) -> dict:
    cards = [c for _, _, c in Zoo(folder).models()]
    clean = [c.metrics["clean_accuracy"] for c in cards]
    asr = [c.metrics["attack_success_rate"] for c in cards if c.trojaned]
    return {"models": len(cards), "mean_clean_accuracy": round(statistics.mean(clean), 4),
            "asr_min": round(min(asr), 4), "asr_median": round(statistics.median(asr), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--arch", default="cnn", choices=["cnn", "mlp"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-models", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = zoo_config(args.models, args.arch, args.width, args.epochs)
    record = {"config": cfg.model_dump(), "device": args.device, "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "versions": library_versions()}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("serial", "batched"):
            start = time.perf_counter()
            build_zoo(cfg, Path(tmp) / executor, executor=executor, batch_models=args.batch_models, device=args.device)
            seconds = time.perf_counter() - start
            record[executor] = {"seconds": round(seconds, 2), "models_per_second": round(args.models / seconds, 4),
                                **summarise(Path(tmp) / executor)}
            print(executor, record[executor], flush=True)
    record["speedup_batched_over_loop"] = round(record["batched"]["models_per_second"] /
                                                record["serial"]["models_per_second"], 3)
    record["clean_accuracy_gap_points"] = round(100 * (record["batched"]["mean_clean_accuracy"] -
                                                       record["serial"]["mean_clean_accuracy"]), 2)
    suffix = ("" if args.arch == "cnn" else f"-{args.arch}") + ("" if args.device == "cpu" else f"-{args.device.split(':')[0]}")
    out = args.out or Path(__file__).parent / "results" / f"zoo_throughput{suffix}.json"
    write_benchmark(out, record, config={k: str(v) for k, v in vars(args).items() if k != "out"})
    print(json.dumps({k: record[k] for k in ("speedup_batched_over_loop", "clean_accuracy_gap_points")}))


if __name__ == "__main__":
    main()
