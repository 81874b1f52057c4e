"""I/O-bound runs for the drains of issue 20 (`sessionq worker --max-jobs N -i bench.iotasks`):
an `async def` and a plain function, each waiting NAP_S as a network call would. Imported only
by workers that offer --max-jobs (a worker without it may not take `async def` tasks)."""

from __future__ import annotations

import asyncio
import time

from sessionq.worker import task

NAP_S = 0.1


@task
async def nap_async() -> None:
    """Registered as "bench.iotasks:nap_async"."""
    await asyncio.sleep(NAP_S)


@task
def nap() -> None:
    """Registered as "bench.iotasks:nap"."""
    time.sleep(NAP_S)
