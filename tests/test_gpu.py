"""The default benchmark on a GPU: a tiny zoo trained on CUDA, then every registered tool of every track run on it
with `device="cuda"`, as `trojanbench run --device cuda` does. Skipped, saying why, where torch sees no CUDA device
(run with `pytest -m gpu` on a machine that has one). `TROJANBENCH_GPU_TEST_DEVICE=cpu` runs the same tests on the
CPU: a dry run of the GPU checks' logic where there is no GPU (benchmarks/gpu_checks.sh)."""

import math
import os

import pytest
import torch

DEVICE = os.environ.get("TROJANBENCH_GPU_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device: torch.cuda.is_available() is False (the gpu tests need an NVIDIA GPU "
                              f"and a CUDA build of torch; this is torch {torch.__version__})"),
]

BOARDS = {"detect-model", "detect-samples", "diagnose-attribution", "synthesize", "synthesize-mc", "repair@0.05", "edit"}


def _gpu_zoo(cfg: dict, out, **kwargs):
    from trojanbench.config import ZooConfig
    from trojanbench.zoo.build import Zoo, build_zoo

    cfg["gate"]["retries"] = 2  # trained on another device the weights differ: a trojan may need a second seed
    counts = build_zoo(ZooConfig(**cfg), out, batch_models=8, device=DEVICE, **kwargs)
    assert not counts.get("failed"), counts
    cards = [c for _, _, c in Zoo(out).models()]
    assert cards and {c.extra["device"] for c in cards} == {DEVICE}
    return out


def test_the_default_benchmark_runs_end_to_end_on_cuda(tiny_zoo_config, tmp_path):
    from trojanbench.bench import TRACKS, run_benchmark
    from trojanbench.results import ResultsStore
    from trojanbench.results.boards import board_specs

    zoo = _gpu_zoo(tiny_zoo_config, tmp_path / "zoo")
    # every registered tool, with the track executor of `trojanbench run` (2 spawned workers, each on the device)
    run = run_benchmark(tmp_path / "run", zoo=zoo, device=DEVICE, track_executor="pool", jobs=2)
    assert {t for t, _ in run.boards} == set(TRACKS)
    with ResultsStore(run.results) as store:
        (info,) = store.runs()
        assert info.status == "complete"
        rows = store.rows(run.run_id)
    assert set(board_specs(rows)) == BOARDS
    print(f"stage seconds on {DEVICE}:", {k: round(v, 1) for k, v in run.seconds.items()})
    for name, track in TRACKS.items():  # every image tool of every track scored something (or was reported collapsed)
        for registry in track.registries():
            for tool in (t for t in registry.names() if "image" in registry.get(t).modalities):
                scored = [r for r in rows if r.tool == tool and (r.metric == "collapsed" or (
                    r.value is not None and math.isfinite(r.value)))]
                assert scored, f"track {name}: no scored row for {tool}"
    assert run.report.is_file()


def test_the_ray_executor_trains_on_the_gpu(tiny_zoo_config, tmp_path):
    pytest.importorskip("ray", reason="ray is part of the test extra; install it to run this test")
    _gpu_zoo(tiny_zoo_config, tmp_path / "zoo", executor="ray", jobs=2)
