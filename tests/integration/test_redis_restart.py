"""A Redis restart in the middle of a busy session (AOF on): nothing accepted is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.errors import ConnectionFailed
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client
from sessionq.worker.loop import SessionWorker
from tests.conftest import FAST, WorkerProcs, ended, wait_for

RUNS = 30


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Not the session's server: one with AOF on (appendfsync everysec) and its own dir."""
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(appendonly=True, data_dir=str(data)).start()
    yield server
    server.stop()


@pytest.mark.timeout(180)
def test_redis_restart_mid_session_loses_nothing(aof_server: RedisServer) -> None:
    # a short retry budget: the create made while Redis is down gives up within the test
    settings = Settings.from_env(
        aof_server.url, environ={}, user="tester", retry_budget_s=5.0, **FAST
    )
    client = Client(settings=settings)
    watcher = Redis.from_url(aof_server.url)
    workers = WorkerProcs(settings, watcher)
    try:
        workers.start(2)
        ids = client.create("busy", task="tests.tasks:sleeper", args=[0.1], replicas=RUNS)
        seen: list[dict[str, Any]] = []
        listener = threading.Thread(
            target=lambda: seen.extend(client.listen(ids, after=0, timeout=120)), daemon=True
        )
        listener.start()
        wait_for(lambda: sum(r["status"] == "Completed" for r in client.info(ids)) >= 3,
                 what="the session to be under way")  # fmt: skip

        aof_server.shutdown()  # SIGTERM: Redis writes its AOF out and exits
        # down for longer than the client's retries: a clear error naming the URL
        with pytest.raises(ConnectionFailed, match=aof_server.url.replace("/", ".")):
            client.create("refused", task="tests.tasks:add", args=[1, 2])
        aof_server.start()  # same port, same data dir

        wait_for(lambda: all(ended(client, s) for s in ids), timeout=90,
                 what="every session to end after the restart")  # fmt: skip
        records = client.info(ids)
        assert len(records) == RUNS, "every accepted session is still there"
        assert [r["status"] for r in records] == ["Completed"] * RUNS
        for sid in ids:
            starts = [e for e in client.events(sid) or [] if e["type"] == "task.started"]
            assert len(starts) == 1, f"{sid}: its run ran exactly once"
        assert not client.fetch(view="all", status="Failed")

        listener.join(timeout=60)
        assert not listener.is_alive(), "the listener ended with the sessions"
        for sid in ids:
            got = [e["seq"] for e in seen if e["session"] == sid]
            kept = [e["seq"] for e in client.events(sid) or []]
            assert got == kept == list(range(1, len(kept) + 1)), f"{sid}: every event once"
        assert workers.live() == 2, "the worker processes carried on"
    finally:
        workers.stop_all()
        client.close()
        watcher.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_listener_catches_up_after_a_quick_restart(aof_server: RedisServer, flavour: str) -> None:
    """Redis back within the client's retries: redis-py reconnects and resubscribes by
    itself, so the listener hears of no error; what was published before it resubscribed
    (here: the session's last events, with nothing after them) must still reach it."""
    settings = Settings.from_env(aof_server.url, environ={}, user="tester", **FAST)
    client = Client(settings=settings)
    try:
        [sid] = client.create("quiet", task="tests.tasks:add", args=[1, 2])
        seen: list[dict[str, Any]] = []

        def listen() -> None:
            if flavour == "sync":
                seen.extend(client.listen(sid, after=0, timeout=20))
                return

            async def follow() -> None:
                async with AsyncClient(settings=settings) as aclient:
                    async for event in aclient.listen(sid, after=0, timeout=20):
                        seen.append(event)

            asyncio.run(follow())

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        wait_for(lambda: len(seen) == 2, what="the listener to be live")
        worker = SessionWorker(settings)  # in this process: it runs the moment Redis is back
        aof_server.shutdown()
        # the fault itself: hold Redis down until the listener's reconnects are backing off
        time.sleep(2.0)
        aof_server.start()
        worker.work(burst=True)
        listener.join(timeout=30)
        assert [e["seq"] for e in seen] == [e["seq"] for e in client.events(sid) or []]
        assert seen[-1]["type"] == "session.completed"
    finally:
        client.close()
