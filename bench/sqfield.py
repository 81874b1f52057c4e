"""sessionq's side of the rows beside Huey, SAQ and arq (issue 20), one measurement per
process as bench.measure: `python -m bench.sqfield NAME --url URL [options]`.

- `sq_add_single`: Session.add of one run, one call per run.
- `sq_fairness`: a 10-run session added just after a 20,000-run one, one worker: how much of
  the big session had completed when the small one had.
- `sq_create_floor`: the least a create's writes cost, one at a time: one FCALL per create of
  a function that makes the Redis calls create.lua makes for a session of one queued run (the
  same commands, keys and values, the events packed by the caller) and nothing else - no
  checks, no contract, no prelude. What sessionq's create costs beyond it is its logic; what
  it costs beyond Huey's enqueue (one LPUSH) is these writes.
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


# create.lua's Redis calls for one new session of one run on an empty queue, nobody idle
# (see a MONITOR of `sessionq.Client.create`): KEYS session, sessions, job; ARGV sid, record,
# job data, job meta, now (RQ's ISO time), name, two packed events
FLOOR_LIBRARY = """#!lua name=sqbenchfloor
redis.register_function('sqbench_create_floor', function(keys, a)
  local sid = a[1]
  if redis.call('EXISTS', keys[1]) == 1 then return {'ok'} end
  redis.call('HSET', 'floor:sessions', sid, a[2])
  redis.call('SADD', 'floor:idx:status:Pending', sid)
  redis.call('SADD', 'floor:idx:kind:headless', sid)
  redis.call('SADD', 'floor:idx:owner:bench', sid)
  redis.call('HSET', keys[3], 'data', a[3], 'sq', a[4], 'origin', 'default', 'status',
    'queued', 'state', 'queued', 'enqueued_at', a[5])
  redis.call('HSET', 'floor:session:' .. sid .. ':tasks', sid .. '-1', a[6])
  local gen = redis.call('HMGET', 'floor:epoch', 'server', 'gen')
  redis.call('HSET', keys[1], 'status', 'Pending', 'seq', '2', 'next', '1', 'gen',
    gen[2] or '1', 'retention_ms', '604800000', 'line:floor:rq:queue:default', '1', 'queued', '1')
  redis.call('LLEN', 'floor:rq:queue:default')
  redis.call('HINCRBY', 'floor:queues:depths', 'floor:rq:queue:default', '1')
  redis.call('RPUSH', 'floor:rq:queue:default', sid .. '-1')
  redis.call('LPUSH', 'floor:wake:default', '1')
  redis.call('LTRIM', 'floor:wake:default', 0, 0)
  redis.call('SADD', 'floor:rq:queues', 'floor:rq:queue:default')
  redis.call('PUBLISH', 'floor:events', a[7])
  redis.call('PUBLISH', 'floor:events', a[8])
  redis.call('ZADD', keys[2], '1', a[7], '2', a[8])
  redis.call('HINCRBY', 'floor:runs:counts', 'queued', '1')
  return {'ok'}
end)
"""


def sq_create_floor(args: argparse.Namespace) -> Figures:
    import os

    import msgpack
    from redis import Redis

    from sessionq.common.times import rq_time

    r = Redis.from_url(args.url)
    r.function_load(FLOOR_LIBRARY, replace=True)
    pack = msgpack.packb
    data, meta = pack([SQ_TASK, None, [], {}]), pack({"v": 1, "name": "one"})

    def create() -> None:
        sid, now = os.urandom(6).hex(), time.time()
        record = pack({"v": 1, "id": sid, "name": "one", "kind": "headless",
                       "owner": "bench", "created_at": int(now * 1000), "replica_id": 1,
                       "replica_count": 1})  # fmt: skip
        head = {"v": 1, "ts": now, "session": sid, "worker": None}
        created = pack({**head, "seq": 1, "type": "session.created", "task": None,
                        "data": {"name": "one"}})  # fmt: skip
        queued = pack({**head, "seq": 2, "type": "task.queued", "task": f"{sid}-1",
                       "data": {"name": "one", "state": "queued"}})  # fmt: skip
        r.fcall("sqbench_create_floor", 3, f"floor:session:{sid}", f"floor:history:{sid}",
                f"floor:rq:job:{sid}-1", sid, record, data, meta, rq_time(now), "one",
                created, queued)  # fmt: skip

    for _ in range(10):
        create()
    started = time.perf_counter()
    for _ in range(args.n):
        create()
    elapsed = time.perf_counter() - started
    r.close()
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


MEASUREMENTS = {"sq_add_single": sq_add_single, "sq_fairness": sq_fairness,
                "sq_create_floor": sq_create_floor}  # fmt: skip


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
