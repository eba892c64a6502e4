"""Peak memory of the detect track as the zoo grows: the track's peak RSS on the default zoo (`digits-bench`) and on
the same config with `--factor` (10) times its models, each in a fresh process (its own `ru_maxrss`), in this
process's order: a warm-up run on the smaller zoo first (it fills the caches, e.g. MNTD's shadow models, so that
both measured runs score the track alone), then the two measured runs. The track runs as jobs (`tasks.jobs`), each
loading its model (and rebuilding its training set) and dropping them when it ends, so the ratio should stay near
1 (issue 16 asks for at most 1.5); what still grows with the zoo is a learned detector's fit, which holds the
training split's models at once, and the rows of the boards.

    .venv/bin/python benchmarks/detect_rss.py                 # digits-bench and 10x (builds both zoos: long)
    .venv/bin/python benchmarks/detect_rss.py --config my.toml --factor 2 --tools final-layer-outlier,spectral

Writes benchmarks/results/detect_rss.json: per zoo its models, peak RSS (MiB) and seconds, and the ratio. The
jobs run in the measured process (the serial executor): a pool's or Ray's workers would need their own
accounting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRACK = """
import json, resource, sys
from trojanbench.tasks.detect import run_detect_track
tools = sys.argv[3].split(",") if sys.argv[3] else None
run_detect_track(sys.argv[1], sys.argv[2], tools, sample_split="test")
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(zoo: Path, store: Path, tools: str) -> dict:
    """The detect track on `zoo` in a fresh process: its peak RSS and wall time."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", TRACK, str(zoo), str(store), tools], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the detect track failed on {zoo}:\n{r.stderr}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="digits-bench", help="zoo config: a built-in name or a TOML file")
    ap.add_argument("--factor", type=int, default=10, help="the larger zoo has this many times the models")
    ap.add_argument("--tools", default="", help="comma-separated detectors (default: every registered one)")
    ap.add_argument("--out", default="detect_rss", help="result name under benchmarks/results/ (or a .json path)")
    args = ap.parse_args()

    from trojanbench.bench import ZOO_CHUNK
    from trojanbench.results.provenance import write_benchmark
    from trojanbench.zoo.build import Zoo, build_zoo, cache_folder
    from trojanbench.zoo.plan import load_zoo_config

    started = time.time()
    small = load_zoo_config(args.config)
    large = small.model_copy(update={"name": f"{small.name}-x{args.factor}",
                                     "models_per_arch": small.models_per_arch * args.factor})
    zoos = {}
    for label, cfg in (("default", small), (f"x{args.factor}", large)):
        zoos[label] = cache_folder(cfg)
        build_zoo(cfg, zoos[label], executor="pool", jobs=2, batch_models=ZOO_CHUNK)
    with tempfile.TemporaryDirectory() as tmp:
        measure(zoos["default"], Path(tmp) / "warmup.sqlite", args.tools)
        result = {label: {"zoo": str(z), "models": len(Zoo(z).models()), "test_models": len(Zoo(z).models("test")),
                          **measure(z, Path(tmp) / f"{label}.sqlite", args.tools)} for label, z in zoos.items()}
    ratio = result[f"x{args.factor}"]["peak_rss_mib"] / result["default"]["peak_rss_mib"]
    path = write_benchmark(args.out, {"zoos": result, "rss_ratio": round(ratio, 3), "limit": 1.5},
                           config=vars(args), started=started)
    print(json.dumps({"zoos": result, "rss_ratio": round(ratio, 3)}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
