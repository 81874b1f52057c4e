"""A private Redis Cluster on free loopback ports (SPEC §9): masters, optionally a replica
each, joined by `redis-cli --cluster create`; for the test suite and the benchmarks."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from sessionq.common.errors import ConfigError
from sessionq.common.redisserver import RedisServer, find_redis_server

CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + this
READY_TIMEOUT_S = 30.0
NODE_TIMEOUT_MS = 1000  # a master silent this long is failed over to its replica
_PORT_RANGE = (20000, 50000)  # port and port + CLUSTER_BUS_OFFSET both below 65536


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A loopback port free with its cluster bus port (port + 10000) free too."""
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        pair = {port, port + CLUSTER_BUS_OFFSET}
        if not pair & taken and _free(port) and _free(port + CLUSTER_BUS_OFFSET):
            return port
    raise ConfigError("no free pair of loopback ports for a cluster node")


def find_redis_cli() -> str:
    """The redis-cli beside the redis-server in use (it creates the cluster)."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    if found is None:
        raise ConfigError("no redis-cli found: it is needed to create a Redis Cluster")
    return found


class RedisClusterServer:
    """`masters` cluster-enabled redis-servers sharing the 16384 slots evenly, each with
    `replicas` replicas; start() waits until every node says cluster_state:ok; stop() ends
    them all and removes their data dirs. Each node is a RedisServer: kill() one to fail it."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.masters, self.replicas = masters, replicas
        taken: set[int] = set()
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = free_cluster_port(taken)
            taken |= {port, port + CLUSTER_BUS_OFFSET}
            self.nodes.append(RedisServer(port=port, extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0",
            ]))  # fmt: skip

    @property
    def url(self) -> str:
        """`redis+cluster://` naming every node (any one would do: the rest are found)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisClusterServer:
        try:
            for node in self.nodes:
                node.start()
            create = [find_redis_cli(), "--cluster", "create",
                      *(f"127.0.0.1:{n.port}" for n in self.nodes),
                      "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
            done = subprocess.run(create, capture_output=True, timeout=60, check=False)
            if done.returncode:
                raise ConfigError(f"redis-cli --cluster create failed: {done.stdout!r}")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every running node says cluster_state:ok and knows every slot's master, and
        every replica has synced with its master (one that never has is not promoted)."""
        deadline = time.monotonic() + timeout
        while not all(self._ready(node) for node in self.running()):
            if time.monotonic() > deadline:
                raise ConfigError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _ready(node: RedisServer) -> bool:
        # (Any: redis-py's execute_command is unannotated; CLUSTER SLOTS is read raw)
        client: Any = Redis(port=node.port, socket_connect_timeout=0.5, decode_responses=True)
        try:
            info = client.execute_command("CLUSTER", "INFO")
            slots = client.execute_command("CLUSTER", "SLOTS")
            role = client.info("replication")
        except RedisError:
            return False
        finally:
            client.close()
        covered = sum(int(s[1]) - int(s[0]) + 1 for s in slots)
        synced = role.get("role") == "master" or role.get("master_link_status") == "up"
        return "cluster_state:ok" in str(info) and covered == 16384 and synced

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def master_ports(self) -> list[int]:
        """The ports of the nodes now serving slots as masters (after a failover: the
        promoted replicas'), in slot order."""
        for node in self.running():
            client: Any = Redis(port=node.port, socket_connect_timeout=0.5)
            try:
                slots = client.execute_command("CLUSTER", "SLOTS")
            except RedisError:
                continue
            finally:
                client.close()
            return sorted({int(s[2][1]) for s in slots}, key=lambda p: min(
                int(s[0]) for s in slots if int(s[2][1]) == p))  # fmt: skip
        raise ConfigError("no node of the Redis Cluster answers")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def flushall(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.master_ports():
            client = Redis(port=port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
