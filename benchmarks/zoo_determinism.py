"""Is a zoo model's weights independent of the chunk it is trained in? Bit-for-bit evidence.

    .venv/bin/python benchmarks/zoo_determinism.py            # CNN and MLP on digits, ~15 min on 2 loaded cores

The same jobs (digits, every other one patch-trojaned, each with its own seed) are trained with the
many-models trainer in chunks of K = 1, 2, 4 (`--ks`), with oneDNN on (torch's default) and off (what the
zoo trainer does), at 1 and 2 torch threads, each setting in a fresh process; and once with the plain
one-model loop (`train_model`). For every pair of settings it records how many jobs got bit-identical weights
(sha256 of the safetensors bytes) and the largest weight difference, plus the CPU seconds of each setting.
Writes benchmarks/results/zoo_determinism.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(args) -> None:
    """One process at one thread count: every (oneDNN, K) setting, plus the plain loop at oneDNN's default."""
    torch.set_num_threads(args.threads)
    from safetensors.torch import save

    from trojanbench.config import TrainConfig
    from trojanbench.data import load_dataset
    from trojanbench.implant import prepare
    from trojanbench.train import batched as zoo_trainer
    from trojanbench.train import train_model
    from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
    from trojanbench.utils import sha256_bytes

    ds = load_dataset("digits")
    kwargs = {"width": 16, "depth": 3} if args.arch == "cnn" else {"width": 128, "depth": 2}
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
    seeds = list(range(100, 100 + args.models))

    def preps(chunk):
        return [prepare(ds, args.arch, kwargs, TrojanSpec(trigger=TriggerSpec(kind="patch", seed=s),
                                                           poison=PoisonSpec(target=1, rate=0.1)) if s % 2 else None,
                        seed=s) for s in chunk]

    def record(setting, models):
        for s, m in zip(seeds_of[setting], models):
            state = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
            out[setting][s] = sha256_bytes(save(state))
            torch.save(state, Path(args.tmp) / f"{args.arch}-{setting}-t{args.threads}-{s}.pt")

    out, seeds_of, seconds = {}, {}, {}
    original = zoo_trainer._per_model_arithmetic
    for onednn, k in itertools.product((True, False), args.ks):
        setting = f"batched K={k} oneDNN {'on' if onednn else 'off'}"
        out[setting], seeds_of[setting] = {}, seeds
        # oneDNN on: the same trainer with its switch left alone (what it did before it turned oneDNN off)
        zoo_trainer._per_model_arithmetic = original if not onednn else (lambda device: _null())
        start = time.process_time()
        models = []
        for i in range(0, len(seeds), k):
            ps = preps(seeds[i:i + k])
            zoo_trainer.train_models_batched([p.model for p in ps], [p.x for p in ps], [p.y for p in ps], cfg,
                                             seeds=[p.seed for p in ps], augment=ds.augment)
            models += [p.model for p in ps]
        seconds[setting] = round(time.process_time() - start, 2)
        record(setting, models)
    zoo_trainer._per_model_arithmetic = original
    setting = "plain loop (train_model)"
    out[setting], seeds_of[setting] = {}, seeds
    start = time.process_time()
    models = []
    for p in preps(seeds):
        train_model(p.model, p.x, p.y, cfg, seed=p.seed, augment=ds.augment)
        models.append(p.model)
    seconds[setting] = round(time.process_time() - start, 2)
    record(setting, models)
    Path(args.result).write_text(json.dumps({"sha256": out, "cpu_seconds": seconds}))


def _null():
    from contextlib import nullcontext

    return nullcontext()


def max_diff(tmp: Path, arch: str, a: tuple[str, int], b: tuple[str, int], seed: int) -> float:
    x = torch.load(tmp / f"{arch}-{a[0]}-t{a[1]}-{seed}.pt", weights_only=True)
    y = torch.load(tmp / f"{arch}-{b[0]}-t{b[1]}-{seed}.pt", weights_only=True)
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].is_floating_point())


def summarise(pairs: list[dict], ks: list[int], threads: list[int]) -> dict[str, str]:
    """The comparisons the docs cite, each as "identical n/N, max |diff| d", from the full list of pairs."""
    by = {(p["a"], p["b"]): p for p in pairs} | {(p["b"], p["a"]): p for p in pairs}

    def get(a, b):
        p = by[(a, b)]
        return f"identical {p['identical']}, max |diff| {p['max_abs_weight_diff']:.2g}"

    out = {}
    for t in threads:
        for onednn in ("off", "on"):
            for k in ks[1:]:
                out[f"batched oneDNN {onednn}, {t} thread(s): K={ks[0]} vs K={k}"] = get(
                    f"batched K={ks[0]} oneDNN {onednn}, {t} thread(s)", f"batched K={k} oneDNN {onednn}, {t} thread(s)")
        out[f"plain loop vs batched K={ks[0]} oneDNN off, {t} thread(s)"] = get(
            f"plain loop (train_model), {t} thread(s)", f"batched K={ks[0]} oneDNN off, {t} thread(s)")
    for a, b in itertools.combinations(threads, 2):
        for k in ks:
            for onednn in ("off", "on"):
                out[f"batched K={k} oneDNN {onednn}: {a} vs {b} thread(s)"] = get(
                    f"batched K={k} oneDNN {onednn}, {a} thread(s)", f"batched K={k} oneDNN {onednn}, {b} thread(s)")
        out[f"plain loop: {a} vs {b} thread(s)"] = get(f"plain loop (train_model), {a} thread(s)",
                                                        f"plain loop (train_model), {b} thread(s)")
    return out


def cpu_ratios(cpu: dict[str, float], k: int, threads: list[int]) -> dict[str, float]:
    """What turning oneDNN off costs, and the zoo trainer against the plain loop, in CPU seconds (largest K)."""
    out = {}
    for t in threads:
        off = cpu[f"batched K={k} oneDNN off, {t} thread(s)"]
        out[f"batched K={k}, {t} thread(s): oneDNN off / on"] = round(off / cpu[f"batched K={k} oneDNN on, {t} thread(s)"], 2)
        out[f"batched K={k} oneDNN off / plain loop, {t} thread(s)"] = round(off / cpu[f"plain loop (train_model), {t} thread(s)"], 2)
    return out


CONFIG_ARGS = ("archs", "threads", "ks", "models", "epochs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="cnn,mlp")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--ks", default="1,2,4")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "zoo_determinism.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads, args.ks = int(args.threads), [int(k) for k in args.ks.split(",")]
        return worker(args)
    from trojanbench.utils import library_versions

    record = {"what": "bit-identity of zoo weights across chunk size K, oneDNN, thread count, and vs the plain loop",
              "dataset": "digits", "epochs": args.epochs, "models": args.models, "ks": args.ks,
              "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                           cwd=Path(__file__).parent).stdout.strip(),
              "working_tree_clean": not subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, check=False,
                                                       text=True, cwd=Path(__file__).parent).stdout.strip(),
              "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "versions": library_versions(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "archs": {}}
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.archs.split(","):
            runs = {}
            for t in threads:
                result = tmp / f"{arch}-{t}.json"
                subprocess.run([sys.executable, __file__, "--worker", "--arch", arch, "--threads", str(t), "--ks", args.ks,
                                "--models", str(args.models), "--epochs", str(args.epochs), "--tmp", str(tmp),
                                "--result", str(result)], check=True)
                runs[t] = json.loads(result.read_text())
                print(arch, t, "threads:", runs[t]["cpu_seconds"], flush=True)
            keys = [(s, t) for t in threads for s in runs[t]["sha256"]]
            pairs = []
            for a, b in itertools.combinations(keys, 2):
                sa, sb = runs[a[1]]["sha256"][a[0]], runs[b[1]]["sha256"][b[0]]
                seeds = sorted(sa)
                same = sum(sa[s] == sb[s] for s in seeds)
                diff = max(max_diff(tmp, arch, a, b, int(s)) for s in seeds)
                pairs.append({"a": f"{a[0]}, {a[1]} thread(s)", "b": f"{b[0]}, {b[1]} thread(s)",
                              "identical": f"{same}/{len(seeds)}", "max_abs_weight_diff": diff})
            cpu = {f"{s}, {t} thread(s)": runs[t]["cpu_seconds"][s] for t in threads for s in runs[t]["cpu_seconds"]}
            record["archs"][arch] = {"summary": summarise(pairs, [int(k) for k in args.ks.split(",")], threads),
                                     "cpu_ratios": cpu_ratios(cpu, max(int(k) for k in args.ks.split(",")), threads),
                                     "cpu_seconds": cpu,
                                     "pairs": pairs}
    from trojanbench.results.provenance import write_benchmark

    write_benchmark(args.out, record, config={k: v for k, v in vars(args).items() if k in CONFIG_ARGS})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
