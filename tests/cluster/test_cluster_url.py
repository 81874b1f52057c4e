"""`redis+cluster://` URLs (SPEC §9): parsed, giving redis-py's RedisCluster; the fast
script path, a worker's FastLane and the pub/sub hubs reach the master of a key's slot."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from sessionq.common.clusterserver import RedisClusterServer
from sessionq.common.connection import connect, connect_async, parse_cluster_url
from sessionq.common.errors import ConnectionFailed, ValidationError
from sessionq.common.redisserver import RedisServer, free_port
from sessionq.common.scripts import transport
from sessionq.common.settings import Settings
from sessionq.producer import aiohub, hub
from tests.conftest import ROOT, subscribers

ECHO = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"


def test_a_cluster_url_names_its_nodes_and_their_options() -> None:
    target = parse_cluster_url("redis+cluster://al:p%40ss@10.0.0.1:7001,node-b?socket_timeout=2")
    assert target is not None
    assert target.nodes == [("10.0.0.1", 7001), ("node-b", 6379)]
    assert target.options == {"username": "al", "password": "p@ss", "socket_timeout": 2.0}
    tls = parse_cluster_url("rediss+cluster://h:1/")
    assert tls is not None and tls.options == {"ssl": True}
    assert parse_cluster_url("redis://h:1/0") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [("redis+cluster://h:1/3", "one database"), ("redis+cluster://h:x", "port of node 'h:x'"),
     ("redis+cluster://:5", "host:port"),
     ("redis+cluster://h:1?socket_timeout=x", "socket_timeout")],
)  # fmt: skip
def test_a_bad_cluster_url_is_a_validation_error_naming_url(url: str, says: str) -> None:
    with pytest.raises(ValidationError, match="is not a Redis URL") as caught:
        connect(Settings.from_env(url, environ={}), check=False)
    assert caught.value.field == "url" and says in str(caught.value)


@pytest.mark.cluster
def test_a_cluster_url_gives_a_cluster_client_and_scripts_reach_every_slot(
    redis_cluster: RedisClusterServer,
) -> None:
    redis = connect(Settings.from_env(redis_cluster.url, environ={}))
    try:
        assert isinstance(redis, RedisCluster)
        script = redis.register_script(ECHO)
        keys = [f"{{t{i}}}:k" for i in range(24)]
        owners = {transport.server_of(redis, key).connection_pool.connection_kwargs["port"]
                  for key in keys}  # fmt: skip
        assert owners == set(redis_cluster.master_ports())
        for key in keys:  # NOSCRIPT on each master first, then the fast path
            assert transport.call(script, [key], [key], redis) == key.encode()
            assert transport.call(script, [key], ["again"], redis) == b"again"
    finally:
        redis.close()


@pytest.mark.cluster
def test_a_fast_lane_sends_to_the_master_of_its_slot(redis_cluster: RedisClusterServer) -> None:
    redis = connect(Settings.from_env(redis_cluster.url, environ={}))
    try:
        script = redis.register_script(f"return {{(function() {ECHO} end)()}}")
        redis.script_load(script.script)  # (to every master)
        for i in range(6):
            key = f"{{lane{i}}}:k"
            lane = transport.FastLane(redis, script, [key])
            lane.send(0, b"", [b"v%d" % i], i)
            assert lane.receive() == ([b"v%d" % i], i)
            master = transport.server_of(redis, key).connection_pool.connection_kwargs["port"]
            assert lane.conn.port == master
            lane.close()
    finally:
        redis.close()


@pytest.mark.cluster
def test_the_hubs_subscribe_on_the_master_of_the_channels_slot(
    redis_cluster: RedisClusterServer,
) -> None:
    redis = connect(Settings.from_env(redis_cluster.url, environ={}))
    channel = "{chan7}:events"
    try:
        sub = hub.subscribe(redis, [channel])
        try:
            assert subscribers(redis, channel) == 1
        finally:
            sub.close()
    finally:
        redis.close()

    plain = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}"

    async def listen() -> object:
        client = connect_async(Settings.from_env(redis_cluster.url, environ={}))
        assert isinstance(client, AsyncRedisCluster)
        try:
            asub = await aiohub.subscribe(client, [channel])
            try:
                sync = RedisCluster.from_url(plain)
                try:
                    return subscribers(sync, channel)
                finally:
                    sync.close()
            finally:
                await asub.close()
        finally:
            await client.aclose()

    assert asyncio.run(listen()) == 1


def cli(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sessionq", "--url", url, *argv], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_cluster_url_no_node_answers_is_connection_failed_in_one_line() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed, match="Redis Cluster cannot be connected"):
        connect(Settings.from_env(url, environ={}))
    proc = cli(url, "stats")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sessionq: error: cannot reach Redis at redis+cluster://")


def test_a_cluster_url_to_a_plain_redis_says_to_use_redis_url() -> None:
    plain = RedisServer().start()
    try:
        url = f"redis+cluster://127.0.0.1:{plain.port}"
        with pytest.raises(ValidationError, match="not in cluster mode: use redis://"):
            connect(Settings.from_env(url, environ={}))
        proc = cli(url, "stats")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "--url: " in proc.stderr and "not in cluster mode" in proc.stderr
    finally:
        plain.stop()


def test_a_plain_url_to_a_cluster_node_says_to_use_a_cluster_url(
    redis_cluster: RedisClusterServer,
) -> None:
    """Every command through a plain URL to a node of a cluster that touches another node's
    slot (or several slots) is refused naming --url (a command that happens to touch this
    node's slots only works: a read of an index, a session of this node's)."""
    said = 0
    for node in redis_cluster.nodes:
        url = f"redis://127.0.0.1:{node.port}/0"
        for argv in (["stats"], ["create", "x", "--cmd", "true"]):
            proc = cli(url, *argv)
            assert "Traceback" not in proc.stderr, proc.stderr
            if proc.returncode != 0:
                assert proc.returncode == 2, proc.stderr
                assert "--url names a node of a Redis Cluster" in proc.stderr
                said += 1
    assert said >= len(redis_cluster.nodes)
