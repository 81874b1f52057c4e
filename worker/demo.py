"""The functions `sessionq demo` runs (a worker imports them with --import sessionq.worker.demo)."""

from __future__ import annotations

import time
from typing import Any

from sessionq.worker.context import current_task
from sessionq.worker.registry import task

FLAKY_EVERY = 50


@task
def simulate(i: int, steps: int = 4, step_s: float = 0.005) -> dict[str, Any]:
    """A small unit of work that reports its progress; every 50th run fails its first attempt
    (and is retried) so the demo shows retries too."""
    ctx = current_task()
    for step in range(steps):
        time.sleep(step_s)
        ctx.progress((step + 1) / steps)
    if i % FLAKY_EVERY == 7 and ctx.attempt == 1:
        raise RuntimeError(f"run {i}: a simulated flaky failure (it will be retried)")
    return {"i": i, "square": i * i}
