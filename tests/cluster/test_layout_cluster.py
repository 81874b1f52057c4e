"""The partitioned layout on a real Redis Cluster: a script of one partition writes the keys
its Lua builders make (all in the call's slot), and the partitions spread over every
master."""

from __future__ import annotations

from collections import Counter

import pytest

from sessionq.common.clusterserver import RedisClusterServer
from sessionq.common.connection import connect
from sessionq.common.keys import Layout, run_id
from sessionq.common.rqcompat import rq_keys
from sessionq.common.scripts import transport
from sessionq.common.scripts.base import key_builders
from sessionq.common.scripts.contract import Contract
from sessionq.common.settings import Settings

pytestmark = pytest.mark.cluster

WRITE = Contract(name="write", keys=("first",), args=(), builders=(
    "session", "job", "wake", "worker_runs", "session_queue"))  # fmt: skip


def test_a_partitions_script_writes_its_built_keys_and_partitions_cover_every_master(
    redis_cluster: RedisClusterServer,
) -> None:
    settings = Settings.from_env(redis_cluster.url, environ={"SESSIONQ_PARTITIONS": "64"})
    layout = Layout.of(settings)
    redis = connect(settings)
    try:
        body = ("redis.call('SET', K.first, 1) redis.call('SET', key_session(ARGV[1]), 1) "
                "redis.call('SET', key_job(ARGV[2]), 1) redis.call('SET', key_wake('q'), 1) "
                "redis.call('SET', key_worker_runs('w'), 1) "
                "return redis.call('SET', key_session_queue(ARGV[1], 'q'), 1)")  # fmt: skip
        script = redis.register_script(WRITE.prologue(key_builders(layout, rq_keys("sq:"))) + body)
        masters: Counter[int] = Counter()
        for partition in range(layout.count):
            sid = layout.new_session_id(partition)
            keys = layout.part(partition)
            transport.call(script, [keys.session(sid) + ":x"], [sid, run_id(sid, 1)], redis)
            assert redis.exists(keys.session(sid), keys.wake("q"), keys.worker_runs("w"),
                                keys.session_queue(sid, "q")) == 4  # fmt: skip
            port = transport.server_of(redis, keys.session(sid)).connection_pool
            masters[port.connection_kwargs["port"]] += 1
        assert set(masters) == set(redis_cluster.master_ports())
        assert max(masters.values()) - min(masters.values()) <= 1
    finally:
        redis.flushall()
        redis.close()
