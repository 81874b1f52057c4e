"""Fixtures: a real Redis the suite starts itself (or SESSIONQ_TEST_URL), clients, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from sessionq.common.clusterserver import RedisClusterServer
from sessionq.common.keys import Keys, Layout, RoutedKeys
from sessionq.common.redisserver import RedisServer
from sessionq.common.scripts.transport import server_of
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client

ROOT = Path(__file__).resolve().parent.parent
FAST = {  # short heartbeats so that loss is noticed within a test's patience
    "heartbeat_interval_s": 0.2,
    "heartbeat_ttl_s": 1.5,
    "reap_interval_s": 0.3,
    "stop_grace_s": 1.0,
    "scheduler_interval_s": 0.1,
}
ENV_KNOBS = {
    "SESSIONQ_HEARTBEAT_INTERVAL_S": "0.2",
    "SESSIONQ_HEARTBEAT_TTL_S": "1.5",
    "SESSIONQ_REAP_INTERVAL_S": "0.3",
    "SESSIONQ_STOP_GRACE_S": "1.0",
    "SESSIONQ_SCHEDULER_INTERVAL_S": "0.1",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it is truthy; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# SESSIONQ_TEST_TARGET=cluster: the suite against a 3-master Redis Cluster (redis+cluster://;
# its namespace in settings.CLUSTER_PARTITIONS partitions, on every master) - its second target;
# SESSIONQ_TEST_TARGET=partitions: against one Redis, the namespace in PARTITIONS partitions
# (SESSIONQ_PARTITIONS, keys.Layout) - its third
TARGET = os.environ.get("SESSIONQ_TEST_TARGET", "redis")
ON_CLUSTER = TARGET == "cluster"
PARTITIONS = 4 if TARGET == "partitions" else 0
if PARTITIONS:  # (for the workers started, and the CLI's settings from the environment)
    ENV_KNOBS["SESSIONQ_PARTITIONS"] = os.environ["SESSIONQ_PARTITIONS"] = str(PARTITIONS)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("SESSIONQ_TEST_URL")
    if url:
        yield url
        return
    server: RedisServer | RedisClusterServer = RedisClusterServer() if ON_CLUSTER else RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A 3-master Redis Cluster on loopback, started the first time a test asks for it (the
    `cluster` marker names such tests) and ended with the session."""
    cluster = RedisClusterServer(masters=3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def plain_client(url: str) -> Redis:
    """A redis-py client of `url` (for a cluster URL a RedisCluster, typed as a Redis)."""
    if ON_CLUSTER and url.startswith("redis+cluster://"):
        first = url.removeprefix("redis+cluster://").split(",")[0]
        return cast("Redis", RedisCluster.from_url(f"redis://{first}"))
    return Redis.from_url(url)


def home(redis: Redis, key: str) -> Redis:
    """The client of the one server holding `key` (on a cluster: its slot's master), for what
    asks one server (CLIENT LIST, PUBSUB NUMSUB, its connection class)."""
    return server_of(redis, key)


def subscribers(redis: Redis, channel: str) -> int:
    """How many listen on one of our channels: on a cluster (`redis` a RedisCluster) sharded
    (SSUBSCRIBE), so counted by PUBSUB SHARDNUMSUB on the master of its slot; else PUBSUB
    NUMSUB."""
    if isinstance(redis, RedisCluster):
        reply = home(redis, channel).execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(reply[1])
    return int(dict(redis.pubsub_numsub(channel)).get(channel.encode(), 0))


def home_url(redis: Redis, key: str) -> str:
    """A redis:// URL of home(redis, key), for tools that take one server (rq info)."""
    options = home(redis, key).connection_pool.connection_kwargs
    return f"redis://{options['host']}:{options['port']}/0"


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = plain_client(redis_url)
    if isinstance(client, RedisCluster):
        client.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, redis: Redis) -> Settings:
    return Settings.from_env(redis_url, environ={}, user="tester", partitions=PARTITIONS, **FAST)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    layout = Layout.of(settings)
    return RoutedKeys(layout) if layout.partitioned else Keys(settings.prefix)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = Client(settings=settings)
    yield c
    c.close()


class WorkerProcs:
    """`sessionq worker` commands started as real processes."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, concurrency: int = 1, *, allow_commands: bool = False, extra: list[str] | None = None,
        wait: bool = True, env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        before = self.live()
        cmd = [sys.executable, "-m", "sessionq", "--url", self.settings.url, "--prefix",
               self.settings.prefix, "--user", self.settings.user, "worker", "--import",
               "tests.tasks", "--concurrency", str(concurrency)]  # fmt: skip
        if allow_commands:
            cmd.append("--allow-commands")
        cmd += extra or []
        environ = {**os.environ, **ENV_KNOBS, **(env or {}), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, start_new_session=True)
        self.procs.append(proc)
        if wait:
            wait_for(lambda: self.live() >= before + concurrency, what=f"{concurrency} worker(s)")
        return proc

    def live(self) -> int:
        return int(self.redis.zcard(Layout.of(self.settings).glob.workers()))

    def names(self) -> list[str]:
        workers = Layout.of(self.settings).glob.workers()
        return [n.decode() for n in self.redis.zrange(workers, 0, -1)]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(settings: Settings, redis: Redis) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(settings, redis)
    yield procs
    procs.stop_all()


def ended(client: Client, sid: str) -> bool:
    records = client.info(sid)
    return bool(records) and records[0]["status"] in ("Completed", "Failed", "Stopped")


class Listeners:
    """A redis-py and a redis.asyncio listener of `ids` from their first event, each in a
    thread of its own (for failover tests: both must follow the new master)."""

    def __init__(self, settings: Settings, client: Client, ids: list[str]) -> None:
        self.heard: list[dict[str, Any]] = []
        self.heard_async: list[dict[str, Any]] = []

        async def listen_async() -> None:
            async with AsyncClient(settings=settings) as aio:
                async for event in aio.listen(ids, after=0, timeout=150):
                    self.heard_async.append(event)

        self.threads = [
            threading.Thread(target=lambda: self.heard.extend(
                client.listen(ids, after=0, timeout=150)), daemon=True),
            threading.Thread(target=lambda: asyncio.run(listen_async()), daemon=True),
        ]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def assert_heard_all(self, client: Client, ids: list[str]) -> None:
        """Both ended and heard exactly the history of `ids`."""
        history = sorted((e["session"], e["seq"]) for s in ids for e in client.events(s) or [])
        for thread, heard in zip(self.threads, (self.heard, self.heard_async), strict=True):
            thread.join(timeout=60)
            assert not thread.is_alive(), "the listener followed the failover to the end"
            assert sorted((e["session"], e["seq"]) for e in heard) == history
