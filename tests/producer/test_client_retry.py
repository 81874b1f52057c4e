"""A producer call that Redis carried out but whose reply was lost is sent again by
redis-py's retry: it must take effect once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError

import sessionq.common.scripts.transport
import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.jobhash import build_run
from sessionq.common.keys import DEFAULT_QUEUE
from sessionq.common.scripts import transport
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.loop import SessionWorker


def send_twice(monkeypatch: pytest.MonkeyPatch, client: Client) -> None:
    """Every enqueue script call is sent twice, as redis-py's retry does when the reply to
    the first was lost: at the one place every script call goes through (transport.call),
    whichever API call made it (create's plan, Session.flush's pipeline, add_runs)."""
    original = transport.call
    enqueue = client.scripts.script("enqueue")

    def sent_twice(script: Script, keys: Any, args: Any, client: Any, *wait: Any) -> Any:
        if transport.handle(script) == transport.handle(enqueue):
            original(script, keys, args, client, *wait)  # carried out; its reply lost
        return original(script, keys, args, client, *wait)

    monkeypatch.setattr(transport, "call", sent_twice)


def test_a_create_sent_twice_is_applied_once(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_twice(monkeypatch, client)
    ids = client.create("twice", task="tests.tasks:add", args=[1, 2], replicas=2)
    monkeypatch.undo()
    assert [r["tasks"]["queued"] for r in client.info(ids)] == [1, 1]
    for sid in ids:
        assert [e["type"] for e in client.events(sid) or []] == ["session.created", "task.queued"]
    assert client.stats()["tasks"]["queued"] == 2
    SessionWorker(settings).work(burst=True)
    assert [r["status"] for r in client.info(ids)] == ["Completed", "Completed"]


def test_an_add_sent_twice_is_applied_once(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionq.producer import Task

    s = client.session("resent")
    send_twice(monkeypatch, client)
    tid = s.add(Task("tests.tasks:add", args=[1, 2], name="once"))
    monkeypatch.undo()
    assert s.progress()["tasks"]["queued"] == 1 and s.list_ids() == [tid]
    assert [e["type"] for e in client.events(s.id) or []].count("task.queued") == 1
    SessionWorker(settings).work(burst=True)
    assert s.progress()["status"] == "Completed" and s[tid]["result"] == 3


def test_add_runs_sent_twice_is_applied_once(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = client.open_session("batch")
    specs = [build_run(name=f"r{i}", task="tests.tasks:add", args=[i, 1]) for i in range(3)]
    send_twice(monkeypatch, client)
    ids = client.add_runs(sid, specs)
    monkeypatch.undo()
    assert client.info(sid)[0]["tasks"]["queued"] == 3
    assert [e["type"] for e in client.events(sid) or []].count("task.queued") == 3
    assert client.stats()["tasks"]["queued"] == 3
    SessionWorker(settings).work(burst=True)
    assert [client.task_records(sid, [i], {})[0]["result"] for i in ids] == [1, 2, 3]


@pytest.mark.parametrize("policy", ["raise", "rename", "replace", "ignore"])
def test_a_resent_add_is_told_by_a_run_it_wrote(
    client: Client, settings: Settings, policy: str
) -> None:
    # the call's first run is skipped (its key names a task the session has), so whether the
    # call was carried out before shows on its second run only; under any policy the resend
    # finds the names the call gave, and takes them for its own
    s = client.session("keyed")
    from sessionq.producer import Task

    kept = s.add(Task("tests.tasks:add", args=[1, 1], key="k"))
    now = time.time()
    runs = []
    for n, key in ((100, "k"), (101, None)):
        spec = build_run(name=f"t{n}", task="tests.tasks:add", args=[n, 0])
        options = {"policy": policy, "key": key} if key else {"policy": policy}
        runs.append((0, f"{s.id}-{n}", spec.name, "queued", DEFAULT_QUEUE,
                     spec.job_fields(DEFAULT_QUEUE, now), options))  # fmt: skip
    session = [(s.id, False, b"", "", "session", client.user)]
    first = client.scripts.enqueue(session, runs, now=now)
    again = client.scripts.enqueue(session, runs, now=now)
    assert first == again == ["ok", f"{s.id}-100", kept, None]
    assert s.list_ids() == [kept, f"{s.id}-101"]
    assert [e["type"] for e in client.events(s.id) or []].count("task.queued") == 2
    assert s.progress()["tasks"]["queued"] == 2
    SessionWorker(settings).work(burst=True)
    assert s.progress()["status"] == "Completed" and s[f"{s.id}-101"]["result"] == 101


def test_a_call_after_redis_lost_its_scripts_loads_them_again(
    client: Client, settings: Settings
) -> None:
    [first] = client.create("before", task="tests.tasks:noop")
    # as after a restart: the fast FCALL meets "Function not found" (EVALSHA: NOSCRIPT)
    client.redis.function_flush()
    client.redis.script_flush()
    [second] = client.create("after", task="tests.tasks:noop")
    assert [r["name"] for r in client.info([first, second])] == ["before", "after"]


def test_a_script_call_whose_reply_is_lost_is_sent_again_and_applied_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripts.call's own EVALSHA loses the reply of a call Redis carried out; redis-py's
    path sends it again, which the script takes as the resend it is."""

    original, lost = sessionq.common.scripts.transport._evalsha_once, []

    def reply_lost(*args: Any) -> Any:
        original(*args)
        lost.append(1)
        raise RedisConnectionError("connection dropped before the reply")

    monkeypatch.setattr(sessionq.common.scripts.transport, "_evalsha_once", reply_lost)
    [sid] = client.create("once", task="tests.tasks:noop")
    assert lost == [1]
    named = [r for r in client.fetch() if r["name"] == "once"]
    assert [r["id"] for r in named] == [sid] and named[0]["tasks"]["queued"] == 1
