"""The unit of work every executor runs: train one chunk of jobs (same architecture) and return the
results as plain data (card dict + safetensors bytes), so the driver alone writes the store -- the same
code path in-process, in a process pool, or on a Ray cluster without a shared disk.

Every chunk, of one model or many, goes through the one zoo trainer (`train_models_batched`), whose weights
for a job do not depend on the chunk (see its docstring), so a job gets the same weights from every executor
at a fixed thread count. Each card records the trainer version, the torch thread count and the device.
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load

from ..config import DataConfig, InsidiousConfig, TrainConfig
from ..data import load_dataset
from ..implant import finish, prepare
from ..train import TRAINER_VERSION
from ..train.batched import train_models_batched
from ..utils import torch_threads
from .plan import Job
from .store import load_state, weights_bytes


@dataclass
class ChunkItem:
    job: Job
    seed: int  # the job's seed, or another one on a retry
    attempt: int
    twin_weights: bytes | None = None  # safetensors of the clean twin, for insidious jobs


@dataclass
class ChunkTask:
    data: DataConfig
    train: TrainConfig
    items: list[ChunkItem]
    insidious: InsidiousConfig = field(default_factory=InsidiousConfig)
    device: str = "cpu"
    threads: int | None = None  # torch threads while training this chunk (None: leave the process's setting)


@dataclass
class JobResult:
    job_id: str
    attempt: int
    seed: int
    ok: bool
    error: str | None = None
    card: dict | None = None
    weights: bytes | None = None
    poisoned: list[int] | None = None
    seconds: float = 0.0


@functools.lru_cache(maxsize=4)
def cached_dataset(data_json: str):
    """The dataset a zoo config's `data` names (its JSON), loaded once per process: every chunk, or track job, of
    a worker shares it."""
    cfg = DataConfig.model_validate_json(data_json)
    return load_dataset(cfg.name, **({"data_root": cfg.data_root} if cfg.data_root else {}), **cfg.options)


def train_chunk(task: ChunkTask) -> list[JobResult]:
    with torch_threads(task.threads):  # in-process executors must not leave their thread count behind
        return _train_chunk(task)


def _train_chunk(task: ChunkTask) -> list[JobResult]:
    ds = cached_dataset(task.data.model_dump_json())
    opts = {**({"data_root": task.data.data_root} if task.data.data_root else {}), **task.data.options}
    prepared, results = [], {}
    for item in task.items:
        try:
            p = prepare(ds, item.job.arch, item.job.arch_kwargs, item.job.trojan, seed=item.seed)
            if item.twin_weights is not None:  # insidious: start from the clean twin
                load_state(p.model, st_load(item.twin_weights), "the clean twin's weights")
            prepared.append((item, p))
        except Exception as e:  # one bad job must not sink the chunk
            results[item.job.id] = JobResult(item.job.id, item.attempt, item.seed, False, _describe(e))
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        if prepared:
            _train(task, prepared, ds)
    except Exception as e:
        err = _describe(e)
        return [results.get(i.job.id) or JobResult(i.job.id, i.attempt, i.seed, False, err) for i in task.items]
    seconds = (time.perf_counter() - start) / max(1, len(prepared))
    for item, p in prepared:
        try:
            done = finish(p, ds, task.train, seconds, opts, extra={
                "job_id": item.job.id, "split": item.job.split, "attempt": item.attempt,
                "trainer_version": TRAINER_VERSION, "torch_threads": threads, "device": task.device})
            results[item.job.id] = JobResult(
                item.job.id, item.attempt, item.seed, True, card=done.card.model_dump(), weights=weights_bytes(done.model),
                poisoned=None if p.poisoned_indices is None else p.poisoned_indices.tolist(), seconds=seconds)
        except Exception as e:
            results[item.job.id] = JobResult(item.job.id, item.attempt, item.seed, False, _describe(e))
    return [results[i.job.id] for i in task.items]


def _train(task: ChunkTask, prepared, ds) -> None:
    pull = [st_load(i.twin_weights) if i.twin_weights is not None else None for i, _ in prepared]
    train_models_batched([p.model for _, p in prepared], [p.x for _, p in prepared], [p.y for _, p in prepared],
                         task.train, seeds=[p.seed for _, p in prepared], augment=ds.augment,
                         device=torch.device(task.device), pull_to=pull, pull_weight=task.insidious.pull_weight)


def _describe(e: Exception) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(e).__name__}: {e}{where}"
