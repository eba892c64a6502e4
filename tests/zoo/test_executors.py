"""The pool executor's shared pool: one set of workers for a whole benchmark run (its zoo build and tracks)."""

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from trojanbench.tasks.jobs import TrackTask
from trojanbench.zoo.executors import EXECUTORS, shared_pool


def worker_pid(task):  # a task function (module level: the pool sends it by name): which worker ran the task
    return [os.getpid()]


def die(task):
    os._exit(3)


def pids(fn=worker_pid, n=4):
    return {p for result in EXECUTORS.get("pool")([TrackTask(items=[i]) for i in range(n)], jobs=2, fn=fn) for p in result}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_without_a_shared_pool_each_call_starts_its_own_workers():
    first, second = pids(), pids()
    assert first.isdisjoint(second) and os.getpid() not in first | second


def test_a_shared_pool_starts_its_workers_once_and_stops_them_at_the_end():
    with shared_pool():
        first = pids()
        with shared_pool():  # an inner block (a zoo build inside a benchmark run) uses the outer one's pool
            second = pids()
        assert len(first | second) <= 2 and os.getpid() not in first
        assert all(alive(p) for p in first | second)
    assert not any(alive(p) for p in first | second)


def test_a_shared_pool_a_dead_worker_broke_is_replaced():
    with shared_pool():
        before = pids()
        with pytest.raises(BrokenProcessPool):
            pids(fn=die, n=1)
        after = pids()
        assert after and after.isdisjoint(before)
