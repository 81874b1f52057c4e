"""sessionq's side of the rows beside Huey, SAQ and arq (issue 20), one measurement per
process as bench.measure: `python -m bench.sqfield NAME --url URL [options]`.

- `sq_add_single`: Session.add of one run, one call per run.
- `sq_fairness`: a 10-run session added just after a 20,000-run one, one worker: how much of
  the big session had completed when the small one had.
- `sq_create_floor`: the least a create's writes cost, one at a time: one FCALL per create of
  a function that makes the Redis calls create.lua makes for a session of one run queued
  behind others (the same commands and values, its keys in KEYS, the events packed by the
  caller) and nothing else - no checks, no contract, no prelude. What sessionq's create costs
  beyond it is its logic; what it costs beyond Huey's enqueue (one LPUSH) is these writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

from bench.measure import (
    SQ_TASK,
    WORKER_START_TIMEOUT_S,
    Figures,
    calls_per_s,
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
    names = (f"r{i}" for i in itertools.count())
    figures = calls_per_s(args.n, lambda: session.add(Task(SQ_TASK, name=next(names))))
    c.close()
    return figures


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


# create.lua's Redis calls for one new session of one run queued behind others, nobody idle
# (see a MONITOR of `sessionq.Client.create`), each key sent in KEYS: the session, its
# history, tasks and job hash; the index hash and sets, the epoch, RQ's queue and set of
# queues, the depths, the wake list, the all-sessions channel, the run counters. ARGV: sid,
# run id, record, job data, job meta, RQ's ISO time, name, two packed events.
FLOOR_LIBRARY = """#!lua name=sqbenchfloor
redis.register_function('sqbench_create_floor', function(k, a)
  local sid, id = a[1], a[2]
  if redis.call('EXISTS', k[1]) == 1 then return {'ok'} end
  redis.call('HSET', k[5], sid, a[3])
  redis.call('SADD', k[6], sid)
  redis.call('SADD', k[7], sid)
  redis.call('SADD', k[8], sid)
  redis.call('HSET', k[4], 'data', a[4], 'sq', a[5], 'origin', 'default', 'status',
    'queued', 'state', 'queued', 'enqueued_at', a[6])
  redis.call('HSET', k[3], id, a[7])
  local gen = redis.call('HMGET', k[9], 'server', 'gen')
  redis.call('HSET', k[1], 'status', 'Pending', 'seq', '2', 'next', '1', 'gen',
    gen[2] or '1', 'retention_ms', '604800000', 'line:' .. k[10], '1', 'queued', '1')
  redis.call('LLEN', k[10])
  redis.call('HINCRBY', k[12], k[10], '1')
  redis.call('RPUSH', k[10], id)
  redis.call('LPUSH', k[13], '1')
  redis.call('LTRIM', k[13], 0, 0)
  redis.call('SADD', k[11], k[10])
  redis.call('PUBLISH', k[14], a[8])
  redis.call('PUBLISH', k[14], a[9])
  redis.call('ZADD', k[2], '1', a[8], '2', a[9])
  redis.call('HINCRBY', k[15], 'queued', '1')
  return {'ok'}
end)
"""


def sq_create_floor(args: argparse.Namespace) -> Figures:
    import os

    from redis import Redis

    from sessionq.common import codec
    from sessionq.common.keys import Keys, run_id
    from sessionq.common.rqcompat import RQKeys
    from sessionq.common.times import rq_time

    r, k, rq = Redis.from_url(args.url), Keys("floor:"), RQKeys("floor:")
    r.function_load(FLOOR_LIBRARY, replace=True)
    fixed = [k.sessions(), k.idx_status("Pending"), k.idx_kind("headless"),
             k.idx_owner("bench"), k.data_epoch(), rq.queue("default"), rq.queues_set,
             k.queue_depths(), k.wake("default"), k.events_all_channel(),
             k.run_counts()]  # fmt: skip
    data, meta = codec.encode([SQ_TASK, None, [], {}]), codec.encode({"v": 1, "name": "one"})

    def create() -> None:
        sid, now = os.urandom(6).hex(), time.time()
        rid = run_id(sid, 1)
        record = codec.encode({"v": 1, "id": sid, "name": "one", "kind": "headless",
                               "owner": "bench", "created_at": int(now * 1000),
                               "replica_id": 1, "replica_count": 1})  # fmt: skip
        head = {"v": 1, "ts": now, "session": sid, "worker": None}
        created = codec.encode({**head, "seq": 1, "type": "session.created", "task": None,
                                "data": {"name": "one"}})  # fmt: skip
        queued = codec.encode({**head, "seq": 2, "type": "task.queued", "task": rid,
                               "data": {"name": "one", "state": "queued"}})  # fmt: skip
        keys = [k.session(sid), k.history(sid), k.session_tasks(sid), rq.job(rid), *fixed]
        r.fcall("sqbench_create_floor", len(keys), *keys, sid, rid, record, data, meta,
                rq_time(now), "one", created, queued)  # fmt: skip

    figures = calls_per_s(args.n, create)
    r.function_delete("sqbenchfloor")
    r.close()
    return figures


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
