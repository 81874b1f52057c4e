"""Fixtures of the producer tests: the listeners' (producer.hub, producer.aiohub), an ACL
server's, and the project folder of the README's examples."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from sessionq.common.redisserver import RedisServer
from sessionq.producer import Client
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def readme_tasks_py() -> str:
    """The README's `myapp/tasks.py`."""
    [code] = re.findall(r"```python\n# myapp/tasks.py\n(.*?)```", README, re.S)
    return code


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder holding the README's `myapp/tasks.py`."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(readme_tasks_py())
    return tmp_path


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
