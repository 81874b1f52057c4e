"""The main job, as a new user runs it: no Redis configured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import ROOT


def test_demo_runs_on_an_embedded_redis_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SESSIONQ_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "demo", "--runs", "30", "--workers", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Completed" in proc.stdout and "succeeded 31" in proc.stdout
    assert "hello from a command run" in proc.stdout
    assert "every process it started has stopped" in proc.stdout
    url = proc.stdout.split("Redis at ", 1)[1].split()[0]
    with pytest.raises(RedisConnectionError):
        Redis.from_url(url, socket_connect_timeout=1).ping()  # the embedded Redis is gone
