"""create.lua (create() of one session of one run) writes and publishes what enqueue.lua
writes and publishes for the same call: every key, every value, every event - with nobody
waiting for work, with a worker waiting idle (the run is handed to it) or one not to be handed
it (stale, of another queue, runs queued before it), behind runs queued before, and for a
call sent again after its reply was lost; by FCALL, and by EVALSHA (Redis 6, or a server that
refuses the function library)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.jobhash import JobFields, build_run
from sessionq.common.keys import Layout, run_id
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import TaskState
from tests.conftest import ON_CLUSTER, PARTITIONS

pytestmark = pytest.mark.skipif(
    ON_CLUSTER or bool(PARTITIONS), reason="create.lua serves one partition only (plans.create)"
)
SID, NOW, WORKER = "0a1b2c3d4e5f", 1_700_000_000.25, "host:1:w"


def snapshot(redis: Redis) -> dict[bytes, Any]:
    """Every key of the database, with its type and all it holds."""
    out: dict[bytes, Any] = {}
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key)
        if kind == b"hash":
            out[key] = ("hash", redis.hgetall(key))
        elif kind == b"set":
            out[key] = ("set", redis.smembers(key))
        elif kind == b"list":
            out[key] = ("list", redis.lrange(key, 0, -1))
        elif kind == b"zset":
            out[key] = ("zset", redis.zrange(key, 0, -1, withscores=True))
        else:
            out[key] = (kind.decode(), redis.dump(key))
    return out


def idle_worker(redis: Redis, scripts: Scripts, serves: str, beat_ms: int, line: str) -> None:
    """A worker serving queue `serves`, waiting idle in `line`'s line with a heartbeat at
    `beat_ms`, as run.lua lists one (in another queue's line: a lost worker's name back)."""
    k = scripts.keys
    redis.sadd(k.idle_workers(), WORKER)
    redis.rpush(k.idle(line), WORKER)
    redis.hset(scripts.rq.worker(WORKER), "queues", serves)
    redis.zadd(k.workers(), {WORKER: beat_ms})


SITUATIONS = ["nothing", "idle worker", "queued runs", "sent before", "idle worker, queued runs",
              "stale idle worker", "idle worker of another queue"]  # fmt: skip
SHAPES = [("default", {}, 5000), ("gpu", {"timeout": 30, "retries": 2, "retry_delay": 1.5}, None)]
CASES = [
    *[("FCALL", before, *shape) for before in SITUATIONS for shape in SHAPES],
    *[("EVALSHA", before, *SHAPES[0]) for before in SITUATIONS],  # (Redis 6, or refused)
]


@pytest.mark.parametrize(("by", "before", "queue", "run_options", "retention_ms"), CASES)
def test_create_writes_and_publishes_what_enqueue_does(
    redis: Redis, settings: Settings, by: str, before: str, queue: str,
    run_options: dict[str, Any], retention_ms: int | None,
) -> None:  # fmt: skip
    scripts = Scripts(redis, settings)
    scripts.use_functions = by == "FCALL"
    spec = build_run(name="n", task="tests.tasks:noop", **run_options)
    fields = JobFields(spec.data, spec.meta("n"), spec.shared_fields(queue, NOW))
    session = (SID, True, codec.encode({"id": SID, "name": "n"}), "n", "headless", "tester")
    run = (0, run_id(SID, 1), "n", TaskState.QUEUED.value, queue, fields, None)

    seconds, _ = sync_reply(redis.time())
    beat_ms = (seconds + 60) * 1000  # (fresh through both calls, the same in both)
    count = Layout.of(settings).partitions_key()  # (set once per process, by its first call)

    def prepare() -> None:
        redis.flushdb()
        redis.set(count, "1")
        redis.hset(scripts.keys.data_epoch(), mapping={"server": "s", "gen": "1700000000000001"})
        if before.startswith("idle worker"):
            served = "other" if before.endswith("another queue") else queue
            idle_worker(redis, scripts, served, beat_ms, queue)
        elif before == "stale idle worker":
            idle_worker(redis, scripts, queue, (seconds - 3600) * 1000, queue)
        if before.endswith("queued runs"):
            redis.rpush(scripts.rq.queue(queue), "other-1")
        elif before == "sent before":
            redis.hset(scripts.keys.session(SID), "status", "Pending")

    expected = 0 if before == "sent before" else 2  # events published

    def outcome(send: Callable[[], Any]) -> tuple[Any, dict[bytes, Any], list[bytes]]:
        prepare()
        listener = redis.pubsub(ignore_subscribe_messages=True)
        listener.subscribe(scripts.globals["chan_all"])
        listener.get_message(timeout=1.0)  # (its confirmation: the server has it now)
        reply = send()
        heard, deadline = [], time.monotonic() + 5.0
        while time.monotonic() < deadline:
            message = listener.get_message(timeout=0.1)
            if message is not None:
                heard.append(message["data"])
            elif len(heard) >= expected:  # (and then one more quiet 0.1 s: nothing else)
                break
        listener.close()
        return reply, snapshot(redis), heard

    general = outcome(lambda: scripts.call("enqueue", *scripts.enqueue_call(
        [session], [run], now=NOW, retention_ms=retention_ms)))  # fmt: skip
    lean = outcome(lambda: scripts.call("create", *scripts.create_call(
        session, run, NOW, retention_ms)))  # fmt: skip
    assert lean[1] == general[1]
    assert lean[2] == general[2]
    assert lean[0] == general[0] == [b"ok"]
    # (what the two agree on is the call's work, not an empty database)
    job = general[1].get(scripts.rq.job(run_id(SID, 1)).encode())
    if before == "sent before":
        assert job is None and general[2] == []  # (nothing written again)
    else:
        assert len(general[2]) == 2  # session.created, task.queued
        assert job is not None
        assert job[1][b"state"] == (b"started" if before == "idle worker" else b"queued")
        inbox = scripts.keys.worker_inbox(WORKER).encode()
        assert (inbox in general[1]) == (before == "idle worker")
