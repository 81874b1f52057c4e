"""A Redis Cluster master killed mid-drain, its replica promoted: the producer and the workers
carry on against the new master and every run is accounted for - begun once, ended once - and
listeners (redis-py's and redis.asyncio's) follow it, missing nothing.
(The master's writes are paused and WAITed for first, so that its replica has everything it
acknowledged: what is tested is the clients following the failover, as in the Sentinel
test; after it the new master has no replica, so SESSIONQ_WAIT_REPLICAS is not used.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from redis import Redis

from sessionq.common.clusterserver import RedisClusterServer
from sessionq.common.connection import connect
from sessionq.common.scripts.transport import relayout, server_of
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import Listeners, WorkerProcs, ended, subscribers, wait_for

pytestmark = pytest.mark.cluster
# workers that outlast the failover without being declared lost meanwhile
PATIENT = {"SESSIONQ_HEARTBEAT_INTERVAL_S": "0.5", "SESSIONQ_HEARTBEAT_TTL_S": "60"}


@pytest.fixture
def replicated() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=1) as cluster:
        yield cluster


def test_a_master_killed_mid_drain_loses_no_run(replicated: RedisClusterServer) -> None:
    settings = Settings.from_env(replicated.url, environ={}, user="tester")
    client = Client(settings=settings)
    probe = connect(settings)
    workers = WorkerProcs(settings, probe)
    try:
        before = client.create("before", task="tests.tasks:sleeper", args=[0.05], replicas=60)
        listeners = Listeners(settings, client, before)
        workers.start(2, env=PATIENT)
        wait_for(lambda: sum(ended(client, s) for s in before) >= 10,
                 what="the drain to be under way")  # fmt: skip
        home = server_of(probe, client.keys.session(before[0]))  # (a master with sessions)
        port = int(home.connection_pool.connection_kwargs["port"])
        # what the master acknowledged has reached its replica (WAIT) before it dies
        admin = Redis(port=port)
        admin.client_pause(60_000, all=False)
        assert admin.wait(1, 10_000) == 1
        replicated.node(port).kill()
        admin.close()
        wait_for(lambda: port not in replicated.master_ports(), timeout=30,
                 what="the replica to be promoted")  # fmt: skip
        after = client.create("after", task="tests.tasks:sleeper", args=[0.05], replicas=10)
        every = [*before, *after]
        wait_for(lambda: all(ended(client, s) for s in every), timeout=120,
                 what="every session to end on the new master")  # fmt: skip
        assert [r["status"] for r in client.info(every)] == ["Completed"] * len(every)
        for sid in every:
            types = Counter(e["type"] for e in client.events(sid) or [])
            assert types["task.started"] == 1, f"{sid}: its run began exactly once"
            assert types["task.succeeded"] == 1, f"{sid}: and ended once"
        # the listeners followed the failover to the new master and missed nothing
        listeners.assert_heard_all(client, before)
    finally:
        workers.stop_all()
        client.close()
        probe.close()


def replica_of(cluster: RedisClusterServer, port: int) -> int:
    """The port of the replica of the master on `port`."""
    for node in cluster.running():
        with Redis(port=node.port) as r:
            if r.info("replication").get("master_port") == port:
                return node.port
    raise AssertionError(f"no replica of {port}")


def test_a_graceful_failover_moves_the_sharded_subscriptions(
    replicated: RedisClusterServer,
) -> None:
    """CLUSTER FAILOVER TAKEOVER: the old master, now a replica, drops its sharded subscribers (an
    unasked SUNSUBSCRIBE) and refuses theirs (MOVED); the hubs move to the new master and
    the listeners, resynced from the history, miss nothing."""
    settings = Settings.from_env(replicated.url, environ={}, user="tester")
    client = Client(settings=settings)
    probe = connect(settings)
    workers = WorkerProcs(settings, probe)
    try:
        ids = client.create("moved", task="tests.tasks:noop", replicas=12)
        listeners = Listeners(settings, client, ids)
        channels = [client.keys.events_channel(sid) for sid in ids]
        wait_for(lambda: all(subscribers(probe, c) == 2 for c in channels),
                 what="both listeners to subscribe")  # fmt: skip
        port = int(server_of(probe, client.keys.session(ids[0])).connection_pool
                   .connection_kwargs["port"])  # fmt: skip
        with Redis(port=port) as master:  # (its replica has all it wrote, then takes over)
            assert master.wait(1, 10_000) == 1
        with Redis(port=replica_of(replicated, port)) as replica:
            # TAKEOVER: at once, even on a loaded machine (no handshake, no election)
            assert replica.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        wait_for(lambda: port not in replicated.master_ports(), timeout=30,
                 what="the replica to take over")  # fmt: skip
        relayout(probe)
        # the hubs subscribe on the new master (a replica would hear the shard's messages too,
        # but a listener belongs with the master: the hub follows the slot)
        wait_for(lambda: all(subscribers(probe, c) == 2 for c in channels),
                 what="both listeners to subscribe on the new master")  # fmt: skip
        workers.start(1)
        wait_for(lambda: all(ended(client, s) for s in ids), timeout=60,
                 what="every session to end")  # fmt: skip
        listeners.assert_heard_all(client, ids)
    finally:
        workers.stop_all()
        client.close()
        probe.close()
