"""The test suite's Redis Cluster: three masters sharing every slot, a replica taking over
a killed master."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from sessionq.common.clusterserver import RedisClusterServer
from tests.conftest import wait_for

pytestmark = pytest.mark.cluster


def test_three_masters_share_the_slots_and_keys_spread_over_them(
    redis_cluster: RedisClusterServer,
) -> None:
    assert len(redis_cluster.master_ports()) == 3
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        owners = {client.get_node_from_key(f"{{tag{i}}}").port for i in range(30)}
        assert owners == set(redis_cluster.master_ports())
    finally:
        client.close()


def test_a_killed_master_is_replaced_by_its_replica() -> None:
    with RedisClusterServer(masters=3, replicas=1) as cluster:
        before = cluster.master_ports()
        cluster.node(before[0]).kill()
        wait_for(lambda: before[0] not in cluster.master_ports(), what="a promoted replica")
        cluster.wait_ready()
        after = cluster.master_ports()
        assert len(after) == 3 and before[0] not in after
