"""Executors run chunks and yield their results as they complete.

- `batched` (default): in this process, each chunk trained many-models-at-once.
- `pool`: a process pool of `jobs` workers, each with its share of the cores (one pool per call, or one for a
  whole `shared_pool` block: a benchmark run's zoo build and tracks).
- `ray`: Ray tasks, on a local Ray started here (`jobs` CPUs) or an existing cluster (`address`); each task asks
  for one CPU, and for one GPU when the chunk trains on CUDA (`ray_task_options`).
- `serial`: in this process, one model at a time (chunks of one) through the same trainer.
All of them run `train_chunk`, whose weights for a job do not depend on the chunk, so at one torch thread count
they give bit-identical models. `build_zoo` sets every task's thread count (one by default); for tasks without
one, the pool gives each worker its share of the cores and Ray one thread per task.

The tracks' jobs run on the same executors (`tasks.jobs`): `fn` is then `tasks.jobs.run_task` instead of
`train_chunk`; a task is anything with `items`, `device` and `threads`, and `fn` a module-level function (the
pool and Ray send it to their workers by name).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace

import torch

from ..errors import UserError
from ..registry import Registry
from .worker import ChunkTask, JobResult, train_chunk

EXECUTORS: Registry = Registry("executor")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@EXECUTORS.register("batched")
def run_batched(tasks: Iterable[ChunkTask], jobs: int = 1, address: str | None = None,
                fn=train_chunk) -> Iterator[list[JobResult]]:
    for task in tasks:
        yield fn(task)


@EXECUTORS.register("serial")
def run_serial(tasks: Iterable[ChunkTask], jobs: int = 1, address: str | None = None,
               fn=train_chunk) -> Iterator[list[JobResult]]:
    for task in tasks:
        for item in task.items:
            yield fn(replace(task, items=[item]))


_shared: dict[int, ProcessPoolExecutor] | None = None  # the open `shared_pool` block's pools, by worker count


def _new_pool(jobs: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))


@contextmanager
def shared_pool() -> Iterator[None]:
    """Within the block, every `pool` executor call with the same `jobs` reuses one process pool instead of
    starting its own, so its workers start (spawn, import torch and the tools) once: a zoo build's phases, and a
    benchmark run's zoo build and tracks, share them. A block inside another uses the outer one's pools. Every task
    sets its own torch threads and seeds, so what a worker ran before does not change what it computes. The pools
    are shut down when the outermost block ends; a pool that a dead worker broke is replaced at the next call."""
    global _shared
    if _shared is not None:
        yield
        return
    _shared = {}
    try:
        yield
    finally:
        pools, _shared = _shared, None
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


@EXECUTORS.register("pool")
def run_pool(tasks: Iterable[ChunkTask], jobs: int = 2, address: str | None = None,
             fn=train_chunk) -> Iterator[list[JobResult]]:
    tasks = list(tasks)
    threads = max(1, cpu_count() // max(1, jobs))
    for t in tasks:
        t.threads = t.threads or threads
    if _shared is None:
        with _new_pool(jobs) as pool:
            yield from _drain(pool, tasks, fn)
        return
    if jobs not in _shared or getattr(_shared[jobs], "_broken", False):  # CPython marks a pool a dead worker broke
        _shared[jobs] = _new_pool(jobs)
    yield from _drain(_shared[jobs], tasks, fn)


def _drain(pool: ProcessPoolExecutor, tasks: list, fn) -> Iterator:
    pending = {pool.submit(fn, t) for t in tasks}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    finally:  # the caller stopped early (an error): tasks not started yet do not hold a shared pool's workers
        for f in pending:
            f.cancel()


# A chunk trains its models at once (vmap over stacked weights), so one chunk is one GPU's work: a Ray task on CUDA
# asks for a whole GPU, and the chunk size (`batch_models`) is what fills it. A fraction would let several chunks
# share a GPU, each with its own CUDA context and copy of the data, for no gain over a larger chunk.
GPUS_PER_CUDA_TASK = 1


def ray_task_options(device: str) -> dict:
    """The resources one Ray task asks for: one CPU, and on a CUDA device `GPUS_PER_CUDA_TASK` GPUs (none on CPU).
    Ray gives the task its GPU through CUDA_VISIBLE_DEVICES, so inside the task it is always `cuda` (index 0)."""
    return {"num_cpus": 1, "num_gpus": GPUS_PER_CUDA_TASK if torch.device(device).type == "cuda" else 0}


@EXECUTORS.register("ray")
def run_ray(tasks: Iterable[ChunkTask], jobs: int = 2, address: str | None = None,
            fn=train_chunk) -> Iterator[list[JobResult]]:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs ray: pip install 'ray>=2.9'") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": jobs}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    try:
        remote = ray.remote(fn)
        tasks = list(tasks)
        for t in tasks:
            t.threads = t.threads or 1
            if torch.device(t.device).type == "cuda":
                t.device = "cuda"  # the GPU Ray assigns is the only one the task sees (see ray_task_options)
        need = max((ray_task_options(t.device)["num_gpus"] for t in tasks), default=0)
        # on the local Ray started here a task asking for more GPUs than exist would wait forever (a cluster's
        # autoscaler may still add GPU nodes, so there the tasks are left to wait)
        if need and started_here and not address and need > ray.cluster_resources().get("GPU", 0):
            raise UserError(f"the ray executor trains on CUDA, but the local Ray sees "
                            f"{ray.cluster_resources().get('GPU', 0):g} GPUs; use --device cpu")
        pending = [remote.options(**ray_task_options(t.device)).remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()
