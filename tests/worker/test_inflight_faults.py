"""Faults caused for real to a `--max-jobs N` worker process with N runs in flight: SIGKILL
(every run ends once; a run begun again is a recorded retry, never a live run run twice),
SIGTERM warm and cold, and a thread run that ignores its deadline (the escalation)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for

N = 4
WAIT_S = 90  # generous: the machine may be loaded (and within pytest-timeout)


def start(workers: WorkerProcs, max_jobs: int = N, **kwargs: Any) -> Any:
    return workers.start(1, extra=["--import", "tests.inflight_tasks", "--max-jobs",
                                   str(max_jobs)], **kwargs)  # fmt: skip


def events_of(client: Client, sid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in client.events(sid) or [] if e["type"] == kind]


def running(client: Client, ids: list[str]) -> int:
    return sum(r["status"] == "Running" for r in client.info(ids))


def cold_signal(proc: Any) -> bool:
    """Send SIGTERM (again); whether the process has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return False
    return True


def beginnings(ledger: Path) -> list[tuple[str, int]]:
    if not ledger.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in ledger.read_text().splitlines()]


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
def test_a_killed_worker_s_runs_in_flight_end_once_each(
    client: Client, workers: WorkerProcs, tmp_path: Path, func: str
) -> None:
    """SIGKILL the worker process with N runs in flight and more waiting: its supervisor gives
    the N back as retries (recover.lua charges the first N started runs) and a fresh process
    runs everything. Each run ends exactly once; each beginning has its own attempt number,
    and every beginning after the first is a recorded retry."""
    ledger = tmp_path / "ledger"
    start(workers)
    ids = client.create("victim", task=f"tests.inflight_tasks:{func}", args=[3, str(ledger)],
                        replicas=N + 2, retries=1)  # fmt: skip
    wait_for(lambda: len(beginnings(ledger)) >= N, timeout=WAIT_S, what=f"{N} runs to begin")
    [worker] = {e["worker"] for sid in ids for e in events_of(client, sid, "task.started")}
    os.kill(int(worker.rsplit(".", 1)[1]), signal.SIGKILL)
    wait_for(lambda: all(ended(client, sid) for sid in ids), timeout=WAIT_S,
             what="every run to end")  # fmt: skip
    assert [r["status"] for r in client.info(ids)] == ["Completed"] * (N + 2)
    began = beginnings(ledger)
    assert len(set(began)) == len(began), "no attempt began twice"
    per_run = Counter(run for run, _ in began)
    assert sum(n > 1 for n in per_run.values()) >= 1, "the killed runs began again"
    for sid in ids:
        run = f"{sid}-1"
        assert sorted(a for r, a in began if r == run) == list(range(1, per_run[run] + 1))
        assert len(events_of(client, sid, "task.succeeded")) == 1
        assert len(events_of(client, sid, "task.retrying")) == per_run[run] - 1


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
def test_sigterm_finishes_the_runs_in_flight_and_claims_no_more(
    client: Client, workers: WorkerProcs, func: str
) -> None:
    ids = client.create("warm", task=f"tests.inflight_tasks:{func}", args=[2], replicas=N + 2)
    proc = start(workers)
    wait_for(lambda: running(client, ids) == N, timeout=WAIT_S, what=f"{N} runs in flight")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT_S) == 0
    statuses = Counter(r["status"] for r in client.info(ids))
    assert statuses == {"Completed": N, "Pending": 2}
    assert workers.live() == 0


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
def test_a_second_sigterm_stops_the_runs_in_flight_and_requeues_them(
    client: Client, workers: WorkerProcs, func: str
) -> None:
    ids = client.create("cold", task=f"tests.inflight_tasks:{func}", args=[600], replicas=N)
    proc = start(workers)
    wait_for(lambda: running(client, ids) == N, timeout=WAIT_S, what=f"{N} runs in flight")
    # (two signals sent at once are one pending signal: the second is sent again until the
    # process exits - which, with 600 s runs, only a cold stop makes it do)
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: cold_signal(proc), timeout=WAIT_S, what="the worker to exit")
    assert proc.returncode == 0
    for record in client.info(ids):
        assert record["tasks"]["queued"] == 1 and record["tasks"]["succeeded"] == 0
    for sid in ids:
        assert events_of(client, sid, "task.queued")[-1]["data"] == {"reason": "worker shut down"}


def test_a_thread_run_that_ignores_its_deadline_ends_its_process(
    client: Client, workers: WorkerProcs
) -> None:
    """A plain function on a pool thread cannot be interrupted: told through should_stop at
    its deadline, it does not listen; a grace period later the worker records it failed, gives
    back the run beside it unrun and ends; its supervisor starts a fresh process, which runs
    the one given back."""
    start(workers)
    [deaf] = client.create("deaf", task="tests.inflight_tasks:deaf_sleep", args=[600], timeout=1)
    [beside] = client.create("beside", task="tests.inflight_tasks:thread_sleep", args=[3])
    wait_for(lambda: all(ended(client, sid) for sid in (deaf, beside)), timeout=WAIT_S,
             what="both runs to end")  # fmt: skip
    [failed, done] = client.info([deaf, beside])
    assert failed["status"] == "Failed" and "ignored its deadline" in failed["error"]
    assert done["status"] == "Completed" and done["result"] == 3
    workers_seen = {e["worker"] for e in events_of(client, beside, "task.started")}
    assert len(workers_seen) == 2, "given back, it ran again in the fresh process"


def test_runs_claimed_ahead_go_back_while_the_slots_stay_busy(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    """After a short run, a worker claims a few runs ahead of its slots; when the runs in
    its slots then outlast that, the runs in hand go back uncharged (not begun, no retry)
    and another worker takes them: each run begins exactly once."""
    ledger = tmp_path / "ledger"
    first = start(workers, max_jobs=2)
    [quick] = client.create("quick", task="tests.inflight_tasks:async_sleep", args=[0])
    wait_for(lambda: ended(client, quick), timeout=WAIT_S, what="the quick run to end")
    ids = client.create("long", task="tests.inflight_tasks:async_sleep", args=[600, str(ledger)],
                        replicas=N + 2)  # fmt: skip
    wait_for(lambda: len(beginnings(ledger)) == 2, timeout=WAIT_S, what="2 runs to begin")

    def held_back() -> list[str]:
        return [sid for sid in ids if any(
            e["data"] == {"reason": "held back: the worker's slots are busy"}
            for e in events_of(client, sid, "task.queued"))]  # fmt: skip

    wait_for(lambda: len(held_back()) == N, timeout=WAIT_S, what=f"{N} runs given back")
    start(workers, max_jobs=N)
    wait_for(lambda: len(beginnings(ledger)) == N + 2, timeout=WAIT_S, what="every run begun")
    began = beginnings(ledger)
    assert sorted(a for _, a in began) == [1] * (N + 2), "each began once, as attempt 1"
    assert len({run for run, _ in began}) == N + 2
    assert first.poll() is None
    for sid in ids:
        assert events_of(client, sid, "task.retrying") == []
