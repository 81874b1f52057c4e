"""Sentinel (SPEC §9): a master, a replica and three sentinels as redis-server processes;
every process takes the `redis+sentinel://` URL, and a failover costs nothing acknowledged
when the replica is in sync."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from redis import Redis

from sessionq.common.connection import connect, sync_reply
from sessionq.common.redisserver import RedisServer, SentinelServer
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client
from sessionq.producer.cli import cli
from sessionq.producer.dashboard import build_server
from tests.conftest import FAST, Listeners, WorkerProcs, ended, wait_for

SERVICE = "sq-master"
# a failover with the test's sentinels takes a few seconds: heartbeats must outlast it, or
# the workers' reapers would take each other for lost (not what these tests are about)
PATIENT_WORKERS = {"SESSIONQ_HEARTBEAT_INTERVAL_S": "0.5", "SESSIONQ_HEARTBEAT_TTL_S": "60"}


@dataclass
class Group:
    master: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(s.address for s in self.sentinels)}/{SERVICE}/0"


def _in_sync(master: RedisServer) -> bool:
    admin = Redis(port=master.port, decode_responses=True)
    try:
        info = sync_reply(admin.info("replication"))
        return bool(info.get("connected_slaves") and info["slave0"]["state"] == "online")
    finally:
        admin.close()


def _sees_everyone(sentinel: SentinelServer) -> bool:
    """The sentinel knows the replica and the two other sentinels: a failover can happen."""
    admin = Redis(port=sentinel.port, decode_responses=True)
    try:
        state: Any = admin.sentinel_master(SERVICE)
        return bool(state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2)
    finally:
        admin.close()


@pytest.fixture
def group() -> Iterator[Group]:
    servers: list[RedisServer] = []
    try:
        master = RedisServer().start()
        servers.append(master)
        replica = RedisServer(replica_of=master).start()
        servers.append(replica)
        sentinels = []
        for _ in range(3):
            sentinel = SentinelServer(
                master, service=SERVICE, quorum=2, down_after_ms=1000, failover_timeout_ms=4000
            ).start()
            servers.append(sentinel)
            sentinels.append(sentinel)
        wait_for(lambda: _in_sync(master), what="the replica to be in sync")
        wait_for(lambda: all(_sees_everyone(s) for s in sentinels), timeout=30,
                 what="every sentinel to know the replica and the other sentinels")  # fmt: skip
        yield Group(master, replica, sentinels)
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.mark.timeout(120)
def test_cli_client_async_client_listener_and_worker_through_the_sentinel_url(
    group: Group,
) -> None:
    settings = Settings.from_env(group.url, environ={}, user="tester", **FAST)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--url", group.url, "--user", "tester", *args])
        return result.exit_code, result.stdout

    code, out = run("create", "hello", "--task", "tests.tasks:add", "--args", "2 3",
                    "--replicas", "2")  # fmt: skip
    assert code == 0, out
    ids = out.split()
    assert len(ids) == 2
    code, out = run("info", ids[0], "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "Pending"

    client = Client(settings=settings)
    seen: list[dict[str, Any]] = []
    listener = threading.Thread(
        target=lambda: seen.extend(client.listen(ids, after=0, timeout=60)), daemon=True
    )
    listener.start()

    async def create_async() -> list[str]:
        async with AsyncClient(settings=settings) as aio:
            made = await aio.create("async", task="tests.tasks:add", args=[1, 2])
            return list(made)

    async_ids = asyncio.run(create_async())

    probe = connect(settings)
    workers = WorkerProcs(settings, probe)
    try:
        workers.start(1)  # it registers through the URL: the master holds its heartbeat
        wait_for(lambda: all(ended(client, s) for s in [*ids, *async_ids]),
                 what="the sessions to end")  # fmt: skip
        assert [r["status"] for r in client.info([*ids, *async_ids])] == ["Completed"] * 3
        listener.join(timeout=30)
        assert not listener.is_alive(), "the listener ended with its sessions"
        history = [e["seq"] for s in ids for e in client.events(s) or []]
        assert sorted(e["seq"] for e in seen) == sorted(history)
        code, out = run("info", ids[1], "--json")
        assert code == 0 and json.loads(out)[0]["status"] == "Completed"

        async def listen_async() -> list[str]:
            async with AsyncClient(settings=settings) as aio:
                return [e["type"] async for e in aio.listen(async_ids, after=0, timeout=30)]

        assert asyncio.run(listen_async())[-1] == "session.completed"

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        dashboard = build_server(settings, sock=sock)
        serving = threading.Thread(target=dashboard.run, kwargs={"sockets": [sock]}, daemon=True)
        serving.start()
        wait_for(lambda: dashboard.started or not serving.is_alive(), what="the dashboard")
        host, port = sock.getsockname()[:2]
        try:
            page = httpx.get(f"http://{host}:{port}/sessions?status=Completed", timeout=30)
            assert page.status_code == 200 and ids[0] in page.text
        finally:
            dashboard.stop()
            serving.join(timeout=30)
    finally:
        workers.stop_all()
        client.close()
        probe.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["sigkill", "sentinel-failover"])
def test_a_failover_costs_nothing_acknowledged_with_the_replica_in_sync(
    group: Group, how: str
) -> None:
    """Producer, workers and a listener carry on against the new master, whether the old one
    died (SIGKILL) or was demoted to a replica (SENTINEL FAILOVER: its clients are
    disconnected, a write it is sent answers READONLY)."""
    settings = Settings.from_env(group.url, environ={}, user="tester")
    client = Client(settings=settings)
    probe = connect(settings)
    workers = WorkerProcs(settings, probe)
    try:
        before = client.create("before", task="tests.tasks:sleeper", args=[0.05], replicas=80)
        listeners = Listeners(settings, client, before)
        workers.start(2, env=PATIENT_WORKERS)
        wait_for(lambda: sum(ended(client, s) for s in before) >= 10,
                 what="the drain to be under way")  # fmt: skip

        # The fault: the master dies or is demoted with its replica in sync. Writes are paused
        # first, so that what it acknowledged has all reached the replica (WAIT); what the
        # clients send meanwhile is not run, and they send it again to the new master.
        admin = Redis(port=group.master.port)
        admin.client_pause(60_000, all=False)  # CLIENT PAUSE ... WRITE
        assert admin.wait(1, 10_000) == 1
        if how == "sigkill":
            group.master.kill()
        else:
            sentinel = Redis(port=group.sentinels[0].port)
            sentinel.sentinel_failover(SERVICE)
            sentinel.close()
            wait_for(lambda: group.sentinels[0].master_port() == group.replica.port,
                     what="the replica to be promoted")  # fmt: skip
            # demote the old master as Sentinel does (its own commands wait behind the pause):
            # REPLICAOF, then its clients are disconnected, what they sent unrun; a client a
            # sentinel not yet told sends back there hears READONLY
            admin.replicaof("127.0.0.1", str(group.replica.port))
            for kind in ("normal", "pubsub"):
                admin.client_kill_filter(_type=kind, skipme=True)
            admin.client_unpause()
        admin.close()

        # the producer carries on: this call waits for the new master
        after = client.create("after", task="tests.tasks:sleeper", args=[0.05], replicas=20)
        assert group.sentinels[0].master_port() == group.replica.port
        every = [*before, *after]
        wait_for(lambda: all(ended(client, s) for s in every), timeout=120,
                 what="every session to end on the new master")  # fmt: skip
        records = client.info(every)
        assert [r["status"] for r in records] == ["Completed"] * len(every)
        for sid in every:
            types = Counter(e["type"] for e in client.events(sid) or [])
            assert types["task.started"] == 1, f"{sid}: its run began exactly once"
            assert types["task.succeeded"] == 1, f"{sid}: and ended once"

        listeners.assert_heard_all(client, before)
    finally:
        workers.stop_all()
        client.close()
        probe.close()
