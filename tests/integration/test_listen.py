"""listen(): every event once, in seq order, whenever the listener arrives (SPEC §5)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from dataclasses import replace
from functools import partial
from typing import Any

from click.testing import CliRunner
from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.jobhash import build_run
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from sessionq.producer.cli import cli
from sessionq.producer.listen import all_sessions_channels
from tests.conftest import WorkerProcs, ended, home, subscribers, wait_for

WATCH_END_S = 90  # generous: the machine may be loaded


def many_runs(client: Client, n: int, task: str = "tests.tasks:noop", args: Any = None) -> str:
    sid = client.open_session(f"s{n}")
    client.add_runs(sid, [build_run(name=f"r{i}", task=task, args=args) for i in range(n)])
    return sid


def assert_complete(events: list[dict[str, Any]], sid: str) -> None:
    seqs = [e["seq"] for e in events if e["session"] == sid]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap, no duplicate, in order"
    assert events[-1]["type"] == "session.completed"


def test_a_late_listener_sees_every_event_once(client: Client, workers: WorkerProcs) -> None:
    sid = many_runs(client, 300)
    workers.start(1)
    wait_for(lambda: client.info(sid)[0]["tasks"]["succeeded"] >= 100, what="a third done")
    events = list(client.listen(sid, after=0, timeout=30))
    assert events[0]["seq"] == 1
    assert_complete(events, sid)
    assert sum(e["type"] == "task.succeeded" for e in events) == 300


def test_a_killed_connection_loses_nothing(
    client: Client, workers: WorkerProcs, redis: Redis
) -> None:
    sid = many_runs(client, 400, task="tests.tasks:sleeper", args=[0.01])
    got: list[dict[str, Any]] = []

    def listen() -> None:
        for event in client.listen(sid, after=0, timeout=60):
            got.append(event)

    thread = threading.Thread(target=listen)
    thread.start()
    workers.start(2)
    wait_for(lambda: len(got) > 100, what="the listener to be busy")
    killed = 0
    server = home(redis, client.keys.events_channel(sid))
    for info in server.client_list(_type="pubsub"):
        killed += sync_reply(server.client_kill_filter(_id=info["id"]))
    assert killed >= 1
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert_complete(got, sid)
    assert sum(e["type"] == "task.succeeded" for e in got) == 400
    assert got == list(client.history_after(sid, 0))


def test_a_capped_history_is_reported_as_a_gap(settings: Settings, workers: WorkerProcs) -> None:
    small = replace(settings, history_cap=50)
    with Client(settings=small) as client:
        sid = many_runs(client, 100)  # 1 + 100 events, 50 kept
        events = list(client.listen(sid, after=0, timeout=2))
        assert events[0]["type"] == "listener.gap"
        assert events[0]["data"] == {"from_seq": 1, "to_seq": 51}
        assert [e["seq"] for e in events[1:]] == list(range(52, 102))


def test_a_batch_past_a_small_cap_leaves_no_unreported_hole(settings: Settings) -> None:
    """A cap under the trim period (64 events): a later batch writing past it must not leave
    the first events kept beside its last ones, a hole a late listener would skip silently."""
    small = replace(settings, history_cap=10)
    with Client(settings=small) as client:
        s = client.session("small-cap")
        s.add(Task("tests.tasks:add", args=[1, 1], name="first"))  # seq 1 and 2, both kept
        s.map("tests.tasks:add", range(30), kwargs={"b": 1})  # 30 more: 10 kept
        events = list(client.listen([s.id], after=0, timeout=1))
        seqs = [e["seq"] for e in events if e["type"] != "listener.gap"]
        gaps = [e["data"] for e in events if e["type"] == "listener.gap"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"a hole: {seqs}"
        assert gaps == [{"from_seq": 1, "to_seq": seqs[0] - 1}]


def test_two_hundred_listeners_see_the_same_sequence(client: Client, workers: WorkerProcs) -> None:
    sid = many_runs(client, 50)
    results: list[list[int]] = [[] for _ in range(200)]
    ready = threading.Barrier(201)

    def listen(slot: int) -> None:
        stream = client.listen(sid, after=0, timeout=60)
        ready.wait()
        results[slot] = [e["seq"] for e in stream]

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    ready.wait()
    workers.start(1)
    for t in threads:
        t.join(timeout=120)
    expected = list(range(1, len(results[0]) + 1))
    assert len(expected) == 1 + 50 + 1 + 100 + 1  # created, queued, started, 2 per run, completed
    assert all(r == expected for r in results)


def test_types_and_after_filters(client: Client, workers: WorkerProcs) -> None:
    sid = many_runs(client, 5)
    workers.start(1)
    wait_for(lambda: ended(client, sid), what="the session to end")
    started = list(client.listen(sid, types=["task.started"], after=0, timeout=5))
    assert [e["type"] for e in started] == ["task.started"] * 5
    prefixed = list(client.listen(sid, types=["session.*"], after=0, timeout=5))
    assert [e["type"] for e in prefixed] == [
        "session.created",
        "session.started",
        "session.completed",
    ]
    tail = list(client.listen(sid, after=10, timeout=5))
    assert tail[0]["seq"] == 11 and tail[-1]["type"] == "session.completed"
    # an ended session with after=None: nothing more will come, the iterator ends at once
    assert list(client.listen(sid)) == []


def test_listen_to_every_session_ends_by_timeout(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    got: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: got.extend(client.listen(None, timeout=1.5)))
    thread.start()

    for channel in all_sessions_channels(client.keys):
        wait_for(partial(subscribers, client.redis, channel), what="the listener to subscribe")
    ids = client.create("a", task="tests.tasks:noop", replicas=3)
    thread.join(timeout=30)
    assert {e["session"] for e in got} == set(ids)


def test_cli_follow_ends_when_the_sessions_end(
    settings: Settings, client: Client, workers: WorkerProcs
) -> None:
    workers.start(1, allow_commands=True)
    [a] = client.create("a", cmd=sys.executable, args=["-c", "print('one'); print('two')"])
    [b] = client.create("b", task="tests.tasks:with_progress")
    runner = CliRunner()
    base = ["--url", settings.url, "--user", settings.user]
    out = runner.invoke(cli, [*base, "events", a, b, "--follow", "--type", "session.*"]).stdout
    assert out.count("session.completed") == 2
    out = runner.invoke(cli, [*base, "logs", a, b, "--follow"]).stdout
    assert out.splitlines() == [f"{a}: one", f"{a}: two", f"{b}: all steps done"]


def test_watch_says_where_a_session_stands_at_once_and_each_change_once(
    settings: Settings, client: Client, workers: WorkerProcs
) -> None:
    sid = many_runs(client, 3, task="tests.tasks:noop")
    env = {**os.environ, "SESSIONQ_URL": settings.url, "SESSIONQ_USER": settings.user}
    proc = subprocess.Popen([sys.executable, "-m", "sessionq", "watch", sid], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        # no worker yet: nothing changes, and still the session's state comes first
        said, _, _ = select.select([proc.stdout], [], [], WATCH_END_S)
        assert said, "watch said nothing of a session that does not change"
        assert proc.stdout.readline() == f"s3 {sid}: 0/3 done, 0 failed, Pending\n"
        workers.start(1)
        rest, _ = proc.communicate(timeout=WATCH_END_S)
    finally:
        proc.kill()
    lines = rest.splitlines()
    assert lines[-1] == f"s3 {sid}: Completed (3/3 done, 0 failed)"
    assert len(set(lines)) == len(lines), "a line said twice"


def test_watch_prints_plain_lines_when_not_a_terminal(
    settings: Settings, client: Client, workers: WorkerProcs
) -> None:
    sid = many_runs(client, 20, task="tests.tasks:with_progress")
    workers.start(1)
    result = CliRunner().invoke(cli, ["--url", settings.url, "--user", settings.user, "watch", sid])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert lines[-1] == f"s20 {sid}: Completed (20/20 done, 0 failed)"
    assert any("/20 done" in line for line in lines[:-1])
