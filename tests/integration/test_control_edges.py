"""Control of sessions at their edges, as a new user met them: a destroy of a session whose runs
wait on a queue no worker serves, a restart of a stopped cron task, pause/play/stop of a
session that has ended, an add to a destroyed session - with real worker processes."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from click.testing import CliRunner
from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.errors import SessionNotFound, ValidationError
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from sessionq.producer.cli import cli
from tests.conftest import ENV_KNOBS, ROOT, WorkerProcs, wait_for

NOOP = "tests.tasks:noop"


def _ids(redis: Redis, key: str) -> list[str]:
    return [m.decode() for m in redis.lrange(key, 0, -1)]


def test_destroy_takes_the_sessions_waiting_runs_out_of_their_queue(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    line = client.scripts.rq.queue("nobody")  # a queue no worker serves
    stays = client.session("stays").add(Task(NOOP, name="x", queue="nobody"))
    s = client.session("pend")
    ids = [s.add(Task(NOOP, name=f"t{i}", queue="nobody")) for i in range(3)]
    [made] = client.create("pend", task=NOOP, queue="nobody")
    # fair share: each session's next run in the queue's line, the rest in its own list
    assert _ids(redis, line) == [stays, ids[0], f"{made}-1"]
    assert _ids(redis, keys.session_queue(s.id, "nobody")) == ids[1:]
    assert client.stats()["queues"]["nobody"] == 5
    workers.start()  # carries out the destroys (the control queue), serves no "nobody"
    assert client.destroy([s.id, made]) == {s.id: True, made: True}
    wait_for(lambda: not client.info([s.id, made]), what="both destroyed")
    assert _ids(redis, line) == [stays]
    assert not redis.exists(keys.session_queue(s.id, "nobody"))
    stats = client.stats()
    assert stats["queues"]["nobody"] == 1 and stats["tasks"]["queued"] == 1


def test_a_worker_skips_a_run_whose_session_is_gone_quietly(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    # what a destroy racing a claim leaves: an id in a queue's line whose job hash is gone
    line = client.scripts.rq.queue("default")
    gone = "0123456789ab-1"
    redis.rpush(line, gone)
    redis.hincrby(keys.queue_depths(), line, 1)
    [sid] = client.create("after-gone", task="tests.tasks:add", args=[1, 2])
    proc = subprocess.run(
        [sys.executable, "-m", "sessionq", "--url", settings.url, "--prefix", settings.prefix,
         "--user", settings.user, "worker", "--import", "tests.tasks", "--burst"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**ENV_KNOBS, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if gone in line]
    assert said and all(" INFO " in line and "skipped" in line for line in said), said
    assert " ERROR " not in proc.stderr
    assert client.info(sid)[0]["result"] == 3
    assert client.stats()["queues"]["default"] == 0


def test_restart_after_stop_schedules_the_cron_task_again_and_reruns_no_firing(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    s = client.session("crontest")
    first = s.add(Task("tests.tasks:add", args=[2, 2], cron="0 0 1 1 *", name="every"))
    assert s[first]["state"] == "deferred"
    workers.start()
    redis.zadd(keys.schedule(), {first: 0}, xx=True)  # its firing time has come
    wait_for(lambda: s[first]["state"] == "succeeded", what="the first firing")
    [nxt] = [t for t in s.list_ids() if t != first]  # the next firing, made as it fired
    assert s[nxt]["state"] == "deferred"
    s.stop()
    assert s.wait(timeout=20) == "Stopped"
    wait_for(lambda: s[nxt]["state"] == "canceled", what="the next firing canceled")
    s.restart()

    def restarted() -> list[dict[str, Any]]:
        return [e for e in client.events(s.id) or []
                if e["type"] == "task.queued" and e["data"].get("reason") == "restart"]  # fmt: skip

    wait_for(restarted, what="the restart carried out")
    assert [e["task"] for e in restarted()] == [nxt]  # the ended firing is not run again
    record = s[nxt]
    assert record["state"] == "deferred" and record["attempts"] == 0
    due = sync_reply(redis.zscore(keys.schedule(), nxt))
    assert due is not None and due > time.time() * 1000  # waits for its next firing time
    assert s.progress()["status"] == "Running"
    assert s[first]["attempts"] == 1 and s[first]["result"] == 4
    assert s.list_ids() == [first, nxt]


def test_pause_and_play_refuse_an_ended_session_and_stop_leaves_it_as_it_ended(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("ended")
    s.add(Task("tests.tasks:boom", name="bad"))
    workers.start()
    assert s.wait(timeout=20) == "Failed"
    runner = CliRunner()
    base = ["--url", client.settings.url, "--prefix", client.settings.prefix, "--user", client.user]

    def failed() -> list[str]:
        return [r["id"] for r in client.fetch(status="Failed")]

    for action in ("pause", "play"):
        out = runner.invoke(cli, [*base, action, s.id])
        assert out.exit_code == 1 and f"is Failed, ended; {action} refused" in out.output
        # the API, past the CLI's own check: refused in Redis, atomically
        assert getattr(client, action)(s.id) == {s.id: False}
        with pytest.raises(ValidationError, match="session is Failed"):
            getattr(s, action)()
        assert failed() == [s.id]
    # nothing waits or runs: a stop has nothing to do, and the session stays as it ended
    assert client.stop(s.id) == {s.id: True}
    out = runner.invoke(cli, [*base, "stop", s.id])
    assert out.exit_code == 0 and out.output.strip() == f"{s.id} accepted"
    s.stop()
    assert failed() == [s.id]
    assert "session.stopped" not in [e["type"] for e in client.events(s.id) or []]


def test_adding_a_task_again_to_a_destroyed_session_is_not_found(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("gone-again")
    task = Task(NOOP, name="x")
    tid = s.add(task)
    s.delete()  # releases the handle's listeners and threads; the session stays (SPEC §3)
    assert s.add(task) == tid and len(s) == 1
    assert client.destroy(s.id) == {s.id: True}  # no worker yet: being destroyed
    with pytest.raises(SessionNotFound):
        s.add(task)
    workers.start()
    wait_for(lambda: not client.info(s.id), what="destroyed")
    with pytest.raises(SessionNotFound):
        s.add(task)
