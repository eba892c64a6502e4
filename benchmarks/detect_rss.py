"""Peak memory of the detect track as the zoo grows: the track's peak RSS on the `digits-bench` zoo (48
models) and on the large one (`digits-large`, 980 models: 20x), each a `trojanbench run --tracks detect` in a fresh
process (its own `ru_maxrss`). A warm-up run on the smaller zoo comes first (it fills the caches, e.g. MNTD's
shadow models, so that both measured runs score the track alone). The track runs as jobs (`tasks.jobs`), each
loading its model (and rebuilding its training set) and dropping them when it ends, so the ratio should stay near
1 (issue 16 asks for at most 1.5 at 10x); what still grows with the zoo is a learned detector's fit, which holds
the training split's models at once, and the rows of the boards.

    .venv/bin/python benchmarks/detect_rss.py                          # digits-bench and digits-large (long)
    .venv/bin/python benchmarks/detect_rss.py --configs digits-bench,my.toml --tools final-layer-outlier,spectral

Writes benchmarks/results/detect_rss.json: per zoo its models, peak RSS (MiB), seconds and the measured run's id.
The jobs run on a pool of 2 workers by default (`--track-executor serial` runs them in the measured process): the
peak is then the driver's own plus twice the largest worker's, an upper bound on what the track held at once.
Each run's store and report (with the detectors' curves over the difficulty axes) stay in runs/detect-<config>/;
`benchmarks/power.py` reads the large zoo's boards from there. Zoos not built yet are built first (a pool of 2),
outside the measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TRACK = """
import json, resource, sys
from trojanbench.bench import run_benchmark
config, out, tools, executor, jobs = sys.argv[1:6]
run = run_benchmark(out, config=config, tracks=["detect"], tools=tools.split(",") if tools else ["all"], report=False,
                    resume=False, track_executor=executor, jobs=int(jobs))
own, worker = (resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"driver_peak_rss_mib": round(own, 1), "worker_peak_rss_mib": round(worker, 1),
                  "peak_rss_mib": round(own + (int(jobs) * worker if executor == "pool" else 0), 1),
                  "run_id": run.run_id, "track_seconds": round(run.seconds["detect"], 1)}))
"""


def measure(config: str, out: Path, tools: str, executor: str, jobs: int) -> dict:
    """The detect track of `config`'s zoo in a fresh process: its peak RSS, wall time and run id. With the pool, the
    peak is bounded above by the driver's peak plus `jobs` times the largest worker's (each worker's own maximum)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", TRACK, config, str(out), tools, executor, str(jobs)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"the detect track failed on {config}:\n{r.stderr[-4000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="digits-bench,digits-large",
                    help="the smaller and the larger zoo config: built-in names or TOML files")
    ap.add_argument("--tools", default="", help="comma-separated detectors (default: every registered one)")
    ap.add_argument("--track-executor", default="pool", choices=["serial", "pool"],
                    help="serial: the jobs run in the measured process; pool: in --jobs workers, each measured too")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", default="runs", help="folder for the measured runs (runs/detect-<config>/)")
    ap.add_argument("--out", default="detect_rss", help="result name under benchmarks/results/ (or a .json path)")
    args = ap.parse_args()

    from trojanbench.bench import ZOO_CHUNK
    from trojanbench.report.html import render_report
    from trojanbench.results.provenance import write_benchmark
    from trojanbench.zoo.build import Zoo, build_zoo, cache_folder
    from trojanbench.zoo.plan import load_zoo_config

    started = time.time()
    configs = args.configs.split(",")
    if len(configs) != 2:
        sys.exit("--configs takes two zoo configs, the smaller first")
    zoos = {}
    for name in configs:
        cfg = load_zoo_config(name)
        zoos[name] = cache_folder(cfg)
        build_zoo(cfg, zoos[name], executor="pool", jobs=2, batch_models=ZOO_CHUNK)
    folder = lambda name: Path(args.runs) / f"detect-{Path(name).stem}"
    on = (args.tools, args.track_executor, args.jobs)
    measure(configs[0], folder(configs[0]), *on)  # the warm-up
    result = {}
    for name in configs:
        z = Zoo(zoos[name])
        result[name] = {"zoo": str(zoos[name]), "models": len(z.models()), "test_models": len(z.models("test")),
                        "run_folder": str(folder(name)), **measure(name, folder(name), *on)}
        render_report(folder(name) / "results.sqlite", folder(name) / "report", run_id=result[name]["run_id"],
                      title=f"trojanbench: {name}, detect track")
    small, large = (result[n] for n in configs)
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    path = write_benchmark(args.out, {"zoos": result, "size_factor": round(large["models"] / small["models"], 2),
                                      "rss_ratio": round(ratio, 3), "limit": 1.5}, config=vars(args), started=started)
    print(json.dumps({"zoos": result, "rss_ratio": round(ratio, 3)}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
