"""sessionq's side of the rows beside Huey, SAQ and arq (issue 20), one measurement per
process as bench.measure: `python -m bench.sqfield NAME --url URL [options]`.

- `sq_add_single`: Session.add of one run, one call per run.
- `sq_fairness`: a 10-run session added just after a 20,000-run one, one worker: how much of
  the big session had completed when the small one had.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from bench.measure import (
    SQ_TASK,
    WORKER_START_TIMEOUT_S,
    Figures,
    spawn,
    sq_client,
    sq_specs,
    stop,
    wait_until,
)

POLL_S = 0.01  # how often sq_fairness reads the two sessions' counts


def sq_add_single(args: argparse.Namespace) -> Figures:
    from sessionq.producer import Task

    c = sq_client(args.url)
    session = c.session("one-by-one")
    for i in range(10):  # connect and load the scripts first
        session.add(Task(SQ_TASK, name=f"warm{i}"))
    started = time.perf_counter()
    for i in range(args.n):
        session.add(Task(SQ_TASK, name=f"r{i}"))
    elapsed = time.perf_counter() - started
    c.close()
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


def sq_fairness(args: argparse.Namespace) -> Figures:
    """One worker already running; a session of args.n runs, then one of args.small: where
    the big one was when the small one completed."""
    c = sq_client(args.url)
    proc = spawn("sq_worker", args.url)
    try:
        wait_until(lambda: c.redis.zcard(c.keys.workers()) >= 1, "a sessionq worker",
                   WORKER_START_TIMEOUT_S)  # fmt: skip
        big = c.open_session("big")
        small = c.open_session("small")
        specs = sq_specs(args.n)
        c.add_runs(big, specs)
        added = time.perf_counter()
        c.add_runs(small, sq_specs(args.small))
        while True:
            counts = {r["id"]: r["tasks"]["succeeded"] for r in c.info([big, small])}
            if counts[small] >= args.small:
                break
            if time.perf_counter() - added > 600:
                raise RuntimeError("the small session did not complete within 600 s")
            time.sleep(POLL_S)
        took = time.perf_counter() - added
    finally:
        stop(proc)
        c.close()
    return {"big_done_pct": counts[big] / args.n * 100, "big_done_runs": counts[big],
            "small_done_s": took}  # fmt: skip


MEASUREMENTS = {"sq_add_single": sq_add_single, "sq_fairness": sq_fairness}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sqfield", description=__doc__)
    parser.add_argument("name", choices=sorted(MEASUREMENTS))
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--n", type=int, default=1000, help="runs (the big session's)")
    parser.add_argument("--small", type=int, default=10, help="the small session's runs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    figures: dict[str, Any] = MEASUREMENTS[args.name](args)
    print(json.dumps({"figures": figures, "detail": {}}))


if __name__ == "__main__":
    main()
