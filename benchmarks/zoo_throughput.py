"""Zoo throughput: the same small models on digits trained one at a time with the plain loop (the `serial`
executor, the reference) and many at once (the `batched` executor), in one run.

    .venv/bin/python benchmarks/zoo_throughput.py                       # 32 CNNs, width 16, 2 CPU cores
    .venv/bin/python benchmarks/zoo_throughput.py --arch mlp --device cuda

Writes models/second both ways, their ratio, and the mean clean accuracy / ASR band of each to
benchmarks/results/zoo_throughput[-<arch>][-<device>].json.

How close each trainer comes to the compute limit, measured in the same run: the GEMM peak is the best of several
timed float32 square matmuls (`torch.mm`, sizes 512-2048; FLOPs = 2n^3) on the same device and at the trainers'
torch thread count (`--threads`, default 1: what a zoo build gives each chunk), and, on the CPU, again on every
core (`machine_gemm_peak`: what the machine could do, against which a one-thread trainer is read too); a
trainer's achieved FLOP/s is the training FLOPs of its models divided by its wall time, where one
training step's FLOPs (forward and backward, at the zoo's batch size) are counted by
`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions only; elementwise work, data handling,
the quality gate's evaluation and card writing are in the wall time but not in the FLOPs, so the fraction is a
lower bound on how busy the arithmetic units are).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trojanbench.config import ZooConfig
from trojanbench.data import load_dataset
from trojanbench.implant import prepare
from trojanbench.results.provenance import write_benchmark
from trojanbench.utils import library_versions, torch_threads
from trojanbench.zoo.build import Zoo, build_zoo
from trojanbench.zoo.executors import cpu_count


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


def gemm_peak(device: str, sizes=(512, 1024, 2048), repeats: int = 5, threads: int | None = None) -> dict:
    """The best float32 matmul rate (FLOP/s) over `sizes` (on CUDA 2048-8192), each the best of `repeats` timed runs
    of at least 50 ms (CUDA: 200 ms, which also brings the clocks up from idle) after a warm-up, on `threads` torch
    threads (None: the process's setting; recorded as `threads`). On CUDA also with TF32 tensor cores allowed
    (`tf32_flops_per_second`): cuDNN runs float32 convolutions in TF32 by default (`torch.backends.cudnn.allow_tf32`),
    so a CNN trainer's fraction is read against that peak too."""
    cuda = device.startswith("cuda")
    sizes = (2048, 4096, 8192) if cuda else sizes
    with torch_threads(threads):
        peak, by_size = _best_mm(device, sizes, repeats)
        out = {"flops_per_second": peak, "by_size": by_size, "unit_by_size": "GFLOP/s", "threads": torch.get_num_threads()}
        if cuda:
            before = torch.backends.cuda.matmul.allow_tf32
            try:
                torch.backends.cuda.matmul.allow_tf32 = True
                out["tf32_flops_per_second"], out["tf32_by_size"] = _best_mm(device, sizes, repeats)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = before
            out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return out


def _best_mm(device: str, sizes, repeats: int) -> tuple[float, dict]:
    cuda = device.startswith("cuda")
    least = 0.2 if cuda else 0.05  # seconds per timed run

    def timed(a, b, reps: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    best = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        timed(a, b, 1)
        reps = 1
        while timed(a, b, reps) < least:  # the warm-up: as many products as fill one timed run
            reps *= 2
        best[n] = 2 * n ** 3 * reps / min(timed(a, b, reps) for _ in range(repeats))
    return max(best.values()), {str(n): round(v / 1e9, 2) for n, v in best.items()}


def step_flops(ds, arch, batch_size: int) -> int:
    """FLOPs of one training step (forward + backward) of architecture entry `arch` at `batch_size`, counted by
    FlopCounterMode on the CPU (the count does not depend on the device)."""
    model = prepare(ds, arch.arch, arch.kwargs, seed=0).model
    xb, yb = ds.x_train[:batch_size], ds.y_train[:batch_size]
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
    return counter.get_total_flops()


def training_flops(cfg: ZooConfig) -> dict:
    """FLOPs of training one model of the zoo: one step at the zoo's batch size (`step_flops`) x steps per epoch x
    epochs. The same for every model (same architecture, same data size)."""
    ds = load_dataset(cfg.data.name)
    per_step = step_flops(ds, cfg.archs[0], cfg.train.batch_size)
    steps = -(-len(ds.x_train) // cfg.train.batch_size) * cfg.train.epochs
    return {"flops_per_step": per_step, "steps_per_model": steps, "flops_per_model": per_step * steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--arch", default="cnn", choices=["cnn", "mlp"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-models", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads the trainers (and the GEMM peak) run on")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = zoo_config(args.models, args.arch, args.width, args.epochs)
    cpu = not args.device.startswith("cuda")
    record = {"config": cfg.model_dump(), "device": args.device, "threads": args.threads,
              "gpu": None if cpu else torch.cuda.get_device_name(), "versions": library_versions()}
    record["gemm_peak"] = gemm_peak(args.device, threads=args.threads)
    print("GEMM peak", record["gemm_peak"], flush=True)
    if cpu:
        record["machine_gemm_peak"] = gemm_peak(args.device, threads=cpu_count())
        print("machine GEMM peak", record["machine_gemm_peak"], flush=True)
    record["training_flops"] = training_flops(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("serial", "batched"):
            start = time.perf_counter()
            build_zoo(cfg, Path(tmp) / executor, executor=executor, batch_models=args.batch_models, device=args.device,
                      threads=args.threads)
            seconds = time.perf_counter() - start
            achieved = record["training_flops"]["flops_per_model"] * args.models / seconds
            record[executor] = {"seconds": round(seconds, 2), "models_per_second": round(args.models / seconds, 4),
                                "achieved_gflops_per_second": round(achieved / 1e9, 3),
                                "fraction_of_gemm_peak": round(achieved / record["gemm_peak"]["flops_per_second"], 4),
                                **({"fraction_of_machine_gemm_peak": round(
                                    achieved / record["machine_gemm_peak"]["flops_per_second"], 4)} if cpu else {}),
                                **summarise(Path(tmp) / executor)}
            print(executor, record[executor], flush=True)
    record["speedup_batched_over_loop"] = round(record["batched"]["models_per_second"] /
                                                record["serial"]["models_per_second"], 3)
    record["clean_accuracy_gap_points"] = round(100 * (record["batched"]["mean_clean_accuracy"] -
                                                       record["serial"]["mean_clean_accuracy"]), 2)
    suffix = ("" if args.arch == "cnn" else f"-{args.arch}") + ("" if args.device == "cpu" else f"-{args.device.split(':')[0]}")
    out = args.out or Path(__file__).parent / "results" / f"zoo_throughput{suffix}.json"
    write_benchmark(out, record, config={k: str(v) for k, v in vars(args).items() if k != "out"})
    print(json.dumps({k: record[k] for k in ("speedup_batched_over_loop", "clean_accuracy_gap_points")}),
          {e: record[e]["fraction_of_gemm_peak"] for e in ("serial", "batched")})


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
