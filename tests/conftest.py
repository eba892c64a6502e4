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
