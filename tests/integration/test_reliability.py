"""Faults caused for real: a worker killed mid-run, SIGTERM, SIGINT (SPEC §4)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sessionq.common.keys import Layout
from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for


def running_worker(client: Client, sid: str) -> str:
    started = [e for e in client.events(sid) or [] if e["type"] == "task.started"]
    return str(started[-1]["worker"])


def child_pid(worker_name: str) -> int:
    return int(worker_name.rsplit(".", 1)[1])


def attempts_of(client: Client, sid: str) -> list[int]:
    return [e["data"]["attempt"] for e in client.events(sid) or [] if e["type"] == "task.started"]


def ledgered_runs(client: Client, ledger: Path, task: str, *extra: Any) -> tuple[str, list[str]]:
    """A session of 80 very short runs of `task` (a ledgered one: tests.tasks), whose
    finishes a worker holds back (worker.loop FINISHES_HELD_MAX); each is given the ledger,
    whether it is the 61st (the one that ends its process), then `extra`."""
    from sessionq.common.jobhash import build_run

    sid = client.open_session(task.rsplit(":", 1)[1])
    runs = [build_run(name=f"r{i}", task=task, args=[str(ledger), i == 60, *extra])
            for i in range(80)]  # fmt: skip
    return sid, client.add_runs(sid, runs)


def test_worker_killed_mid_function_run_is_rerun(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    [sid] = client.create("victim", task="tests.tasks:sleeper", args=[1.5], retries=1)
    [other] = client.create("bystander", task="tests.tasks:add", args=[1, 2])
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    os.kill(child_pid(running_worker(client, sid)), signal.SIGKILL)
    wait_for(lambda: ended(client, sid), timeout=30, what="the run to be run again")
    [record] = client.info(sid)
    assert record["status"] == "Completed" and record["result"] == 1.5
    assert attempts_of(client, sid) == [1, 2]
    retry = [e for e in client.events(sid) or [] if e["type"] == "task.retrying"]
    assert len(retry) == 1 and "died" in retry[0]["data"]["error"]
    wait_for(lambda: ended(client, other), what="the other session")
    assert attempts_of(client, other) == [1], "every other run ran exactly once"


def test_a_run_out_of_retries_fails_with_the_reason(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    [sid] = client.create("victim", task="tests.tasks:sleeper", args=[30])
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    os.kill(child_pid(running_worker(client, sid)), signal.SIGKILL)
    wait_for(lambda: ended(client, sid), timeout=30, what="the run to be failed")
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "died" in record["error"]


def test_a_worker_killed_while_holding_finishes_charges_only_the_run_it_was_running(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    """A worker holds back the finishes of very short runs (worker.loop FINISHES_HELD_MAX).
    Killed meanwhile: the run it was running used up its attempt (no retries: failed); the
    runs that had ended, their finishes not sent, did not fail - they go back uncharged and
    run again (saying so), and succeed."""

    ledger = tmp_path / "ledger"
    sid, ids = ledgered_runs(client, ledger, "tests.tasks:ledgered")
    workers.start(1)
    wait_for(lambda: ended(client, sid), timeout=60, what="the runs, one killed, to end")
    began = Counter(ledger.read_text().split())
    assert len(began) == 80 and all(n <= 2 for n in began.values())
    status = {t["id"]: t["state"] for t in client.tasks(sid)}
    assert status.pop(ids[60]) == "failed"
    assert set(status.values()) == {"succeeded"}, "a run that ended was charged as lost"
    again = {run_id for run_id, n in began.items() if n > 1} - {ids[60]}
    if Layout.of(client.settings).count > 1:  # such a worker holds none back
        assert not again
    queued = {e["task"] for e in client.events(sid) or [] if e["type"] == "task.queued"
              and "its end unsent" in e["data"].get("reason", "")}  # fmt: skip
    assert again == queued, "a run ran again without saying why"


def test_a_lost_host_holding_finishes_charges_none_of_its_runs(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    """Its host lost (the worker and its supervisor killed together) while the worker held
    back the finishes of very short runs (worker.loop FINISHES_HELD_MAX): nobody can say which
    run it was running, so none is charged (no retries: none fails) - each goes back and runs
    again, saying why. A worker that held none (runs too slow, or partitions) had named the
    run it began: that one is charged, as for any lost worker."""
    from sessionq.common.rqcompat import rq_keys

    ledger = tmp_path / "ledger"
    sid, ids = ledgered_runs(client, ledger, "tests.tasks:ledgered", True)
    workers.start(1).wait()  # until run 60 kills its process group
    lost = running_worker(client, sid)
    holds: Any = b"0"
    if Layout.of(client.settings).count == 1:  # (a partitioned worker holds none)
        holds = client.redis.hget(rq_keys(client.settings.prefix).worker(lost), "holds")
    workers.start(1)
    wait_for(lambda: ended(client, sid), timeout=60, what="another worker to run them all")
    status = {t["id"]: t["state"] for t in client.tasks(sid)}
    began = Counter(ledger.read_text().split())
    assert len(began) == 80 and all(n <= 2 for n in began.values())
    assert status.pop(ids[60]) == ("succeeded" if holds == b"1" else "failed")
    assert set(status.values()) == {"succeeded"}
    again = {run_id for run_id, n in began.items() if n > 1}
    unsure = {e["task"] for e in client.events(sid) or [] if e["type"] == "task.queued"
              and "unrun, or it ended" in e["data"].get("reason", "")}  # fmt: skip
    assert again <= unsure | {ids[60]}, "a run ran again without saying why"
    assert (ids[60] in unsure) == (holds == b"1")


def test_a_run_that_ends_its_worker_process_is_charged_while_finishes_are_held(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    """A very short run whose body ends the process (sys.exit: no exception its run's
    boundary catches) while finishes are held back (worker.loop FINISHES_HELD_MAX): the
    worker leaves, and that run used up its attempt (no retries: failed) - it does not come
    back to end the next process too; the others succeed."""

    ledger = tmp_path / "ledger"
    sid, ids = ledgered_runs(client, ledger, "tests.tasks:ledgered_exit")
    workers.start(1)
    wait_for(lambda: ended(client, sid), timeout=60, what="the runs, one leaving, to end")
    status = {t["id"]: t["state"] for t in client.tasks(sid)}
    assert status.pop(ids[60]) == "failed"
    assert set(status.values()) == {"succeeded"}
    assert Counter(ledger.read_text().split())[ids[60]] == 1


def test_finishes_held_back_are_not_kept_behind_a_long_run(
    client: Client, workers: WorkerProcs
) -> None:
    """Very short runs' finishes are held back to go together (worker.loop
    FINISHES_HELD_MAX), but sent before a run of a function not known to be as short begins:
    their results are out while it runs."""
    from sessionq.common.jobhash import build_run

    sid = client.open_session("short-then-long")
    runs = [build_run(name=f"r{i}", task="tests.tasks:add", args=[i, 1]) for i in range(60)]
    runs.append(build_run(name="long", task="tests.tasks:until_stopped", args=[60]))
    ids = client.add_runs(sid, runs)
    workers.start(1)

    def short_ones_out_while_long_runs() -> bool:
        states = {t["id"]: t["state"] for t in client.tasks(sid)}
        return states[ids[-1]] == "started" and all(
            states[i] == "succeeded" for i in ids[:-1])  # fmt: skip

    wait_for(short_ones_out_while_long_runs, timeout=30,
             what="every short run's result while the long one runs")  # fmt: skip
    client.stop(sid)


def test_a_run_its_supervisor_kills_is_charged_not_the_finishes_held_before_it(
    client: Client, workers: WorkerProcs
) -> None:
    """A run that overran, in a process its supervisor kills (it keeps the GIL: its own watcher
    cannot act), with the finishes of short runs of the same function held back before it
    (worker.loop FINISHES_HELD_MAX): it ends failed by its deadline; they did not fail, and
    end succeeded (run again, uncharged)."""
    from sessionq.common.jobhash import build_run

    sid = client.open_session("overrun")
    runs = [build_run(name=f"r{i}", task="tests.tasks:gil_holder", args=[0]) for i in range(60)]
    runs.append(build_run(name="stuck", task="tests.tasks:gil_holder", args=[30], timeout=1))
    ids = client.add_runs(sid, runs)
    workers.start(1)
    wait_for(lambda: ended(client, sid), timeout=60, what="the runs, one killed, to end")
    states = {t["id"]: (t["state"], str(t["error"])) for t in client.tasks(sid)}
    state, error = states.pop(ids[-1])
    assert state == "failed" and "ignored its deadline" in error
    assert {state for state, _ in states.values()} == {"succeeded"}


def test_worker_killed_mid_command_takes_its_process_group_along(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time; "
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{kid.pid}}'); time.sleep(120)"
    )
    workers.start(1, allow_commands=True)
    [sid] = client.create("cmd", cmd=[sys.executable, "-c", code], retries=0)
    wait_for(lambda: pids.exists() and pids.read_text().strip(), what="the command to start")
    os.kill(child_pid(running_worker(client, sid)), signal.SIGKILL)
    wait_for(lambda: ended(client, sid), timeout=30, what="the run to be failed")

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status == "Z"

    for pid in map(int, pids.read_text().split()):
        wait_for(functools.partial(gone, pid), timeout=10, what=f"process {pid} to be gone")


def test_a_lost_host_is_noticed_by_another_worker(client: Client, workers: WorkerProcs) -> None:
    first = workers.start(1)
    # (long enough to outlast the second worker's start, ~1 s on a loaded machine)
    [sid] = client.create("victim", task="tests.tasks:sleeper", args=[5], retries=1)
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    workers.start(1)
    os.killpg(first.pid, signal.SIGKILL)  # supervisor and child: nobody left to tell
    first.wait()
    wait_for(lambda: ended(client, sid), timeout=30, what="another worker to rerun it")
    assert client.info(sid)[0]["status"] == "Completed"
    assert len({e["worker"] for e in client.events(sid) or [] if e["type"] == "task.started"}) == 2


def test_sigterm_finishes_the_current_run_and_takes_no_new_one(
    client: Client, workers: WorkerProcs
) -> None:
    ids = client.create("t", task="tests.tasks:sleeper", args=[1], replicas=3)
    proc = workers.start(1)
    wait_for(lambda: any(r["status"] == "Running" for r in client.info(ids)), what="a start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    statuses = sorted(r["status"] for r in client.info(ids))
    assert statuses == ["Completed", "Pending", "Pending"]
    assert workers.live() == 0


def test_sigint_stops_the_run_and_requeues_it(client: Client, workers: WorkerProcs) -> None:
    [sid] = client.create("t", task="tests.tasks:stubborn_sleeper", args=[600])
    proc = workers.start(1)
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the run to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0  # a 600 s run: it was stopped, not finished
    [record] = client.info(sid)
    assert record["tasks"]["queued"] == 1 and record["tasks"]["succeeded"] == 0
    requeued = [e for e in client.events(sid) or [] if e["type"] == "task.queued"][-1]
    assert requeued["data"] == {"reason": "worker shut down"}
    again = workers.start(1)
    wait_for(lambda: len(attempts_of(client, sid)) == 2, what="the run to start again")
    assert attempts_of(client, sid) == [1, 1], "the interrupted attempt was not charged"
    again.send_signal(signal.SIGINT)
    again.wait(timeout=60)


def test_sigterm_while_a_dead_worker_is_being_replaced_stops_the_supervisor(
    workers: WorkerProcs,
) -> None:
    proc = workers.start(1)
    [name] = workers.names()
    os.kill(child_pid(name), signal.SIGKILL)
    wait_for(lambda: workers.live() == 0, what="the dead worker to be recovered")
    proc.send_signal(signal.SIGTERM)  # while it backs off before starting a new process
    assert proc.wait(timeout=10) == 0
