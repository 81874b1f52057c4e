"""RQ's own tools on sessionq's data (issue 18): what they mean is honoured - requeue is a
retry, cancel and delete end a run canceled, suspend pauses the workers' claims - and what
they leave behind is reconciled by the scheduler's sweep (worker/schedule.py reconcile):
sessions whose runs RQ deleted or canceled end, the global counters are recounted, and an id
popped that is no sessionq run is logged (and marked failed), never dropped in silence."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common import codec
from sessionq.common.codec import RQSerializer
from sessionq.common.keys import Keys
from sessionq.common.rqcompat import load_rq, rq_keys
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from sessionq.worker.loop import SessionWorker
from sessionq.worker.schedule import Scheduler
from tests.conftest import WorkerProcs, wait_for

ROOT = Path(__file__).resolve().parents[2]


def rq_cli(settings: Settings, *args: str) -> str:
    """`RQ_KEY_PREFIX=<prefix>rq rq ARGS -S sessionq.common.codec.RQSerializer -u URL`."""
    env = {**os.environ, "RQ_KEY_PREFIX": f"{settings.prefix}rq", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rq.cli", *args, "-u", settings.url,
           "-S", "sessionq.common.codec.RQSerializer"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def reconcile(settings: Settings, redis: Redis) -> Scheduler:
    scheduler = Scheduler(Scripts(redis, settings), "sweeper")
    scheduler.reconcile()
    return scheduler


def job(settings: Settings, redis: Redis, run_id: str) -> Any:
    rq = load_rq(settings.prefix)
    return rq.job.Job.fetch(run_id, connection=redis, serializer=RQSerializer)


def queue(settings: Settings, redis: Redis, name: str = "default") -> Any:
    return load_rq(settings.prefix).Queue(name, connection=redis, serializer=RQSerializer)


def status(client: Client, sid: str) -> str:
    return str(client.info(sid)[0]["status"])


def tasks_of(client: Client, sid: str) -> dict[str, int]:
    return {state: n for state, n in client.info(sid)[0]["tasks"].items() if n}


def destroy(client: Client, settings: Settings, ids: list[str]) -> None:
    client.destroy(ids)
    SessionWorker(settings).work(burst=True)  # carries the destroys out


def live_counts(client: Client) -> dict[str, int]:
    tasks = client.stats()["tasks"]
    return {s: tasks.get(s, 0) for s in ("queued", "deferred", "held", "started")}


def test_rq_empty_ends_the_sessions_of_the_runs_it_deleted(
    client: Client, settings: Settings, redis: Redis
) -> None:
    ids = client.create("emptied", task="tests.tasks:noop", replicas=3)
    session = client.session("kept")
    session.add(Task("tests.tasks:noop"))
    out = rq_cli(settings, "empty", "default")
    assert "4 jobs removed" in out
    assert {status(client, s) for s in ids} == {"Pending"}  # what RQ alone leaves
    reconcile(settings, redis)
    for sid in [*ids, session.id]:
        assert status(client, sid) == "Completed" and tasks_of(client, sid) == {"canceled": 1}
        assert "task.canceled" in [e["type"] for e in client.events(sid)]
    assert live_counts(client) == dict.fromkeys(("queued", "deferred", "held", "started"), 0)
    destroy(client, settings, ids)
    assert client.stats()["tasks"].get("canceled") == 1  # the persistent session's run


def test_job_delete_of_a_queued_run_and_destroy_leave_no_counters(
    client: Client, settings: Settings, redis: Redis
) -> None:
    [sid] = client.create("deleted", task="tests.tasks:noop")
    job(settings, redis, f"{sid}-1").delete()
    destroy(client, settings, [sid])  # before any sweep: the session's live counter leaves with it
    assert live_counts(client) == dict.fromkeys(("queued", "deferred", "held", "started"), 0)
    [other] = client.create("deleted-2", task="tests.tasks:noop")
    job(settings, redis, f"{other}-1").delete()
    reconcile(settings, redis)
    assert status(client, other) == "Completed"
    assert tasks_of(client, other) == {"canceled": 1}


def test_job_cancel_of_a_queued_run_ends_it_canceled(
    client: Client, settings: Settings, redis: Redis
) -> None:
    [sid] = client.create("canceled", task="tests.tasks:noop")
    job(settings, redis, f"{sid}-1").cancel()
    reconcile(settings, redis)
    assert status(client, sid) == "Completed" and tasks_of(client, sid) == {"canceled": 1}
    SessionWorker(settings).work(burst=True)  # nothing of it is run
    assert tasks_of(client, sid) == {"canceled": 1}


@pytest.mark.parametrize("tool", ["delete", "cancel"])
def test_a_started_run_deleted_or_canceled_with_rq_ends_canceled(
    tool: str, client: Client, settings: Settings, redis: Redis, workers: WorkerProcs
) -> None:
    rq = load_rq(settings.prefix)
    [sid] = client.create(f"started-{tool}", task="tests.tasks:sleeper", args=[1.5])
    workers.start()
    wait_for(lambda: status(client, sid) == "Running", what="the run to start")
    [name] = workers.names()
    rq_worker = rq.Worker.find_by_key(rq_keys(settings.prefix).worker(name), connection=redis,
                                      serializer=RQSerializer)  # fmt: skip
    assert rq_worker is not None and rq_worker.get_state() == "busy"  # rq info: busy
    getattr(job(settings, redis, f"{sid}-1"), tool)()
    wait_for(lambda: status(client, sid) == "Completed", what="the session to end")
    assert tasks_of(client, sid) == {"canceled": 1}
    assert queue(settings, redis).started_job_registry.count == 0  # rq info: 0 executing
    rq_worker.refresh()
    assert rq_worker.get_state() == "idle"
    assert live_counts(client)["started"] == 0


def test_rq_requeue_all_retries_the_failed_runs(
    client: Client, settings: Settings, redis: Redis
) -> None:
    [sid] = client.create("requeued", task="tests.tasks:flaky", args=["m"])
    SessionWorker(settings).work(burst=True)
    assert status(client, sid) == "Failed"
    assert "Requeueing 1 jobs" in rq_cli(settings, "requeue", "--all", "--queue", "default")
    SessionWorker(settings).work(burst=True)
    assert status(client, sid) == "Completed" and tasks_of(client, sid) == {"succeeded": 1}
    assert client.info(sid)[0]["result"] == 2  # its second attempt
    assert queue(settings, redis).failed_job_registry.count == 0
    assert client.stats()["tasks"].get("failed", 0) == 0


def test_rq_suspend_pauses_claims_until_rq_resume(
    client: Client, settings: Settings, redis: Redis
) -> None:
    rq_cli(settings, "suspend")
    [sid] = client.create("suspended", task="tests.tasks:noop")
    SessionWorker(settings).work(burst=True)  # leaves at once, as RQ's burst workers do
    assert status(client, sid) == "Pending"
    worker = SessionWorker(settings)
    thread = threading.Thread(target=worker.work, daemon=True)  # waits, not burst
    thread.start()
    wait_for(lambda: codec.text(redis.hget(rq_keys(settings.prefix).worker(worker.name), "state"))
             == "suspended", what="the worker to say it is suspended")  # fmt: skip
    assert status(client, sid) == "Pending"
    rq_cli(settings, "resume")
    wait_for(lambda: status(client, sid) == "Completed", what="the run after rq resume")
    worker.shutting_down = True
    thread.join(timeout=30)


def test_a_job_rq_enqueued_is_logged_and_marked_failed(
    client: Client, settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = queue(settings, redis).enqueue("tests.tasks.noop")
    redis.rpush(rq_keys(settings.prefix).queue("default"), "no-such-run-7")
    [sid] = client.create("after-foreign", task="tests.tasks:add", args=[1, 2])
    with caplog.at_level(logging.INFO, logger="sessionq.worker.loop"):
        SessionWorker(settings).work(burst=True)
    errors = " ".join(r.message for r in caplog.records if r.levelname == "ERROR")
    assert foreign.id in errors and "marked failed" in errors
    # an id naming no job at all (a run destroyed as it was claimed): skipped, said quietly
    assert "no-such-run-7" not in errors and "no-such-run-7" in caplog.text
    foreign.refresh()
    assert foreign.get_status() == "failed"
    assert foreign.id in queue(settings, redis).failed_job_registry.get_job_ids()
    assert client.info(sid)[0]["result"] == 3


def test_the_global_counters_are_recounted_from_the_sessions(
    client: Client, settings: Settings, redis: Redis
) -> None:
    client.create("counted", task="tests.tasks:noop", replicas=2)
    redis.hincrby(Keys(settings.prefix).run_counts(), "queued", 6)
    redis.hincrby(Keys(settings.prefix).run_counts(), "started", 1)
    scheduler = Scheduler(Scripts(redis, settings), "sweeper")
    assert scheduler.recount() == {"queued": -6, "started": -1}
    assert live_counts(client) == {"queued": 2, "deferred": 0, "held": 0, "started": 0}
    assert scheduler.recount() == {}
