"""benchmarks/large_zoo.py, which the GPU checks (benchmarks/gpu_checks.sh) use to build and time the CIFAR-10 zoo:
a build stopped by its time budget is summarised as incomplete, and the next call finishes it and counts its FLOPs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trojanbench.zoo.executors import cpu_count

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "large_zoo.py"

TINY = """name = "tiny-budget"
models_per_arch = 4
test_fraction = 0.5
[[archs]]
arch = "mlp"
kwargs = { width = 16, depth = 1 }
[trojans]
kinds = ["patch"]
targets = [1]
rates = [0.1]
[train]
epochs = 1
[gate]
min_asr = 0.0
max_clean_drop = 1.0
retries = 0
"""


def _run(tmp_path, *extra):
    out = tmp_path / "summary.json"
    cmd = [sys.executable, str(SCRIPT), "--config", str(tmp_path / "tiny.toml"), "--root", str(tmp_path / "zoo"),
           "--executor", "batched", "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


def test_a_budgeted_build_is_summarised_as_incomplete_and_the_next_call_finishes_it(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    first, stdout = _run(tmp_path, "--budget-s", "0.01")  # killed before it can finish
    assert "stopped after its budget" in stdout
    assert first["complete"] is False and first["models_built"] < first["models_planned"] == 4
    assert "throughput" not in first or first["models_built"] > 0

    second, _ = _run(tmp_path, "--budget-s", "240", "--flops")
    assert second["complete"] is True and second["models_built"] == 4 and second["device"] == "cpu"
    tp = second["throughput"]
    (per_step,) = tp["flops_per_step"].values()  # one architecture, one batch size
    # digits: 1,438 training images in batches of 64 (the default TrainConfig), 1 epoch; FLOPs are per sample
    assert per_step > 0 and tp["training_flops"] == 4 * (per_step * 1438 // 64)
    assert tp["partial"] is False
    assert tp["gemm_peak"]["flops_per_second"] > 0 and 0 < tp["fraction_of_gemm_peak"] < 1
    assert "tf32_flops_per_second" not in tp["gemm_peak"]  # CUDA only
    assert tp["gemm_peak"]["threads"] == cpu_count()  # the build's workers share out every core: the machine's peak


def test_zoo_throughput_reads_each_trainer_against_the_peak_at_its_own_thread_count(tmp_path):
    out = tmp_path / "zt.json"
    cmd = [sys.executable, str(SCRIPT.parent / "zoo_throughput.py"), "--models", "2", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["threads"] == data["gemm_peak"]["threads"] == 1  # a zoo build's one thread per chunk
    assert data["machine_gemm_peak"]["threads"] == cpu_count()
    for trainer in ("serial", "batched"):
        r = data[trainer]
        # each fraction is the trainer's measured FLOP rate over its own peak (not a comparison of the two peaks,
        # which measure alike on a loaded machine)
        achieved = r["achieved_gflops_per_second"] * 1e9
        assert r["models"] == 2 and achieved > 0
        for key, peak in (("fraction_of_gemm_peak", "gemm_peak"), ("fraction_of_machine_gemm_peak", "machine_gemm_peak")):
            assert r[key] == pytest.approx(achieved / data[peak]["flops_per_second"], rel=0.01, abs=1e-4)
