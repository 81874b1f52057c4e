"""Huey (RedisHuey, its thread consumer) measured the way bench.measure measures sessionq and
RQ: `python -m bench.foreign.huey_bench NAME --url URL [--n N]`, in Huey's own venv.

Huey's task names hold the module (`__main__`), so producer and consumer are both this module
run with -m. Results: notify_result=True (the consumer LPUSHes a key that Result.get BLPOPs),
Huey's lowest-latency way to wait for one; no-op jobs return None, which Huey does not store.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from huey import RedisHuey, signals

from bench.foreign.common import URL_ENV, Countdown, Figures, measure, timed_drain
from bench.measure import calls_per_s, latency_figures, stop, timed_samples, wait_until

huey = RedisHuey("bench", url=os.environ.get(URL_ENV, "redis://127.0.0.1:1"),
                 notify_result=True)  # fmt: skip
MODULE = "bench.foreign.huey_bench"


@huey.task()
def noop() -> None:
    return None


@huey.task()
def one() -> int:
    return 1


@huey.task()
def nap(seconds: float) -> None:
    time.sleep(seconds)


def worker(args: argparse.Namespace) -> None:
    """A consumer of `--concurrency` threads (default 1) that exits after --expect jobs."""
    logging.basicConfig(level=logging.WARNING)
    if args.expect:
        countdown = Countdown(args.expect)
        huey.signal(signals.SIGNAL_COMPLETE)(countdown.done)
    consumer = huey.create_consumer(workers=args.concurrency or 1, worker_type="thread",
                                    periodic=False, check_worker_health=False)  # fmt: skip
    consumer.run()


def enqueue_single(args: argparse.Namespace) -> Figures:
    return calls_per_s(args.n, noop)


def drain(args: argparse.Namespace) -> Figures:
    for _ in range(args.n):
        if args.sleep:
            nap(args.sleep)
        else:
            noop()
    return timed_drain(MODULE, args)


def round_trip(args: argparse.Namespace) -> Figures:
    proc = None
    try:
        from bench.foreign.common import spawn_worker

        proc = spawn_worker(MODULE, args, 0)
        wait_until(lambda: one().get(blocking=True, timeout=1) == 1, "a Huey consumer", 30)

        def once() -> None:
            if one().get(blocking=True, timeout=10) != 1:
                raise RuntimeError("no result from Huey within 10 s")

        return latency_figures(timed_samples(args.n, once))
    finally:
        if proc is not None:
            stop(proc)


def main() -> None:
    measure({"worker": worker, "enqueue_single": enqueue_single, "drain": drain,
             "round_trip": round_trip})  # fmt: skip


if __name__ == "__main__":
    main()
