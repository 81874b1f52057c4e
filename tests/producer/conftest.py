"""Fixtures of the listener tests (producer.hub, producer.aiohub)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from sessionq.common.redisserver import RedisServer
from sessionq.producer import Client


@pytest.fixture
def two_sessions(client: Client) -> Iterator[tuple[str, str]]:
    # no worker: the sessions stay queued, the test emits their events
    a, b = client.create("a", task="tests.tasks:noop", replicas=2)
    yield a, b


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    """A Redis of its own with an ACL user, alice, who may touch only the sq: prefix."""
    server = RedisServer().start()
    admin = Redis(port=server.port)
    admin.acl_setuser("alice", enabled=True, passwords=["+alice-pw"], keys=["sq:*"],
                      channels=["sq:*"], commands=["+@all"])  # fmt: skip
    admin.close()
    yield server
    server.stop()
