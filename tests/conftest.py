import os

import pytest
import torch

# each pytest-xdist worker gets one core; the suite runs two workers on the 2-core machines
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from trojanbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache from a test."""
    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path / "cache"))


TINY_ZOO = dict(name="tiny-all", models_per_arch=8, test_fraction=0.5,
                archs=[{"arch": "cnn", "kwargs": {"width": 8, "depth": 2}}],
                trojans={"kinds": ["patch", "blended"], "targets": [2, 7], "rates": [0.1]},
                train={"epochs": 8}, gate={"min_asr": 0.5, "max_clean_drop": 0.2, "retries": 0})


@pytest.fixture
def tiny_zoo_config() -> dict:
    """TINY_ZOO as a fresh dict, for tests that build the tiny zoo themselves (e.g. on another device)."""
    import copy

    return copy.deepcopy(TINY_ZOO)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A zoo of 8 tiny digits CNNs (4 clean, 2 patch and 2 blended trojans, half held out), built once per session and
    shared by the pytest-xdist workers (the first one builds it under a file lock)."""
    from filelock import FileLock

    from trojanbench.config import ZooConfig
    from trojanbench.zoo.build import build_zoo

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by every worker of this session
    out = root / "tiny-zoo"
    with FileLock(str(root / "tiny-zoo.lock")):
        if not (out / "done").is_file():
            build_zoo(ZooConfig(**TINY_ZOO), out, batch_models=8)
            (out / "done").write_text("ok")
    return out
