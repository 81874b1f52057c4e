"""Registered functions for the `--max-jobs` tests (`--import tests.inflight_tasks`): async and
thread runs that prove they were in flight together, by behaviour."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from sessionq.worker import current_task, task

MEET_TIMEOUT_S = 120.0  # generous: a loaded machine may take long to start them all
_barriers: dict[str, threading.Barrier] = {}
_arrived: dict[str, int] = {}
_guard = threading.Lock()


def _ledger(path: str) -> None:
    """Note "<run id> <attempt>" as the run begins (one O_APPEND write: never torn)."""
    ctx = current_task()
    with open(Path(path), "a", buffering=1) as out:
        out.write(f"{ctx.task_id} {ctx.attempt}\n")


@task
def meet_in_threads(group: str, n: int) -> str:
    """Returns only once `n` runs of `group` are in flight together (a barrier on pool
    threads); fails if they never are. Then says which run current_task() names."""
    with _guard:
        barrier = _barriers.setdefault(group, threading.Barrier(n))
    barrier.wait(timeout=MEET_TIMEOUT_S)
    return current_task().task_id


@task
async def meet_on_the_loop(group: str, n: int) -> str:
    """As meet_in_threads, for async runs on the worker's event loop."""
    _arrived[group] = _arrived.get(group, 0) + 1
    deadline = time.monotonic() + MEET_TIMEOUT_S
    while _arrived[group] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {_arrived[group]} of {n} runs were in flight together")
        await asyncio.sleep(0.01)
    ctx = current_task()
    ctx.progress(0.5, "met")
    ctx.log(f"{ctx.task_id} met the others")
    await asyncio.sleep(0)  # another run's turn: current_task() must still be ours
    return current_task().task_id


@task
async def async_sleep(seconds: float, ledger: str = "") -> float:
    if ledger:
        _ledger(ledger)
    await asyncio.sleep(seconds)
    return seconds


@task
def thread_sleep(seconds: float, ledger: str = "") -> float:
    """Sleeps in slices, ending early (and saying so) once told to stop."""
    if ledger:
        _ledger(ledger)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_task().should_stop:
            return -1.0
        time.sleep(0.02)
    return seconds


@task
def deaf_sleep(seconds: float) -> float:
    """Never looks at should_stop: only the worker's escalation ends it early."""
    time.sleep(seconds)
    return seconds


@task
async def async_environment() -> dict[str, str]:
    """The run's variables as current_task().env holds them (not os.environ, shared by every
    run in flight)."""
    env = current_task().env
    return {"task": env.get("SESSIONQ_TASK_ID", ""), "environ": os.environ.get("X_RUN", "")}
