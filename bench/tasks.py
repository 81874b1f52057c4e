"""Functions the benchmarks run: `noop` for sessionq workers (`--import bench.tasks`),
`async_sleep`/`sleep` for the I/O-bound drains (bench.measure sq_io_drain),
`rq_noop` for plain RQ workers (RQ runs any importable function), `soak` for bench.soak and
`chatty` for bench.retention."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import IO

from sessionq.worker import current_task, task

_ledgers: dict[int, IO[str]] = {}


@task
def noop() -> None:
    """Registered as "bench.tasks:noop"."""
    return None


def rq_noop() -> None:
    """For plain RQ: enqueued as `bench.tasks.rq_noop`."""
    return None


@task
def soak(ledger_dir: str, seconds: float = 0.0) -> None:
    """Write "<run id> <attempt>" to this process's ledger as it begins, then take `seconds`.
    One line is one write(2) of an O_APPEND file: a SIGKILL never loses or tears a line that
    was written, so the ledger says how often each run really began."""
    ctx = current_task()
    pid = os.getpid()
    ledger = _ledgers.get(pid)
    if ledger is None:
        ledger = _ledgers[pid] = open(Path(ledger_dir) / f"{pid}.txt", "a", buffering=1)  # noqa: SIM115 - kept open for the process
    ledger.write(f"{ctx.task_id} {ctx.attempt}\n")
    if seconds:
        time.sleep(seconds)


@task
def chatty(i: int = 0) -> dict[str, int]:
    """A run that leaves what a real one does - a log line, a progress event, a result - for
    bench.retention (registered as "bench.tasks:chatty")."""
    ctx = current_task()
    ctx.progress(0.5, "half way")
    ctx.log(f"run {ctx.task_id} of input {i}")
    return {"input": i, "pid": os.getpid()}


@task
async def async_sleep(seconds: float) -> None:
    """An I/O-bound run on the worker's event loop (registered as "bench.tasks:async_sleep")."""
    await asyncio.sleep(seconds)


@task
def sleep(seconds: float) -> None:
    """An I/O-bound plain function, on a pool thread with --max-jobs > 1 ("bench.tasks:sleep")."""
    time.sleep(seconds)
