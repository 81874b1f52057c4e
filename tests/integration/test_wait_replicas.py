"""SESSIONQ_WAIT_REPLICAS (SPEC §9): an acknowledged create or add has reached the replicas,
a worker starts a claimed run only once its claim has, and a replica that does not answer in
time gives the producer an error that says the write may not survive a failover. The faults
are real: a replica process of the test's own master, frozen with SIGSTOP."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from sessionq.common import codec
from sessionq.common.errors import NotReplicated
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from tests.conftest import ENV_KNOBS, FAST, ROOT, wait_for


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    master = RedisServer().start()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(master.port)]).start()
    try:
        link = Redis(port=replica.port)
        wait_for(lambda: link.info("replication").get("master_link_status") == "up",
                 what="the replica to follow its master")  # fmt: skip
        link.close()
        yield master, replica
    finally:
        if replica.proc is not None:
            os.kill(replica.proc.pid, signal.SIGCONT)
        replica.stop()
        master.stop()


def settings_for(master: RedisServer) -> Settings:
    return Settings.from_env(master.url, environ={}, user="tester", wait_replicas=1,
                             wait_timeout_s=0.3, **FAST)  # fmt: skip


def test_an_acknowledged_create_is_on_the_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    client = Client(settings=settings_for(master))
    [sid] = client.create("safe", task="tests.tasks:add", args=[1, 2])
    on_replica = Redis(port=replica.port)
    assert on_replica.hexists(Keys().sessions(), sid), "there as create returned"
    s = client.session("kept")
    tid = s.add(Task("tests.tasks:add", args=[3, 4], name="a"))
    assert on_replica.exists(f"sq:rq:job:{tid}")
    on_replica.close()
    client.close()


def test_a_frozen_replica_makes_create_say_so(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    client = Client(settings=settings_for(master))
    with pytest.raises(NotReplicated, match="may not survive a failover"):
        client.create("unsafe", task="tests.tasks:add", args=[1, 2])
    env = {**os.environ, "SESSIONQ_WAIT_REPLICAS": "1", "SESSIONQ_WAIT_TIMEOUT_S": "0.3"}
    cli = subprocess.run(
        [sys.executable, "-m", "sessionq", "--url", master.url, "create", "x", "--task",
         "tests.tasks:add", "--args", "1 2"],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [cli.stderr.strip()], "one line"
    assert "SESSIONQ_WAIT_REPLICAS=1" in cli.stderr
    client.close()


def test_ids_are_handed_out_only_once_the_replica_has_their_reservation(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    """Where the ACL does not allow INFO (reserve.lua's generation check), ids handed out
    but lost in a failover could be handed out again: WAIT keeps that from happening."""
    master, replica = pair
    client = Client(settings=settings_for(master))
    s = client.session("ids")
    s.add(Task("tests.tasks:add", args=[1, 1], name="first"))
    replica.pause()
    with pytest.raises(NotReplicated, match="may not survive a failover"):
        # flush=False: nothing is written but the ids' reservation
        s.add(Task("tests.tasks:add", args=[2, 2], name="b"), flush=False)
    client.close()


def test_a_worker_starts_a_claimed_run_only_once_the_replica_has_the_claim(
    pair: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    master, replica = pair
    assert replica.proc is not None
    settings = settings_for(master)
    client = Client(settings=settings)
    marker = tmp_path / "ran"
    [sid] = client.create("held-back", task="tests.tasks:touch", args=[str(marker)])
    os.kill(replica.proc.pid, signal.SIGSTOP)  # from here on no claim can be acknowledged
    log = tmp_path / "worker.log"
    env = {**os.environ, **ENV_KNOBS, "PYTHONPATH": str(ROOT), "SESSIONQ_WAIT_REPLICAS": "1",
           "SESSIONQ_WAIT_TIMEOUT_S": "0.3"}  # fmt: skip
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "sessionq", "--url", master.url, "--user", "tester",
             "worker", "--import", "tests.tasks"],
            cwd=ROOT, env=env, stderr=out, start_new_session=True,
        )  # fmt: skip
    try:
        job = Redis(port=master.port)
        wait_for(lambda: codec.text(job.hget(f"sq:rq:job:{sid}-1", "state")) == "started",
                 timeout=60, what="the run claimed")  # fmt: skip
        wait_for(lambda: "may not survive a failover" in log.read_text(), timeout=60,
                 what="the worker to find its claim not replicated")  # fmt: skip
        assert not marker.exists(), "the run did not begin before its claim was replicated"
        os.kill(replica.proc.pid, signal.SIGCONT)
        wait_for(lambda: client.info(sid)[0]["status"] == "Completed", timeout=30,
                 what="the run, once the replica has its claim")  # fmt: skip
        assert marker.read_text() == "1", "it ran once"
        job.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        client.close()


def test_wait_replicas_is_a_setting() -> None:
    s = Settings.from_env(environ={"SESSIONQ_WAIT_REPLICAS": "2", "SESSIONQ_WAIT_TIMEOUT_S": "3"})
    assert (s.wait_replicas, s.wait_timeout_s) == (2, 3.0)
    assert Settings.from_env(environ={}).wait_replicas == 0
    with pytest.raises(Exception, match="wait_replicas"):
        dataclasses.replace(s, wait_replicas=-1)
