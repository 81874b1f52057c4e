"""`sessionq worker --max-jobs N` (SPEC §9 In-flight runs per worker process), with real worker
processes: async runs on the event loop and plain ones on pool threads are in flight together
(proved by runs that end only if all of them are), and per run SPEC §4 holds - current_task(),
progress and logs, a timeout, a stop, a destroy."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sessionq.common.errors import ConfigError
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for

N = 4
WAIT_S = 90  # generous: the machine may be loaded (and within pytest-timeout)


def start(workers: WorkerProcs, max_jobs: int = N, **kwargs: Any) -> None:
    workers.start(1, extra=["--import", "tests.inflight_tasks", "--max-jobs", str(max_jobs)],
                  **kwargs)  # fmt: skip


def all_ended(client: Client, ids: list[str]) -> bool:
    return all(ended(client, sid) for sid in ids)


@pytest.mark.parametrize("func", ["meet_in_threads", "meet_on_the_loop"])
def test_n_runs_are_in_flight_together_each_with_its_own_current_task(
    client: Client, workers: WorkerProcs, func: str
) -> None:
    """Each run returns only once all N are in flight in the one worker process, then says
    which run current_task() names: its own, however the runs interleave."""
    start(workers)
    ids = client.create("meet", task=f"tests.inflight_tasks:{func}", args=[func, N], replicas=N)
    wait_for(lambda: all_ended(client, ids), timeout=WAIT_S, what="the runs to meet and end")
    records = client.info(ids)
    assert [r["status"] for r in records] == ["Completed"] * N, [r.get("error") for r in records]
    assert [r["result"] for r in records] == [f"{sid}-1" for sid in ids]
    assert len({e["worker"] for sid in ids for e in client.events(sid) or []
                if e["type"] == "task.started"}) == 1  # fmt: skip


def test_async_runs_report_progress_and_logs_as_their_own(
    client: Client, workers: WorkerProcs
) -> None:
    start(workers)
    ids = client.create("meet", task="tests.inflight_tasks:meet_on_the_loop", args=["logs", N],
                        replicas=N)  # fmt: skip
    wait_for(lambda: all_ended(client, ids), timeout=WAIT_S, what="the runs to end")
    for sid in ids:
        events = client.events(sid) or []
        progress = [e for e in events if e["type"] == "task.progress"]
        assert [(e["task"], e["data"]["message"]) for e in progress] == [(f"{sid}-1", "met")]
        assert f"{sid}-1 met the others" in (client.logs(sid) or {})[sid]


def test_the_run_variables_are_in_current_task_env(client: Client, workers: WorkerProcs) -> None:
    start(workers)
    ids = client.create("env", task="tests.inflight_tasks:async_environment", replicas=2,
                        env={"X_RUN": "mine"})  # fmt: skip
    wait_for(lambda: all_ended(client, ids), timeout=WAIT_S, what="the runs to end")
    assert [r["result"]["task"] for r in client.info(ids)] == [f"{sid}-1" for sid in ids]


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
def test_a_run_past_its_timeout_fails_and_the_others_go_on(
    client: Client, workers: WorkerProcs, func: str
) -> None:
    """An async run is cancelled at its deadline; a thread run is told through should_stop.
    The runs in flight beside it are untouched."""
    start(workers)
    [slow] = client.create("slow", task=f"tests.inflight_tasks:{func}", args=[600], timeout=1)
    [beside] = client.create("beside", task=f"tests.inflight_tasks:{func}", args=[2])
    wait_for(lambda: all_ended(client, [slow, beside]), timeout=WAIT_S, what="both runs")
    [failed, done] = client.info([slow, beside])
    assert failed["status"] == "Failed" and "timeout" in failed["error"]
    assert done["status"] == "Completed" and done["result"] == 2


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
@pytest.mark.parametrize("how", ["stop", "destroy"])
def test_a_stopped_or_destroyed_session_ends_its_run_in_flight_only(
    client: Client, workers: WorkerProcs, func: str, how: str
) -> None:
    start(workers)
    [victim, other] = client.create("s", task=f"tests.inflight_tasks:{func}", args=[600],
                                    replicas=2)  # fmt: skip
    wait_for(lambda: all(r["status"] == "Running" for r in client.info([victim, other])),
             timeout=WAIT_S, what="both runs to start")  # fmt: skip
    if how == "stop":
        client.stop(victim)
        wait_for(lambda: client.info(victim)[0]["tasks"]["canceled"] == 1, timeout=WAIT_S,
                 what="the run to be canceled")  # fmt: skip
        [record] = client.info(victim)
        assert record["status"] == "Stopped" and record["tasks"]["succeeded"] == 0
    else:
        client.destroy(victim)
        wait_for(lambda: not client.info(victim), timeout=WAIT_S, what="the destroy")
    assert client.info(other)[0]["status"] == "Running"
    client.stop(other)
    wait_for(lambda: ended(client, other), timeout=WAIT_S, what="the other stop")


def test_max_jobs_comes_from_sessionq_max_jobs_and_is_checked() -> None:
    assert Settings.from_env(environ={"SESSIONQ_MAX_JOBS": "8"}).max_jobs == 8
    assert Settings.from_env(environ={}).max_jobs == 1
    with pytest.raises(ConfigError, match="max_jobs"):
        Settings.from_env(environ={"SESSIONQ_MAX_JOBS": "0"})


def test_a_bad_max_jobs_is_refused_naming_the_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "sessionq", "worker", "--max-jobs", "0"],
                          capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
    assert proc.returncode == 2 and "--max-jobs" in proc.stderr


def test_an_async_run_stopped_before_the_loop_took_it_up_ends_stopped(
    client: Client, settings: Settings
) -> None:
    """A stop that comes after a run began but before the event loop made its task (the loop
    busy meanwhile) still ends it: cancelled before its first step, a task would never enter
    its body, and the run would stay in flight until the grace period killed the process."""
    import dataclasses
    import threading

    import tests.inflight_tasks  # noqa: F401 - registers the tasks
    from sessionq.worker.current import StopReason
    from sessionq.worker.loop import SessionWorker

    ids = client.create("early", task="tests.inflight_tasks:async_sleep", args=[600], replicas=2)
    # a grace period far past the test's patience: a run that never ends fails the test
    # instead of ending the test process
    w = SessionWorker(dataclasses.replace(settings, stop_grace_s=600), max_jobs=2)
    assert w.runner is not None
    gate = threading.Event()
    w.runner._event_loop().call_soon_threadsafe(gate.wait)  # the loop busy until the gate
    worker = threading.Thread(target=w.work, daemon=True)
    worker.start()
    try:
        wait_for(lambda: len(w.in_flight()) == 2, timeout=WAIT_S, what="both runs begun")
        w.stop_now(StopReason.SHUTDOWN)  # (a second SIGTERM)
    finally:
        gate.set()
    worker.join(timeout=WAIT_S)
    assert not worker.is_alive(), "the stopped runs never ended"
    for record in client.info(ids):
        assert record["tasks"]["queued"] == 1 and record["tasks"]["succeeded"] == 0


def test_a_worker_with_runs_in_flight_counts_as_busy(client: Client, workers: WorkerProcs) -> None:
    """stats() counts a worker busy while it has runs in flight (RQ's current_job names one),
    also between its steps that claim nothing - a tester saw busy=0 with 5 runs started."""
    workers.start(1, extra=["--max-jobs", "4"])
    ids = client.create("busy", task="tests.tasks:sleeper", args=[30], replicas=3)
    wait_for(lambda: all(r["status"] == "Running" for r in client.info(ids)),
             what="three runs in flight")  # fmt: skip
    seen = [client.stats()["workers"]["busy"] for _ in range(20)]  # (steps come every 50 ms)
    assert seen == [1] * 20
    client.stop(ids)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("Stopped", "canceled"), (None, "canceled"), ("Paused", "succeeded"),
     ("Running", "succeeded")],
)  # fmt: skip
def test_a_run_that_returns_once_its_session_is_stopped_ends_canceled(
    status: str | None, outcome: str
) -> None:
    """A function told by should_stop, from its session's status, that the session is
    stopped (or gone) and returning ends canceled as the stop would have ended it - the stop
    operation can reach the worker after it returned (a stop-thread_sleep test saw it end
    succeeded). Paused: it returned by its own choice, and what it returned is kept."""
    from sessionq.worker.context import TaskContext
    from sessionq.worker.current import CurrentRun
    from sessionq.worker.prepare import Prepared, returned

    run = CurrentRun("s-1", "default", None)
    ctx = TaskContext(session_id="s", task_id="s-1", name="t", attempt=1,
                      emit=lambda *_: None, log_line=lambda *_: None, stop_flag=run,
                      session_status=lambda: status)  # fmt: skip
    p = Prepared(run=run, func="f", args=[], kwargs={}, env={}, meta={}, timeout=None, ctx=ctx)
    told = ctx.should_stop
    assert told == (status != "Running")
    assert returned(p, -1.0, 1 << 20)[0] == outcome
