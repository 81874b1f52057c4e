"""What the drivers of the other job queues share: their arguments, the JSON line they print,
and the worker process that counts its completions and exits when it has them all.

A driver runs in that queue's own venv (bench/.venvs/<system>, made by bench.foreign.venvs),
where sessionq is not installed: it imports only the standard library, redis-py and the
helpers of bench.measure that need nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.measure import ROOT, WARMUP, stop

Figures = dict[str, Any]
URL_ENV = "BENCH_REDIS_URL"  # the drivers' task modules build their queue objects from it
if "--url" in sys.argv[:-1]:  # before a driver builds them at import (Huey: its tasks' queue)
    os.environ[URL_ENV] = sys.argv[sys.argv.index("--url") + 1]


def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one measurement of another job queue")
    parser.add_argument("name", choices=sorted(names))
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--n", type=int, default=1000, help="runs or samples")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="jobs at once in the worker (0: its default)"
    )
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each job sleeps")
    parser.add_argument("--expect", type=int, default=0, help="worker: exit after this many")
    args = parser.parse_args(argv)
    os.environ[URL_ENV] = args.url
    return args


def emit(figures: Figures, detail: dict[str, Any] | None = None) -> None:
    print(json.dumps({"figures": figures, "detail": detail or {}}), flush=True)


def spawn_worker(module: str, args: argparse.Namespace, expect: int) -> subprocess.Popen[str]:
    """This driver's `worker` as a process of the same venv, exiting after `expect` jobs."""
    cmd = [sys.executable, "-m", module, "worker", "--url", args.url, "--expect", str(expect),
           "--concurrency", str(args.concurrency), "--sleep", str(args.sleep)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True)


def timed_drain(module: str, args: argparse.Namespace, timeout: float = 900.0) -> Figures:
    """Seconds from starting one worker process until it has finished args.n jobs and exited
    (start-up included, as for sessionq's and RQ's burst workers)."""
    started = time.perf_counter()
    proc = spawn_worker(module, args, args.n)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop(proc)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{module} worker exited with {code}")
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


class Countdown:
    """Counts finished jobs in a worker process; at `expect` it ends the process at once (the
    drain is over: nothing is left for it to do), exit status 0."""

    def __init__(self, expect: int) -> None:
        self.left = expect
        self.lock = threading.Lock()

    def done(self, *_: object, **__: object) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                sys.stdout.flush()
                os._exit(0)


def measure(handlers: dict[str, Callable[[argparse.Namespace], Figures | None]],
            argv: Sequence[str] | None = None) -> None:  # fmt: skip
    args = parse_args(argv, list(handlers))
    figures = handlers[args.name](args)
    if figures is not None:
        emit(figures)


async def timed_enqueues(enqueue: Callable[[], Awaitable[object]], n: int) -> Figures:
    """n awaited enqueues one after another, after 10 that are not timed."""
    for _ in range(10):
        await enqueue()
    started = time.perf_counter()
    for _ in range(n):
        await enqueue()
    elapsed = time.perf_counter() - started
    return {"runs_per_s": n / elapsed, "seconds": elapsed}


async def round_trips(once: Callable[[], Awaitable[None]], n: int) -> list[float]:
    """Seconds each of n round trips took: one first while the worker starts, then WARMUP that
    are not counted (as bench.measure.timed_samples)."""
    await once()
    samples = []
    for i in range(WARMUP + n):
        started = time.perf_counter()
        await once()
        if i >= WARMUP:
            samples.append(time.perf_counter() - started)
    return samples
