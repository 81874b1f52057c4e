"""Sessions end to end with real `sessionq worker` processes (SPEC §2, §4, §5)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from redis import Redis

from sessionq.common.errors import ValidationError
from sessionq.common.keys import Layout
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import ROOT, WorkerProcs, ended, home_url, wait_for

PRINT_ENV = (
    "import os, time; time.sleep(0.4); "
    "print(*[os.environ[k] for k in ('REPLICA_ID', 'REPLICA_COUNT', 'SESSIONQ_SESSION_ID', "
    "'SESSIONQ_TASK_ID', 'GREETING')])"
)


def test_three_replicas_of_a_command_on_two_workers(client: Client, workers: WorkerProcs) -> None:
    workers.start(2, allow_commands=True)
    ids = client.create(
        "replica",
        image="img:1",
        cores=1,
        ram=1,
        cmd=sys.executable,
        args=["-c", PRINT_ENV],
        env={"GREETING": "hello"},
        replicas=3,
    )
    assert len(ids) == 3
    wait_for(lambda: all(ended(client, sid) for sid in ids), what="three sessions to end")
    records = client.info(ids)
    assert [r["name"] for r in records] == ["replica-1", "replica-2", "replica-3"]
    assert all(r["status"] == "Completed" and r["progress"] == 1.0 for r in records)
    assert [r["replica_id"] for r in records] == [1, 2, 3]
    logs = client.logs(ids) or {}
    for n, sid in enumerate(ids, start=1):
        assert logs[sid] == f"{n} 3 {sid} {sid}-1 hello\n"
    started = [e for e in client.events(ids) or [] if e["type"] == "task.started"]
    assert len({e["worker"] for e in started}) == 2, "both workers ran replicas"
    for sid in ids:
        types = [e["type"] for e in client.events(sid) or []]
        assert types[0] == "session.created" and types[-1] == "session.completed"
        assert "task.log" in types
    assert {r["id"] for r in client.fetch(status="Completed")} == set(ids)
    assert client.fetch(status="Running") == []
    stats = client.stats()
    assert stats["sessions"]["Completed"] == 3 and stats["tasks"]["succeeded"] == 3
    assert stats["workers"] == {"count": 2, "busy": 0}


def test_function_with_progress_on_a_worker_process(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    [sid] = client.create("prog", task="tests.tasks:with_progress", kwargs={"steps": 4})
    wait_for(lambda: ended(client, sid), what="the session to end")
    fractions = [
        e["data"]["fraction"] for e in client.events(sid) or [] if e["type"] == "task.progress"
    ]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert client.info(sid)[0]["result"] == "done"


def test_nothing_is_lost_without_a_worker(client: Client, workers: WorkerProcs) -> None:
    ids = client.create("later", task="tests.tasks:add", args=[1, 2], replicas=4)
    assert [r["status"] for r in client.info(ids)] == ["Pending"] * 4
    workers.start(1)
    wait_for(lambda: all(ended(client, sid) for sid in ids), what="sessions to end")
    assert [r["result"] for r in client.info(ids)] == [3] * 4


def test_destroy_a_queued_session(client: Client, workers: WorkerProcs) -> None:
    [sid] = client.create("doomed", task="tests.tasks:add", args=[1, 2])
    assert client.destroy(sid) == {sid: True}
    assert client.info(sid)[0]["status"] == "Terminating"
    workers.start(1)
    wait_for(lambda: client.info(sid) == [], what="the session to be gone")
    events = client.events(sid)
    assert events is not None and events[-1]["type"] == "session.destroyed"
    assert client.logs(sid) == {}
    assert client.destroy("no-such-id") == {"no-such-id": False}


def test_destroy_a_running_session(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    [sid] = client.create("long", task="tests.tasks:stubborn_sleeper", args=[60])
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    assert client.destroy(sid) == {sid: True}
    wait_for(lambda: client.info(sid) == [], timeout=10, what="the running session to be gone")
    types = [e["type"] for e in client.events(sid) or []]
    assert types[-2:] == ["task.canceled", "session.destroyed"]
    [after] = client.create("after", task="tests.tasks:add", args=[2, 2])
    wait_for(lambda: ended(client, after), what="the worker to go on")
    assert client.info(after)[0]["result"] == 4


def test_destroy_of_another_users_session_is_refused(settings: Settings, client: Client) -> None:
    [sid] = client.create("mine", task="tests.tasks:add", args=[1, 2])
    with Client(settings=replace(settings, user="mallory")) as other:
        assert other.destroy(sid) == {sid: False}
        assert other.fetch() == []
        assert [r["id"] for r in other.fetch(view="all")] == [sid]


def test_destroy_with_prefix_and_regex(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    ids = {
        n: client.create(n, task="tests.tasks:noop")[0]
        for n in ("test-a", "test-b", "prod-a", "x-desktop")
    }
    wait_for(lambda: all(ended(client, s) for s in ids.values()), what="sessions to end")
    assert set(client.destroy_with("test")) == {ids["test-a"], ids["test-b"]}
    assert set(client.destroy_with("desktop$")) == {ids["x-desktop"]}
    assert client.destroy_with("prod", status="Failed") == {}
    with pytest.raises(ValueError, match="invalid regex"):
        client.destroy_with("(unclosed")
    wait_for(lambda: [r["name"] for r in client.fetch()] == ["prod-a"], what="three destroyed")


def test_create_validation_writes_nothing(client: Client, redis: Redis) -> None:
    bad_calls = [
        dict(name="-bad", cmd="true"),
        dict(name="ok", cmd="true", replicas=0),
        dict(name="ok", cmd="true", replicas=10_001),
        dict(name="ok", cmd="true", cores=0),
        dict(name="ok", cmd="true", ram=-1),
        dict(name="ok", cmd="true", gpu=0),
        dict(name="ok", cmd="true", env={"1X": "y"}),
        dict(name="ok", task="tests.tasks:add", args=[object()]),
        dict(name="ok"),
        dict(name="ok", task="tests.tasks:add", args=["x" * 600_000]),
        dict(name="x" * 60, cmd="true", replicas=10_000),
    ]
    for kwargs in bad_calls:
        with pytest.raises(ValidationError):
            client.create(**kwargs)
    assert redis.dbsize() == 0


def test_rq_info_sees_our_queues_and_workers(
    client: Client, workers: WorkerProcs, settings: Settings
) -> None:
    # the first run runs until stopped: rq info (one per partition on a cluster, 17 Python
    # processes) may take long on a loaded machine
    ids = client.create("seen", task="tests.tasks:until_stopped", args=[120], queue="elsewhere",
                        replicas=3)  # fmt: skip
    workers.start(1, extra=["--queue", "elsewhere"])
    wait_for(lambda: any(r["status"] == "Running" for r in client.info(ids)),
             what="the first run to start")  # fmt: skip
    # RQ's worker registry under the prefix; with partitions, each one's queues under its own
    # (rq takes one server: the one holding them)
    where = {client.scripts.grq.rq_prefix[: -len("rq")]: client.scripts.grq.workers_set}
    where.update({part.prefix: part.sessions() for part in Layout.of(settings).parts()})
    asked = []
    for prefix, key in where.items():  # (all at once)
        cmd = [sys.executable, "-m", "rq.cli", "info", "--url", home_url(client.redis, key),
               "-S", "sessionq.common.codec.RQSerializer"]  # fmt: skip
        env = {**os.environ, "RQ_KEY_PREFIX": f"{prefix}rq", "PYTHONPATH": str(ROOT)}
        asked.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    try:
        texts = [rq_info.communicate(timeout=120)[0] for rq_info in asked]
    finally:
        client.stop(ids)
    assert all(rq_info.returncode == 0 for rq_info in asked)
    counts = [re.search(r"^elsewhere\s+\|\S*\s+(\d+)(?:, (\d+) executing)?", text, re.M)
              for text in texts]  # fmt: skip
    waiting = sum(int(found[1]) for found in counts if found)
    executing = sum(int(found[2] or 0) for found in counts if found)
    assert (waiting, executing) == (2, 1), texts
    assert f"{workers.names()[0]} (" in texts[0]


def test_nothing_under_the_prefix_is_pickle(
    client: Client, workers: WorkerProcs, redis: Redis
) -> None:
    workers.start(1, allow_commands=True)
    ids = client.create("mix", task="tests.tasks:with_progress", replicas=2)
    ids += client.create("cmd", cmd=[sys.executable, "-c", "print('x')"])
    ids += client.create("bad", task="tests.tasks:boom")
    wait_for(lambda: all(ended(client, s) for s in ids), what="sessions to end")
    client.destroy(ids[0])
    wait_for(lambda: client.info(ids[0]) == [], what="destroy")
    values: list[bytes] = []
    for key in redis.scan_iter("*"):
        kind = redis.type(key).decode()
        if kind == "string":
            values.append(redis.get(key) or b"")
        elif kind == "hash":
            values += redis.hvals(key)
        elif kind == "list":
            values += redis.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            values += redis.smembers(key) if kind == "set" else redis.zrange(key, 0, -1)
    assert values
    for value in values:
        assert not (value[:1] == b"\x80" and value[1:2] in b"\x02\x03\x04\x05"), value[:40]


def test_two_workers_finishing_runs_of_one_session_keep_counts_right(
    client: Client, workers: WorkerProcs
) -> None:
    from sessionq.common.jobhash import build_run

    sid = client.open_session("many")
    workers.start(2)  # both serving before the runs arrive: a busy machine may start one late
    # (5 ms each: 2 s of work for one worker, so that the other, however late it wakes - an
    # idle partitioned worker asks every partition once a second - takes some of them)
    runs = [build_run(name=f"r{i}", task="tests.tasks:sleeper", args=[0.005]) for i in range(400)]
    client.add_runs(sid, runs)
    wait_for(lambda: ended(client, sid), what="400 runs to finish")
    [record] = client.info(sid)
    assert record["status"] == "Completed"
    assert record["tasks"] == {
        "queued": 0,
        "deferred": 0,
        "held": 0,
        "started": 0,
        "succeeded": 400,
        "failed": 0,
        "canceled": 0,
    }
    events = client.events(sid) or []
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] == "task.succeeded" for e in events) == 400
    assert sum(e["type"] == "session.completed" for e in events) == 1
    assert len({e["worker"] for e in events if e["type"] == "task.started"}) == 2


def test_connect_without_a_dashboard_follows_in_the_terminal(
    client: Client, workers: WorkerProcs, capsys: pytest.CaptureFixture[str]
) -> None:
    workers.start(1)
    [sid] = client.create("followed", task="tests.tasks:with_progress")
    client.connect(sid)
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"followed {sid}: 1/1 done, 0 failed, Completed"


def test_worker_cores_and_ram_reach_stats(client: Client, workers: WorkerProcs) -> None:
    workers.start(1, extra=["--cores", "4", "--ram", "16"])
    [sid] = client.create("big", cores=2, ram=3, task="tests.tasks:sleeper", args=[3])
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    stats = client.stats()
    assert stats["cores"] == {"requested": 2.0, "available": 4.0}
    assert stats["ram"] == {"requested": 3.0, "available": 16.0}
    assert stats["workers"] == {"count": 1, "busy": 1}
