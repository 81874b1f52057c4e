"""SAQ (its Redis queue, one asyncio Worker) measured the way bench.measure measures sessionq
and RQ: `python -m bench.foreign.saq_bench NAME --url URL [--n N]`, in SAQ's own venv.

A job's result is awaited with Job.refresh(until_complete=...), which SAQ serves from pub/sub.
The worker runs `--concurrency` jobs at once (default: SAQ's, 10).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from redis import asyncio as aioredis
from saq import Worker
from saq.queue.redis import RedisQueue

from bench.foreign.common import (
    Countdown,
    Figures,
    measure,
    round_trips,
    spawn_worker,
    timed_drain,
    timed_enqueues,
)
from bench.measure import latency_figures, percentile, stop

MODULE = "bench.foreign.saq_bench"
SAQ_DEFAULT_CONCURRENCY = 10


async def noop(ctx: Any) -> None:
    return None


async def nap(ctx: Any, *, seconds: float) -> None:
    await asyncio.sleep(seconds)


def connect(url: str, concurrency: int) -> RedisQueue:
    """SAQ's queue on a connection pool big enough for `concurrency` jobs (redis-py's default
    pool raised "Too many connections" at 500)."""
    return RedisQueue(aioredis.from_url(url, max_connections=concurrency * 2 + 20))


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    countdown = Countdown(args.expect) if args.expect else None

    async def after(ctx: Any) -> None:
        if countdown is not None:
            countdown.done()

    async def run() -> None:
        queue = connect(args.url, args.concurrency or SAQ_DEFAULT_CONCURRENCY)
        w = Worker(queue, functions=[noop, nap], after_process=after,
                   concurrency=args.concurrency or SAQ_DEFAULT_CONCURRENCY)  # fmt: skip
        await w.start()

    asyncio.run(run())


def enqueue_single(args: argparse.Namespace) -> Figures:
    async def run() -> Figures:
        queue = connect(args.url, 1)
        await queue.connect()
        figures = await timed_enqueues(lambda: queue.enqueue("noop"), args.n)
        await queue.disconnect()
        return figures

    return asyncio.run(run())


def drain(args: argparse.Namespace) -> Figures:
    async def fill() -> None:
        queue = connect(args.url, 1)
        await queue.connect()
        for _ in range(args.n):
            if args.sleep:
                await queue.enqueue("nap", seconds=args.sleep)
            else:
                await queue.enqueue("noop")
        await queue.disconnect()

    asyncio.run(fill())
    return timed_drain(MODULE, args)


def round_trip(args: argparse.Namespace) -> Figures:
    proc = spawn_worker(MODULE, args, 0)

    async def run() -> list[float]:
        queue = connect(args.url, 1)
        await queue.connect()

        async def once() -> None:
            job = await queue.enqueue("noop")
            if job is None:
                raise RuntimeError("SAQ did not enqueue the job")
            # Job.refresh reads the job, then subscribes to its channel: an end published in
            # between is missed and refresh waits out its timeout (seen once in 500 round trips
            # under load). Wait a second at a time, reading the job again after each.
            for _ in range(30):
                try:
                    await job.refresh(until_complete=1)
                except TimeoutError:
                    await job.refresh()
                if job.status == "complete":
                    return
            raise RuntimeError(f"SAQ job {job.key}: {job.status} after 30 s")

        samples = await round_trips(once, args.n)
        await queue.disconnect()
        return samples

    try:
        samples = asyncio.run(run())
    finally:
        stop(proc)
    figures = latency_figures(samples)
    figures["p90_ms"] = percentile(samples, 90) * 1000
    return figures


def main() -> None:
    measure({"worker": worker, "enqueue_single": enqueue_single, "drain": drain,
             "round_trip": round_trip})  # fmt: skip


if __name__ == "__main__":
    main()
