"""What SESSIONQ_WAIT_REPLICAS costs on a healthy master with one replica, in one run:
`python -m bench.waitcost [--runs 10000] [--round-trips 500] [--rounds 3] [--wait-replicas 0,1]`.

A throwaway master and a replica in sync (loopback, no persistence). Each round measures, for
each value in turn (after FLUSHALL), bench.measure's 1-worker drain of --runs no-op runs
(one add_runs call, then a burst worker) and its round trip (create, then the task.succeeded
event on a kept listen()), with SESSIONQ_WAIT_REPLICAS set for the producer and the worker.
Prints the medians and the ratio to the first value; all figures go to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis import Redis

from bench.compare import MeasurementFailed, log, run_child
from bench.faults import info, wait_until
from bench.plan import SQ, Variant
from sessionq.common.redisserver import RedisServer

FIGURES = {"drain": ("runs_per_s", "drain, 1 worker [runs/s]"),
           "round_trip": ("p50_ms", "round trip p50 [ms]"),
           "round_trip_p99": ("p99_ms", "round trip p99 [ms]")}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.waitcost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=10_000, help="runs drained")
    parser.add_argument("--round-trips", type=int, default=500, help="round trips timed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--wait-replicas", default="0,1", help="values compared (default 0,1)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.waits = [int(v) for v in args.wait_replicas.split(",")]
    return args


def measure(url: str, args: argparse.Namespace) -> dict[int, dict[str, list[dict[str, Any]]]]:
    raw: dict[int, dict[str, list[dict[str, Any]]]] = {w: {"drain": [], "round_trip": []}
                                                        for w in args.waits}  # fmt: skip
    redis = Redis.from_url(url)
    try:
        for number in range(1, args.rounds + 1):
            for wait in args.waits:
                os.environ["SESSIONQ_WAIT_REPLICAS"] = str(wait)
                for kind, variant in (
                    ("drain", Variant(SQ, "sq_drain", ("--n", str(args.runs), "--stats"))),
                    ("round_trip", Variant(SQ, "sq_round_trip",
                                           ("--n", str(args.round_trips)))),
                ):  # fmt: skip
                    redis.flushall()
                    result = run_child(variant, url)
                    raw[wait][kind].append(result)
                    log(f"round {number}/{args.rounds} WAIT {wait} {kind}: {result['figures']}")
    finally:
        os.environ.pop("SESSIONQ_WAIT_REPLICAS", None)
        redis.close()
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    master = RedisServer().start()
    replica = RedisServer(replica_of=master).start()
    try:

        def in_sync() -> bool:
            found = info(master.port, "replication")
            return bool(found.get("connected_slaves")) and found["slave0"]["state"] == "online"

        wait_until(in_sync, "the replica to be in sync")
        raw = measure(master.url, args)
    except MeasurementFailed as exc:
        log(f"bench.waitcost: a measurement failed: {exc}")
        return 1
    finally:
        replica.stop()
        master.stop()
    medians: dict[int, dict[str, float]] = {}
    for wait in args.waits:
        medians[wait] = {}
        for name, (figure, _) in FIGURES.items():
            kind = "round_trip" if name.startswith("round_trip") else name
            medians[wait][name] = statistics.median(r["figures"][figure] for r in raw[wait][kind])
    base = args.waits[0]
    print(f"{args.rounds} round(s), medians; a master and one replica in sync; load average "
          f"{os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    print(f"{'SESSIONQ_WAIT_REPLICAS':<24}" + "".join(f"{label:>30}" for _, label in
                                                       FIGURES.values()))  # fmt: skip
    for wait in args.waits:
        cells = [f"{medians[wait][n]:,.2f} ({medians[wait][n] / medians[base][n]:.2f}x)"
                 for n in FIGURES]  # fmt: skip
        print(f"{wait:<24}" + "".join(f"{c:>30}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "raw": raw}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
