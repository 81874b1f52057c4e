"""A namespace spread over a Redis Cluster (SPEC §9, SESSIONQ_TEST_TARGET=cluster): with the
default settings its sessions land on every master, and workers drain them all."""

from __future__ import annotations

from collections import Counter

from redis import Redis

from sessionq.common.keys import Layout
from sessionq.common.scripts.transport import server_of
from sessionq.common.settings import CLUSTER_PARTITIONS, Settings
from sessionq.producer import Client
from tests.conftest import WorkerProcs, wait_for


def test_sessions_land_on_every_master_and_workers_drain_them_all(
    settings: Settings, client: Client, workers: WorkerProcs, redis: Redis
) -> None:
    assert Layout.of(settings).count == CLUSTER_PARTITIONS > 1
    ids = client.create("spread", task="tests.tasks:noop", replicas=60)
    masters = Counter(server_of(redis, client.keys.session(sid)).connection_pool
                      .connection_kwargs["port"] for sid in ids)  # fmt: skip
    assert len(masters) == len(redis.get_primaries()), masters  # type: ignore[attr-defined]  # a RedisCluster here
    s = client.session("one")
    s.map("tests.tasks:echo", range(30))
    workers.start(2)
    wait_for(lambda: all(r["status"] == "Completed" for r in client.info([*ids, s.id])),
             timeout=60, what="every session to complete")  # fmt: skip
    assert client.stats()["tasks"]["succeeded"] == 90
