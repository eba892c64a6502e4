"""The unit of work every executor runs: train one chunk of jobs (same architecture) and return the
results as plain data (card dict + safetensors bytes), so the driver alone writes the store -- the same
code path in-process, in a process pool, or on a Ray cluster without a shared disk."""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..config import DataConfig, InsidiousConfig, TrainConfig
from ..data import load_dataset
from ..implant import finish, prepare
from ..train import train_model
from ..train.batched import train_models_batched
from .plan import Job


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
    batched: bool = True
    device: str = "cpu"
    threads: int | None = None


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
def _dataset(data_json: str):
    cfg = DataConfig.model_validate_json(data_json)
    return load_dataset(cfg.name, **({"data_root": cfg.data_root} if cfg.data_root else {}), **cfg.options)


def train_chunk(task: ChunkTask) -> list[JobResult]:
    if task.threads:
        torch.set_num_threads(task.threads)
    ds = _dataset(task.data.model_dump_json())
    opts = {**({"data_root": task.data.data_root} if task.data.data_root else {}), **task.data.options}
    prepared, results = [], {}
    for item in task.items:
        try:
            p = prepare(ds, item.job.arch, item.job.arch_kwargs, item.job.trojan, seed=item.seed)
            if item.twin_weights is not None:  # insidious: start from the clean twin
                p.model.load_state_dict(st_load(item.twin_weights))
            prepared.append((item, p))
        except Exception as e:  # one bad job must not sink the chunk
            results[item.job.id] = JobResult(item.job.id, item.attempt, item.seed, False, _describe(e))
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
            done = finish(p, ds, task.train, seconds, opts, extra={"job_id": item.job.id, "split": item.job.split,
                                                                   "attempt": item.attempt})
            state = {k: v.detach().cpu().contiguous() for k, v in done.model.state_dict().items()}
            results[item.job.id] = JobResult(
                item.job.id, item.attempt, item.seed, True, card=done.card.model_dump(),
                weights=st_save(state, metadata={"format": "pt", "arch": item.job.arch}),
                poisoned=None if p.poisoned_indices is None else p.poisoned_indices.tolist(), seconds=seconds)
        except Exception as e:
            results[item.job.id] = JobResult(item.job.id, item.attempt, item.seed, False, _describe(e))
    return [results[i.job.id] for i in task.items]


def _train(task: ChunkTask, prepared, ds) -> None:
    cfg, device = task.train, torch.device(task.device)
    pull = [st_load(i.twin_weights) if i.twin_weights is not None else None for i, _ in prepared]
    if task.batched and (len(prepared) > 1 or any(r is not None for r in pull)):
        train_models_batched([p.model for _, p in prepared], [p.x for _, p in prepared], [p.y for _, p in prepared],
                             cfg, seeds=[p.seed for _, p in prepared], augment=ds.augment, device=device,
                             pull_to=pull, pull_weight=task.insidious.pull_weight)
    else:  # the reference: the plain per-model loop
        for _, p in prepared:
            train_model(p.model, p.x, p.y, cfg, seed=p.seed, augment=ds.augment, device=device)


def _describe(e: Exception) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(e).__name__}: {e}{where}"
