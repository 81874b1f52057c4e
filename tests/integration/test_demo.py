"""The main job, as a new user runs it: no Redis configured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import ROOT, WorkerProcs, ended, wait_for


def test_demo_runs_on_an_embedded_redis_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SESSIONQ_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "sessionq", "demo", "--runs", "30", "--workers", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Completed" in proc.stdout and "succeeded 31" in proc.stdout
    assert "hello from a command run" in proc.stdout
    assert "every process it started has stopped" in proc.stdout
    url = proc.stdout.split("Redis at ", 1)[1].split()[0]
    with pytest.raises(RedisConnectionError):
        Redis.from_url(url, socket_connect_timeout=1).ping()  # the embedded Redis is gone


def test_demo_on_a_redis_whose_workers_do_not_know_its_function(
    settings: Settings, workers: WorkerProcs
) -> None:
    """Pointed at a Redis that has workers already (serving the default queues, with other
    tasks imported), the demo's runs go only to the workers it starts."""
    workers.start(allow_commands=True)
    env = {**os.environ, "SESSIONQ_URL": settings.url}
    proc = subprocess.run(
        [sys.executable, "-m", "sessionq", "--prefix", settings.prefix, "demo", "--runs", "20",
         "--workers", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  runs: succeeded 21\n" in proc.stdout  # (and no other count: none failed)


def test_up_serves_until_interrupted() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SESSIONQ_URL", "REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionq", "up", "--workers", "1", "--import", "tests.tasks"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split("SESSIONQ_URL=", 1)[1].split()[0]
        with Client(url, user="tester") as client:
            [sid] = client.create("via-up", task="tests.tasks:add", args=[20, 22])
            wait_for(lambda: ended(client, sid), what="the session to end")
            assert client.info(sid)[0]["result"] == 42
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code in (0, 130)
    with pytest.raises(RedisConnectionError):
        Redis.from_url(url, socket_connect_timeout=1).ping()


def test_worker_burst_exits_when_the_queues_are_empty(client: Client, settings: Settings) -> None:
    ids = client.create("burst", task="tests.tasks:add", args=[1, 1], replicas=5)
    proc = subprocess.run(
        [sys.executable, "-m", "sessionq", "--url", settings.url, "worker", "--burst",
         "--import", "tests.tasks", "--concurrency", "2"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    assert [r["status"] for r in client.info(ids)] == ["Completed"] * 5
