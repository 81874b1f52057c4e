"""A frozen Redis (SIGSTOP for longer than the heartbeat TTL) makes no live worker look lost:
heartbeats are stamped and judged with Redis's clock, and a reaper whose own heartbeats were
held up too reaps nobody (heartbeat.lua, reap.lua). Faults caused for real on a redis-server
this test starts, with real worker processes."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from redis import Redis

from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import FAST, WorkerProcs, ended, wait_for

PAUSES = 3


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """Its own server: it is frozen, which the session's shared one must never be."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGCONT)  # never leave it frozen
        server.stop()


def freeze(server: RedisServer, seconds: float) -> None:
    """The fault itself: Redis stopped for `seconds` (a duration, not a wait for something)."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        threading.Event().wait(seconds)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_frozen_redis_makes_no_live_worker_look_lost(server: RedisServer) -> None:
    settings = Settings.from_env(server.url, environ={}, user="tester", **FAST)
    admin = Redis.from_url(server.url)
    client = Client(settings=settings)
    procs = WorkerProcs(settings, admin)
    try:
        procs.start(2)
        procs.start(2)  # two hosts' worth, each process a reaper every 0.3 s
        names = set(procs.names())
        ids = client.create("frozen", task="tests.tasks:sleeper", args=[0.3], replicas=40)
        for _ in range(PAUSES):
            wait_for(lambda: any(r["status"] == "Running" for r in client.info(ids)),
                     what="runs in flight")  # fmt: skip
            freeze(server, 3 * settings.heartbeat_ttl_s)
        wait_for(lambda: all(ended(client, sid) for sid in ids), timeout=120,
                 what="every run to end")  # fmt: skip
        records = client.info(ids)
        assert [r["status"] for r in records] == ["Completed"] * len(ids)
        events = [e for sid in ids for e in client.events(sid) or []]
        starts = Counter(e["task"] for e in events if e["type"] == "task.started")
        assert set(starts.values()) == {1}, "no run started twice"
        assert not [e for e in events if e["type"] in ("task.retrying", "task.queued")
                    and "lost" in str(e["data"])], "no worker recovered"  # fmt: skip
        assert set(procs.names()) == names, "every worker still registered"
    finally:
        procs.stop_all()
        client.close()
        admin.close()
