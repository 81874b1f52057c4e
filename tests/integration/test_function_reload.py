"""The function library lost (FUNCTION FLUSH, a restart without persistence) on a server that
will not load it again - an ACL allowing FCALL but not FUNCTION LOAD, a Redis over maxmemory
(FUNCTION LOAD is refused when full, SCRIPT LOAD is not): every call goes by EVALSHA instead,
at each place that loads the library again (a call, an asyncio call, a worker's lane, a
pipeline's load). And a refusal that means "not now" (READONLY) at first use is raised, not
taken as "no functions for this process"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import Script
from redis.exceptions import ReadOnlyError

import tests.tasks  # noqa: F401 - registers the tasks the in-process workers run
from sessionq.common.connection import sync_reply
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.scripts import Scripts, transport
from sessionq.common.scripts.contracts import HEARTBEAT
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client
from sessionq.worker.loop import SessionWorker
from tests.conftest import FAST, wait_for
from tests.integration.test_script_flags import fill_up

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """Its own server: its users and its maxmemory must not outlive the test."""
    server = RedisServer(extra=["--maxmemory-policy", "noeviction"]).start()
    try:
        yield server
    finally:
        server.stop()


def settings_of(server: RedisServer, user: str | None = None) -> Settings:
    url = server.url if user is None else f"redis://{user}:pw@127.0.0.1:{server.port}/0"
    return Settings.from_env(url, environ={}, user="tester", retry_budget_s=0.5, **FAST)


def statuses(client: Client, ids: list[str]) -> list[str]:
    return [r["status"] for r in client.info(ids)]


def test_a_user_who_may_not_load_the_library_goes_by_evalsha_once_it_is_gone(
    server: RedisServer,
) -> None:
    admin = Redis(port=server.port)
    no_load = ("-function|load", "-function|flush")
    admin.execute_command("ACL", "SETUSER", "t1", "on", ">pw", "~*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "t2", "on", ">pw", "~*", "&*", "+@all", *no_load)
    t1, t2 = settings_of(server, "t1"), settings_of(server, "t2")
    with Client(settings=settings_of(server)) as other:  # the library, loaded by another user
        other.create("theirs", task="tests.tasks:noop")
    client, late = Client(settings=t1), Client(settings=t2)
    worker = SessionWorker(t1)
    flushed: list[bool] = []

    async def run() -> list[str]:
        async with AsyncClient(settings=t1) as aio:
            first = await aio.create("aio-before", task="tests.tasks:add", args=[1, 1])
            while not flushed:
                await asyncio.sleep(0.01)
            return first + await aio.create("aio-after", task="tests.tasks:add", args=[2, 2])

    try:
        ids = client.create("before", task="tests.tasks:add", args=[1, 2])
        ids += late.create("late", task="tests.tasks:add", args=[1, 2])
        worker.work(burst=True)  # its lane calls the library
        assert isinstance(client.scripts.script("enqueue"), transport.Function)
        loop = asyncio.new_event_loop()
        pending = loop.create_task(run())
        loop.run_until_complete(asyncio.sleep(0.5))  # (its first create done)
        # t1 may no longer load the library, and it is gone
        admin.execute_command("ACL", "SETUSER", "t1", *no_load)
        admin.function_flush()
        admin.script_flush()
        flushed.append(True)
        ids += loop.run_until_complete(pending)  # the asyncio call
        loop.close()
        ids += client.create("after", task="tests.tasks:add", args=[3, 4])  # a call
        ids += late.create("late-after", task="tests.tasks:add", args=[3, 4])
        client.scripts.ensure_loaded()  # a pipeline's load
        pipe = client.redis.pipeline(transaction=False)
        client.scripts.heartbeat("a-worker", client=pipe)
        pipe.execute()
        assert isinstance(client.scripts.script("heartbeat"), Script)
        worker.work(burst=True)  # the lane meets "Function not found", may not load it
        assert statuses(client, ids) == ["Completed"] * len(ids)
        assert not sync_reply(admin.function_list())
    finally:
        client.close()
        late.close()
        admin.close()


def test_a_full_redis_that_lost_the_library_runs_what_must_run_when_full(
    server: RedisServer,
) -> None:
    settings = settings_of(server)
    client, redis = Client(settings=settings), Redis.from_url(server.url)
    gone: list[bool] = []

    async def heartbeat(worker: str) -> Any:
        """heartbeat.lua by redis.asyncio (the asyncio client calls no script that runs when
        full: this is what it would do)."""
        aio = AsyncRedis.from_url(server.url)
        scripts = Scripts(redis, settings)
        await scripts.ensure_version_async(aio)  # (it has the library)
        g = scripts.gkeys
        keys = HEARTBEAT.pack_keys({"workers": g.workers(), "rq_worker": scripts.grq.worker(worker),
                                    "steady": g.worker_steady(worker)})  # fmt: skip
        args = HEARTBEAT.pack_args({"worker": worker, "now_iso": "x", "late_ms": 1,
                                    "keep_ms": 1, "expire_s": 60, "vouch": 0, "ncounts": 0},
                                   {"count": []})  # fmt: skip
        while not gone:
            await asyncio.sleep(0.01)
        try:
            return await scripts.call_async(aio, "heartbeat", keys, args)
        finally:
            await aio.aclose()

    try:
        ended = client.create("ended", task="tests.tasks:add", args=[1, 2], replicas=3)
        SessionWorker(settings).work(burst=True)
        scripts = client.scripts
        assert isinstance(scripts.script("heartbeat"), transport.Function)
        loop = asyncio.new_event_loop()
        pending = loop.create_task(heartbeat("in-the-loop"))
        loop.run_until_complete(asyncio.sleep(0.5))
        redis.function_flush()
        redis.script_flush()
        fill_up(redis)
        gone.append(True)

        scripts.heartbeat("a-worker")  # a call
        assert redis.zscore(Keys(settings.prefix).workers(), "a-worker")
        loop.run_until_complete(pending)  # by redis.asyncio
        assert redis.zscore(Keys(settings.prefix).workers(), "in-the-loop")
        loop.close()
        scripts.ensure_loaded()  # a pipeline's load
        pipe = redis.pipeline(transaction=False)
        scripts.heartbeat("another", client=pipe)
        pipe.execute()
        assert redis.zscore(Keys(settings.prefix).workers(), "another")
        assert sorted(client.prune()) == sorted(ended)  # destroy.lua
        redis.config_set("maxmemory", 0)
        wait_for(lambda: not client.info(ended), what="the sessions removed")
    finally:
        client.close()
        redis.close()


def test_a_replica_at_first_use_is_raised_not_taken_for_no_functions(
    server: RedisServer,
) -> None:
    """READONLY (here, a replica; a demoted master alike) says "not now": the caller's retry
    sends it again where writes go - not "EVALSHA for the rest of the process"."""
    replica = RedisServer().start()
    redis = Redis(port=replica.port)
    try:
        redis.replicaof("127.0.0.1", server.port)
        with pytest.raises(ReadOnlyError):
            Scripts(redis, settings_of(replica)).script("run")
    finally:
        redis.close()
        replica.stop()


def test_a_new_client_finds_the_library_there_and_replaces_nothing(server: RedisServer) -> None:
    """FUNCTION LOAD without REPLACE: the library's name is a hash of its source, so
    "already exists" is the very library - not compiled again (Redis blocked ~3 ms a master,
    and the Lua VM's garbage grew, at every new process)."""
    settings, redis = settings_of(server), Redis(port=server.port)
    try:
        with Client(settings=settings) as first:
            first.create("first", task="tests.tasks:noop")
        redis.config_resetstat()
        for _ in range(2):
            with Client(settings=settings) as client:
                client.create("again", task="tests.tasks:noop")
        loads = sync_reply(redis.info("commandstats"))["cmdstat_function|load"]
        assert loads["calls"] == loads["failed_calls"] == 2, "each found it there"
        assert len(sync_reply(redis.function_list())) == 1
    finally:
        redis.close()
