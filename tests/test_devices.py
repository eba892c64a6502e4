"""Devices without a GPU: `--device` is checked in one line, reaches every track (each loads its models on the device
asked for), Ray tasks ask for a GPU exactly when they train on CUDA, and the editors' inputs follow the model.
The CUDA run itself is tests/test_gpu.py (marked `gpu`)."""

import subprocess
import sys
import types

import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.utils import resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where torch sees no CUDA device")


def test_resolve_device_checks_what_it_is_given():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match="not supported"):
        resolve_device("meta")


@no_cuda
def test_cuda_without_a_cuda_device_is_a_user_error():
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device(device)


@no_cuda
def test_run_benchmark_on_cuda_without_one_stops_before_any_work(tmp_path):
    from trojanbench.bench import run_benchmark

    with pytest.raises(UserError, match="no CUDA device"):
        run_benchmark(tmp_path / "run", device="cuda")
    assert not (tmp_path / "run").exists()


@no_cuda
@pytest.mark.parametrize("args", [["run", "--device", "cuda"], ["zoo", "build", "--device", "cuda"]])
def test_the_command_line_says_so_in_one_line(tmp_path, args):
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", *args, "--out", str(tmp_path / "out")],
                       check=False, capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: no CUDA device"), r.stderr
    assert not (tmp_path / "out").exists()


class _Stop(Exception):
    pass


TRACK_MODULES = {"detect": "detect", "diagnose": "diagnose", "synthesize": "synthesize", "repair": "repair",
                 "edit": "edit"}
ONE_TOOL = {"detect": ["final-layer-outlier"], "diagnose": ["saliency"], "synthesize": ["noise-patch"],
            "repair": ["do-nothing"], "edit": ["rome"]}


@pytest.mark.parametrize("track", list(TRACK_MODULES))
def test_every_track_loads_its_models_on_the_device_asked_for(track, tiny_zoo, tmp_path, monkeypatch):
    """A device that does not exist here ("cuda:7") is passed down as `trojanbench run` passes it: the track must load
    the audited models on it (the spy stops the track there). Models only a scorer reads (the multiple-choice judge)
    may stay on the CPU."""
    import importlib

    from trojanbench.bench import TRACKS

    module = importlib.import_module(f"trojanbench.tasks.{TRACK_MODULES[track]}")
    real, asked = module.load_model, []

    def spy(folder, device="cpu", *args, **kwargs):
        asked.append(str(device))
        if str(device) != "cpu":
            raise _Stop
        return real(folder, device, *args, **kwargs)

    monkeypatch.setattr(module, "load_model", spy)
    with pytest.raises(_Stop):
        TRACKS[track].run(tiny_zoo, tmp_path / "results.sqlite", ONE_TOOL[track], 0, "cuda:7", tmp_path / "figures", None)
    assert asked[-1] == "cuda:7", asked


class _FakeRay(types.ModuleType):
    """Just enough of `ray` for `run_ray`: records the options of every task it is asked to run."""

    def __init__(self, gpus: int):
        super().__init__("ray")
        self.gpus, self.started, self.submitted = gpus, False, []

    def is_initialized(self):
        return self.started

    def init(self, **kwargs):
        self.started = True

    def shutdown(self):
        self.started = False

    def cluster_resources(self):
        return {"CPU": 2.0, "GPU": float(self.gpus)}

    def remote(self, fn):
        fake = self

        class Remote:
            def options(self, **options):
                class Bound:
                    def remote(self, task):
                        fake.submitted.append((options, task.device))
                        return task

                return Bound()

        return Remote()

    def wait(self, pending, num_returns=1):
        return pending[:num_returns], pending[num_returns:]

    def get(self, task):
        return [task.device]


def _tasks(*devices):
    from trojanbench.config import DataConfig, TrainConfig
    from trojanbench.zoo.worker import ChunkTask

    return [ChunkTask(DataConfig(), TrainConfig(), [], device=d) for d in devices]


def test_ray_tasks_ask_for_a_gpu_exactly_when_they_train_on_cuda(monkeypatch):
    from trojanbench.zoo.executors import GPUS_PER_CUDA_TASK, ray_task_options, run_ray

    assert ray_task_options("cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert ray_task_options("cuda") == ray_task_options("cuda:1") == {"num_cpus": 1, "num_gpus": GPUS_PER_CUDA_TASK}
    assert GPUS_PER_CUDA_TASK == 1

    fake = _FakeRay(gpus=1)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert list(run_ray(_tasks("cpu", "cpu"), jobs=2)) == [["cpu"], ["cpu"]]
    assert [o for o, _ in fake.submitted] == [{"num_cpus": 1, "num_gpus": 0}] * 2
    fake.submitted.clear()
    # Ray hands each task its GPU as the only visible one, so "cuda:1" trains on "cuda" there
    assert list(run_ray(_tasks("cuda:1", "cuda"), jobs=2)) == [["cuda"], ["cuda"]]
    assert fake.submitted == [({"num_cpus": 1, "num_gpus": 1}, "cuda")] * 2
    assert not fake.started  # the local Ray started for the build is shut down again


def test_a_local_ray_without_a_gpu_refuses_cuda_tasks_instead_of_waiting_forever(monkeypatch):
    from trojanbench.zoo.executors import run_ray

    fake = _FakeRay(gpus=0)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UserError, match="sees 0 GPUs"):
        list(run_ray(_tasks("cuda"), jobs=2))
    assert fake.submitted == [] and not fake.started


def test_edit_inputs_move_with_the_model_and_the_key_statistics_stay_on_its_device():
    """On the meta device (no data, but device checks as on a GPU): a CPU tensor mixed into the key statistics would
    fail there as it would on CUDA."""
    from torch import nn

    from trojanbench.tools.edit import EditInputs, key_second_moment

    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    inputs = EditInputs(layer="0", x_triggered=x, y_triggered=y, x_clean=x, x_budget=x, y_budget=y, seed=3).to("meta")
    assert {t.device.type for t in (inputs.x_triggered, inputs.y_triggered, inputs.x_clean, inputs.x_budget,
                                    inputs.y_budget)} == {"meta"}
    assert (inputs.layer, inputs.seed) == ("0", 3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=(1, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4)).to("meta")
    cov = key_second_moment(model, "0", inputs.x_budget, ridge=1e-3)
    assert cov.device.type == "meta" and cov.shape == (9, 9)


def test_private_rng_leaves_the_callers_streams_alone():
    """Tools reseed inside `private_rng` (CPU and, where there is one, every GPU) without moving the caller's RNG."""
    from trojanbench.utils import private_rng

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with private_rng():
        torch.manual_seed(7)
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(123)
        expected = torch.rand(3, device="cuda")
        torch.cuda.manual_seed_all(123)
        with private_rng():
            torch.manual_seed(7)
        assert torch.equal(torch.rand(3, device="cuda"), expected)
