"""Fair share (SPEC §9): runs of different sessions on one queue are served in turn, each
session's in add order; `max_running` caps a session's runs in flight across workers; a retry
with `retry_delay` waits in the schedule, its delay doubling with backoff="exponential"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from redis import Redis

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.connection import sync_reply
from sessionq.common.keys import Keys, run_number
from sessionq.common.rqcompat import rq_keys
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from sessionq.worker import task
from sessionq.worker.loop import SessionWorker
from tests.conftest import ROOT, WorkerProcs, ended, wait_for

RAN: list[str] = []


@task
def record(label: str) -> str:
    """Notes the order runs ran in (in-process workers of this module)."""
    from sessionq import current_task

    RAN.append(current_task().task_id)
    return label


RECORD = f"{__name__}:record"


def test_a_small_session_added_after_a_big_one_does_not_wait_for_it(
    client: Client, settings: Settings
) -> None:
    RAN.clear()
    big, small = client.session("big"), client.session("small")
    big_ids = [big.add(Task(RECORD, args=[f"b{i}"], name=f"b{i}"), flush=False)
               for i in range(400)]  # fmt: skip
    big.flush()
    small_ids = [small.add(Task(RECORD, args=[f"s{i}"], name=f"s{i}")) for i in range(10)]
    SessionWorker(settings).work(burst=True)
    assert sorted(RAN) == sorted(big_ids + small_ids), "every run ran once"
    small_done_at = max(RAN.index(i) for i in small_ids)
    big_before = sum(1 for i in RAN[:small_done_at] if i in set(big_ids))
    assert big_before <= len(big_ids) * 0.05, f"the small one waited for {big_before} big runs"
    for ids in (big_ids, small_ids):  # each session's runs in add order
        ran = [i for i in RAN if i in set(ids)]
        assert ran == sorted(ran, key=run_number)


def test_one_session_alone_drains_in_batches(client: Client, settings: Settings) -> None:
    """With no other session waiting, a worker claims a session's runs several at a time."""
    RAN.clear()
    s = client.session("alone")
    ids = [s.add(Task(RECORD, args=[str(i)], name=f"r{i}"), flush=False) for i in range(200)]
    s.flush()
    w = SessionWorker(settings)
    w.work(burst=True)
    assert RAN == ids
    assert w.runs_claimed == len(ids)


def test_runs_released_by_play_keep_their_add_order_under_max_running(
    client: Client, settings: Settings
) -> None:
    """play() puts a paused session's held runs at the front of the line, all of them; a
    worker that takes them while the session is at its max_running puts each back in the
    session's own list in add order (they came out reversed)."""
    RAN.clear()
    s = client.session("held", config={"max_running": 1, "autoplay": False})
    ids = s.map(RECORD, [str(i) for i in range(8)])
    s.play()
    SessionWorker(settings).work(burst=True)
    assert RAN == ids


def test_max_running_caps_a_session_across_workers(client: Client, workers: WorkerProcs) -> None:
    s = client.session("capped", config={"max_running": 2})
    for i in range(6):
        s.add(Task("tests.tasks:sleeper", args=[1.0], name=f"c{i}"))
    workers.start(4)
    wait_for(lambda: s.progress()["tasks"]["started"] == 2, what="two runs of it running")
    stats = client.stats()
    assert stats["workers"]["count"] - stats["workers"]["busy"] >= 1, "a worker is free"
    assert s.progress()["tasks"]["queued"] == 4, "yet the others wait"
    wait_for(lambda: ended(client, s.id), timeout=60, what="the session")
    assert s.progress()["tasks"]["succeeded"] == 6
    running = most = 0
    for e in client.events(s.id) or []:  # one session's events are in order (seq)
        running += {"task.started": 1, "task.succeeded": -1}.get(e["type"], 0)
        most = max(most, running)
    assert most == 2, "never more than max_running"


def test_a_retry_waits_in_the_schedule_with_backoff(
    client: Client, settings: Settings, redis: Redis
) -> None:
    s = client.session("backoff")
    tid = s.add(Task("tests.tasks:fails_before", args=[3], retries=2, retry_delay=0.4))
    keys, w = Keys(settings.prefix), SessionWorker(settings)
    w.work(burst=True)  # the first attempt fails; the retry waits in the schedule
    job: dict[Any, Any] = sync_reply(redis.hgetall(rq_keys(settings.prefix).job(tid)))
    assert job[b"state"] == b"deferred" and redis.zscore(keys.schedule(), tid) is not None
    assert redis.llen(rq_keys(settings.prefix).queue("default")) == 0, "not in a queue"
    worker = SessionWorker(settings)
    import threading

    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        wait_for(lambda: s.progress()["status"] == "Completed", timeout=30, what="the end")
    finally:
        worker.shutting_down = True
        thread.join(timeout=10)
    assert s[tid]["result"] == 3
    retries = [e for e in client.events(s.id) or [] if e["type"] == "task.retrying"]
    assert len(retries) == 2
    waits = [e["data"]["due"] - e["ts"] for e in retries]
    assert 0.4 * 0.9 - 0.01 <= waits[0] <= 0.4 * 1.1 + 0.01, waits
    assert 0.8 * 0.9 - 0.01 <= waits[1] <= 0.8 * 1.1 + 0.01, "doubled (exponential)"


def test_create_and_the_cli_take_a_retry_delay(
    client: Client, settings: Settings, redis: Redis
) -> None:
    """create() and `sessionq create`/`add` take retry_delay and backoff as Task does (a
    tester found them only on Task): the failed first attempt's retry waits in the schedule,
    `retry_delay` later (with backoff="fixed", the same each time)."""
    [sid] = client.create("api", task="tests.tasks:fails_before", args=[3], retries=2,
                          retry_delay=60, backoff="fixed")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sessionq", "--url", settings.url, "--prefix", settings.prefix,
           "--user", settings.user]  # fmt: skip
    made = subprocess.run([*cmd, "create", "cli", "--task", "tests.tasks:fails_before",
                           "--args", "[3]", "--retries", "2", "--retry-delay", "60",
                           "--backoff", "fixed", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    [cli_sid] = json.loads(made.stdout)
    add = [*cmd, "add", "kept", "--task", "tests.tasks:fails_before", "--args", "[3]",
           "--retries", "2", "--retry-delay", "60", "--json"]  # fmt: skip
    added = subprocess.run(add, env=env, capture_output=True, text=True, timeout=60, check=True)
    tid = json.loads(added.stdout)["task"]
    SessionWorker(settings).work(burst=True)  # each first attempt fails; its retry waits
    keys = Keys(settings.prefix)
    created = [client.tasks(s)[0]["id"] for s in (sid, cli_sid)]
    for run_id in (*created, tid):
        job: dict[Any, Any] = sync_reply(redis.hgetall(rq_keys(settings.prefix).job(run_id)))
        assert job.get(b"state") == b"deferred", (run_id, job)
        due = sync_reply(redis.zscore(keys.schedule(), run_id))
        assert due is not None and due / 1000 > time.time() + 30, "about a minute away"
