"""arq (one asyncio Worker) measured the way bench.measure measures sessionq and RQ:
`python -m bench.foreign.arq_bench NAME --url URL [--n N]`, in arq's own venv (arq 0.28
requires redis-py < 6, so it cannot share sessionq's).

arq's worker polls its queue (a sorted set) every `poll_delay` rather than blocking on it: it
is set to ARQ_POLL_DELAY_S here (arq's default, 0.5 s, caps a drain at a few hundred jobs a
second). Up to `--concurrency` jobs run at once (default: arq's max_jobs, 10); a result is
awaited with Job.result(poll_delay=RESULT_POLL_S).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from arq import Worker, create_pool
from arq.connections import RedisSettings

from bench.foreign.common import (
    Countdown,
    Figures,
    measure,
    round_trips,
    spawn_worker,
    timed_drain,
    timed_enqueues,
)
from bench.measure import latency_figures, stop

MODULE = "bench.foreign.arq_bench"
ARQ_DEFAULT_MAX_JOBS = 10
ARQ_POLL_DELAY_S = 0.01
RESULT_POLL_S = 0.005


async def noop(ctx: Any) -> None:
    return None


async def nap(ctx: Any, seconds: float) -> None:
    await asyncio.sleep(seconds)


def settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    countdown = Countdown(args.expect) if args.expect else None

    async def after(ctx: Any) -> None:
        if countdown is not None:
            countdown.done()

    w = Worker(functions=[noop, nap], redis_settings=settings(args.url), after_job_end=after,
               max_jobs=args.concurrency or ARQ_DEFAULT_MAX_JOBS, poll_delay=ARQ_POLL_DELAY_S,
               log_results=False)  # fmt: skip
    w.run()


def enqueue_single(args: argparse.Namespace) -> Figures:
    async def run() -> Figures:
        pool = await create_pool(settings(args.url))
        figures = await timed_enqueues(lambda: pool.enqueue_job("noop"), args.n)
        await pool.aclose()
        return figures

    return asyncio.run(run())


def drain(args: argparse.Namespace) -> Figures:
    async def fill() -> None:
        pool = await create_pool(settings(args.url))
        for _ in range(args.n):
            if args.sleep:
                await pool.enqueue_job("nap", args.sleep)
            else:
                await pool.enqueue_job("noop")
        await pool.aclose()

    asyncio.run(fill())
    return timed_drain(MODULE, args)


def round_trip(args: argparse.Namespace) -> Figures:
    proc = spawn_worker(MODULE, args, 0)

    async def run() -> list[float]:
        pool = await create_pool(settings(args.url))

        async def once() -> None:
            job = await pool.enqueue_job("noop")
            if job is None:
                raise RuntimeError("arq did not enqueue the job")
            await job.result(timeout=30, poll_delay=RESULT_POLL_S)

        samples = await round_trips(once, args.n)
        await pool.aclose()
        return samples

    try:
        samples = asyncio.run(run())
    finally:
        stop(proc)
    return latency_figures(samples)


def main() -> None:
    measure({"worker": worker, "enqueue_single": enqueue_single, "drain": drain,
             "round_trip": round_trip})  # fmt: skip


if __name__ == "__main__":
    main()
