"""The large benchmark zoo (`digits-large`, issue 16): how long it took to build on this machine and what it holds.

    .venv/bin/python benchmarks/large_zoo.py            # builds (or finishes) the zoo first if it is not complete
    python3 benchmarks/large_zoo.py --config cifar10-zoo --models 64 --device cuda --budget-s 200 --flops \
        --root /tmp/c10 --out cifar10_zoo-cuda      # the CIFAR-10 zoo on a GPU, as benchmarks/gpu_checks.sh runs it

The build time is read from the zoo's own log (`log.jsonl`: the builder stamps every start, finish and gate
verdict): the wall time from its first event to its last, and the sum over builds when it was resumed (a gap of
more than 10 minutes between two events starts a new build). Writes benchmarks/results/large_zoo.json: models
planned, built and rejected by the quality gate, per trigger kind (held-out trojans among them) and per level of
each difficulty axis (poison rate, mode, training epochs and learning rate), with the trojans' mean ASR and the
models' mean clean accuracy.

`--budget-s`: the build runs in a child process killed after that many seconds (the zoo resumes where it stopped
on the next call); what was built by then is summarised, with `complete: false`. `--flops`: also the machine's
GEMM peak in the same run (`zoo_throughput.gemm_peak`) and the build's achieved FLOP/s as a fraction of it: the
training FLOPs of every kept model (one step counted by FlopCounterMode, per sample, x samples x its epochs) over
the build's wall time. Models the quality gate rejected, retried attempts, data preparation and evaluation are in
the wall time and not in the FLOPs, so the fraction is a lower bound on how busy the arithmetic units were; for a
build stopped by its budget (`partial`) more so, since chunks still training at the stop spent time but landed no
model.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

GAP = 600.0  # seconds between two log events that mark separate builds


def build_seconds(log: Path) -> tuple[float, int]:
    """(wall seconds spent building, number of builds) from a zoo's log (none yet: nothing built)."""
    if not log.is_file():
        return 0.0, 0
    times = sorted(json.loads(line)["time"] for line in log.read_text().splitlines() if line.strip())
    total, builds = 0.0, 1
    for a, b in itertools.pairwise(times):
        if b - a > GAP:
            builds += 1
        else:
            total += b - a
    return total, builds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-large")
    ap.add_argument("--out", default="large_zoo", help="result name under benchmarks/results/ (or a .json path)")
    ap.add_argument("--models", type=int, default=None, help="models per architecture (default: the config's)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's; for dry runs)")
    ap.add_argument("--root", default=None, help="zoo folder (default: the benchmark's cache folder for the config)")
    ap.add_argument("--executor", default="pool")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--batch-models", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-s", type=float, default=None, help="stop building after this many seconds")
    ap.add_argument("--flops", action="store_true", help="measure the GEMM peak and the build's fraction of it")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # the child of --budget-s
    args = ap.parse_args()

    from trojanbench.results.provenance import write_benchmark
    from trojanbench.zoo.build import Zoo, build_zoo, cache_folder
    from trojanbench.zoo.lock import ZooLock
    from trojanbench.zoo.plan import load_zoo_config

    started = time.time()
    cfg = load_zoo_config(args.config)
    if args.models is not None:
        cfg = cfg.model_copy(update={"models_per_arch": args.models})
    if args.epochs is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": args.epochs})})
    root = Path(args.root) if args.root else cache_folder(cfg)
    zoo = Zoo(root)
    build = dict(executor=args.executor, jobs=args.jobs, batch_models=args.batch_models, device=args.device)
    if args.build_only:
        build_zoo(cfg, root, **build)
        return
    if not zoo.exists or zoo.status()["pending"]:
        if args.budget_s is None:
            build_zoo(cfg, root, **build)
        else:
            with ZooLock(zoo.root):  # the plan first, so that a build killed early still has one to summarise
                zoo.init(cfg)
            _build_within(args.budget_s)
    status = zoo.status()
    state = {rec.id: s for s, recs in status.items() for rec in recs}
    cards = {j.id: c for j, _, c in zoo.models()}
    plan = zoo.plan()
    seconds, builds = build_seconds(root / "log.jsonl")

    def tally(jobs) -> dict:
        done = [j for j in jobs if state[j.id] == "done"]
        out = {"planned": len(jobs), "built": len(done), "rejected": sum(state[j.id] == "rejected" for j in jobs),
               "failed": sum(state[j.id] == "failed" for j in jobs),
               "held_out_built": sum(j.split == "test" for j in done)}
        asr = [cards[j.id].metrics["attack_success_rate"] for j in done if j.trojaned]
        if asr:
            out["mean_asr"] = round(sum(asr) / len(asr), 4)
        return out

    trojans = [j for j in plan if j.trojaned]
    axes = {"kind": lambda j: j.trojan.trigger.kind, "rate": lambda j: j.trojan.poison.rate,
            "mode": lambda j: j.trojan.poison.mode, "insidious": lambda j: j.trojan.insidious,
            "epochs": lambda j: (j.intensity or {}).get("epochs", cfg.train.epochs),
            "lr": lambda j: (j.intensity or {}).get("lr", cfg.train.lr)}
    by_axis = {}
    for axis, key in axes.items():
        groups = defaultdict(list)
        for j in trojans:
            groups[key(j)].append(j)
        by_axis[axis] = {str(level): {"level": level, **tally(groups[level])} for level in sorted(groups)}
    clean = [j for j in plan if not j.trojaned]
    accs = [c.metrics["clean_accuracy"] for c in cards.values()]
    result = {"zoo_config": args.config, "zoo": str(root), "device": args.device, "complete": not status["pending"],
              "models_planned": len(plan),
              "models_built": len(cards), "held_out_built": sum(j.split == "test" for j in plan if j.id in cards),
              "clean": tally(clean), "trojaned": tally(trojans), "by_axis": by_axis,
              "mean_clean_accuracy": round(sum(accs) / len(accs), 4) if accs else None,
              "min_held_out_trojans_per_kind": min(v["held_out_built"] for v in by_axis["kind"].values()),
              "build_seconds": round(seconds, 1), "builds": builds,
              "models_per_minute": round(len(cards) / (seconds / 60), 2) if seconds else None,
              "gate": cfg.gate.model_dump()}
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    if args.flops and cards:
        result["throughput"] = _throughput(cfg, plan, cards, seconds, args.device, result["complete"])
    path = write_benchmark(args.out, result, config=vars(args), started=started)
    print(json.dumps({k: v for k, v in result.items() if k != "by_axis"}, indent=1))
    print(f"wrote {path}")


def _build_within(budget: float) -> None:
    """Run this script's build in a child process (its own process group: pool workers go with it), killed after
    `budget` seconds; the zoo's own resume picks up from there next time."""
    child = subprocess.Popen([sys.executable, *sys.argv, "--build-only"], start_new_session=True)

    def stop(*_):  # this script stopped from outside (a step's time limit): the build must not live on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        sys.exit("stopped from outside; the build was killed")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if child.wait(timeout=budget):
            print(f"the build exited with code {child.returncode}; summarising what was built", flush=True)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        print(f"build stopped after its budget of {budget:.0f} s; summarising what was built", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _throughput(cfg, plan, cards, seconds: float, device: str, complete: bool) -> dict:
    """Training FLOPs of the kept models over the build's wall time, against the GEMM peak measured now."""
    from zoo_throughput import gemm_peak, step_flops  # beside this script

    from trojanbench.zoo.executors import cpu_count
    from trojanbench.zoo.worker import cached_dataset

    ds = cached_dataset(cfg.data.model_dump_json())  # as the zoo's workers load it (data root, options)
    per_step, total = {}, 0
    for job in plan:
        if (card := cards.get(job.id)) is None:
            continue
        arch = SimpleNamespace(arch=job.arch, kwargs=job.arch_kwargs)  # as the config gives it
        key = json.dumps([arch.arch, arch.kwargs, card.train["batch_size"]], sort_keys=True)
        if key not in per_step:  # the card holds the training setup the model was trained with
            per_step[key] = step_flops(ds, arch, card.train["batch_size"])
        # matmul and convolution FLOPs grow linearly with the batch: an epoch is n samples' worth of them
        total += per_step[key] * len(ds.x_train) // card.train["batch_size"] * card.train["epochs"]
    # the whole machine's peak: on the CPU a build's workers share out every core
    peak = gemm_peak(device, threads=None if device.startswith("cuda") else cpu_count())
    achieved = total / seconds if seconds else float("nan")
    out = {"partial": not complete, "training_flops": total, "flops_per_step": per_step,
           "achieved_gflops_per_second": round(achieved / 1e9, 2), "gemm_peak": peak,
           "fraction_of_gemm_peak": round(achieved / peak["flops_per_second"], 4)}
    if "tf32_flops_per_second" in peak:
        out["fraction_of_tf32_gemm_peak"] = round(achieved / peak["tf32_flops_per_second"], 4)
    return out


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
