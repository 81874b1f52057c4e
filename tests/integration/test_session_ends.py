"""SPEC §9 "Sessions always end" (issue 15, defects 1 and 4): a session whose every task has
ended - by any path, before or after starting - ends Completed or Failed with its terminal
event, and wait(), run(block=True) and listen() on it return; an unknown `depends_on` id is
refused when added."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from click.testing import CliRunner

from sessionq.common.errors import ValidationError
from sessionq.common.settings import Settings
from sessionq.producer import Client, Session, Task, TaskFailed
from sessionq.producer.cli import cli
from tests.conftest import WorkerProcs, wait_for

NOOP = "tests.tasks:noop"
BOOM = "tests.tasks:boom"
END_EVENT = {"Completed": "session.completed", "Failed": "session.failed"}


def types(client: Client, sid: str) -> list[str]:
    return [e["type"] for e in client.events(sid) or []]


def state(session: Session, tid: str) -> str:
    return str(session[tid]["state"])


def assert_ended(client: Client, session: Session, status: str, *, after: int = 0) -> None:
    """`session` ended `status`: wait() says so, its last event is the terminal one, and a
    listener from `after` returns with that event (not by its idle timeout)."""
    assert session.wait(timeout=30) == status
    assert types(client, session.id)[-1] == END_EVENT[status]
    heard: list[dict[str, Any]] = []
    for event in client.listen(session.id, after=after, timeout=30):
        heard.append(event)
    assert heard and heard[-1]["type"] == END_EVENT[status]
    assert session.wait(timeout=0) == status


def failed_parent(client: Client, workers: WorkerProcs, name: str) -> tuple[Session, str]:
    """A session whose one task failed (and which has ended Failed)."""
    s = client.session(name)
    pid = s.add(Task(BOOM, name="parent"))
    if not workers.procs:
        workers.start()
    assert s.wait(timeout=30) == "Failed"
    assert state(s, pid) == "failed"
    return s, pid


# -- a parent that fails while the child waits ------------------------------------------------
def test_child_of_a_parent_failing_in_the_same_session(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("same")
    a = Task(BOOM, name="a")
    b = Task(NOOP, name="b", depends_on=a)
    c = Task(NOOP, name="c", depends_on=b)
    s.add(a)
    s.add(b)
    s.add(c)
    workers.start()
    with pytest.raises(TaskFailed):
        s.run(block=True, timeout=30)
    assert_ended(client, s, "Failed")
    assert [state(s, t) for t in s.list_ids()] == ["failed", "canceled", "canceled"]


def test_only_task_waits_on_a_parent_failing_in_another_session(
    client: Client, workers: WorkerProcs
) -> None:
    parents = client.session("parents")
    pid = parents.add(Task("tests.tasks:sleeper", args=[0.5], name="slow"))
    doomed = parents.add(Task(BOOM, name="doomed", depends_on=pid))
    child_session = client.session("children")
    cid = child_session.add(Task(NOOP, name="child", depends_on=doomed))
    assert state(child_session, cid) == "deferred"
    workers.start()
    assert_ended(client, parents, "Failed")
    # its only task is canceled (its condition can never hold): nothing failed in it
    assert_ended(client, child_session, "Completed")
    assert state(child_session, cid) == "canceled"
    assert types(client, child_session.id)[-2:] == ["task.canceled", "session.completed"]
    child_session.run(block=True, timeout=30)  # returns


# -- a parent that had failed already when the child is added ---------------------------------
def test_only_task_canceled_at_add_time_by_a_parent_failed_in_another_session(
    client: Client, workers: WorkerProcs
) -> None:
    _, pid = failed_parent(client, workers, "earlier")
    s = client.session("orphaned")
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    assert state(s, tid) == "canceled"
    assert_ended(client, s, "Completed")
    assert types(client, s.id)[-3:] == ["task.queued", "task.canceled", "session.completed"]
    s.run(block=True, timeout=30)


def test_task_canceled_at_add_time_in_the_ended_session_of_its_failed_parent(
    client: Client, workers: WorkerProcs
) -> None:
    s, pid = failed_parent(client, workers, "again")
    seq = len(client.events(s.id) or [])
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    assert state(s, tid) == "canceled"
    assert_ended(client, s, "Failed", after=seq)
    assert types(client, s.id)[seq:] == [
        "session.resumed", "task.queued", "task.canceled", "session.failed"
    ]  # fmt: skip


def test_run_if_failed_child_of_a_failed_parent_runs_and_the_session_ends(
    client: Client, workers: WorkerProcs
) -> None:
    _, pid = failed_parent(client, workers, "cause")
    s = client.session("handler")
    tid = s.add(Task(NOOP, name="on-failure", depends_on=pid, run_if="failed"))
    assert_ended(client, s, "Completed")
    assert state(s, tid) == "succeeded"


def test_parent_failed_by_recovery_of_its_lost_worker_ends_both_sessions(
    client: Client, workers: WorkerProcs
) -> None:
    parents = client.session("lost-parent")
    pid = parents.add(Task("tests.tasks:sleeper", args=[30], name="victim"))
    s = client.session("lost-child")
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    workers.start()
    wait_for(lambda: state(parents, pid) == "started", what="the parent started")
    worker = str(parents[pid]["worker"])
    os.kill(int(worker.rsplit(".", 1)[1]), signal.SIGKILL)  # the worker process, not its supervisor
    assert_ended(client, parents, "Failed")
    assert "died" in str(parents[pid]["error"])
    assert_ended(client, s, "Completed")
    assert state(s, tid) == "canceled"


# -- a parent canceled, or gone -----------------------------------------------------------------
def test_only_task_waits_on_a_parent_canceled_by_a_stop_of_its_session(
    client: Client, workers: WorkerProcs
) -> None:
    parents = client.session("stopped-parents")
    pid = parents.add(Task(NOOP, name="later", in_=3600))
    s = client.session("stopped-children")
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    workers.start()
    parents.stop()
    wait_for(lambda: state(parents, pid) == "canceled", what="the parent canceled")
    assert parents.wait(timeout=30) == "Stopped"
    assert_ended(client, s, "Completed")
    assert state(s, tid) == "canceled"


def test_only_task_waits_on_a_parent_removed_from_its_session(
    client: Client, workers: WorkerProcs
) -> None:
    parents = client.session("removed-parents")
    pid = parents.add(Task(NOOP, name="later", in_=3600))
    s = client.session("removed-children")
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    workers.start()
    parents.remove(pid)
    # its parent is gone: the check fails, and so does the task (silence_cond_check is off)
    assert_ended(client, s, "Failed")
    assert state(s, tid) == "failed"
    assert "no such task" in str(s[tid]["error"])


@pytest.mark.parametrize("silence", [False, True])
def test_only_task_waits_on_a_parent_whose_session_is_destroyed(
    client: Client, workers: WorkerProcs, silence: bool
) -> None:
    parents = client.session(f"destroyed-parents-{silence}")
    pid = parents.add(Task(NOOP, name="later", in_=3600))
    s = client.session(f"destroyed-children-{silence}", config={"silence_cond_check": silence})
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    workers.start()
    parents.destroy()
    if silence:
        assert_ended(client, s, "Completed")
        assert state(s, tid) == "canceled"
        assert "condition not met" in str(s[tid]["error"])
    else:
        assert_ended(client, s, "Failed")
        assert state(s, tid) == "failed"


def test_a_held_run_removed_then_play_ends_the_session(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("held")
    s.pause()
    tid = s.add(Task(NOOP, name="held"))
    assert state(s, tid) == "held"
    s.remove(tid)
    workers.start()
    s.play()
    assert_ended(client, s, "Completed")


def test_a_paused_session_whose_only_task_is_canceled_at_add_ends_on_play(
    client: Client, workers: WorkerProcs
) -> None:
    _, pid = failed_parent(client, workers, "paused-cause")
    s = client.session("paused")
    s.pause()
    tid = s.add(Task(NOOP, name="child", depends_on=pid))
    assert state(s, tid) == "canceled"
    assert s.wait(timeout=0) == "Paused"
    s.play()
    assert_ended(client, s, "Completed")


# -- restart and stop ---------------------------------------------------------------------------
@pytest.mark.parametrize("failed_only", [True, False])
def test_restart_of_a_failed_chain_ends_again(
    client: Client, workers: WorkerProcs, failed_only: bool
) -> None:
    s = client.session(f"restart-{failed_only}")
    a = Task(BOOM, name="a")
    b = Task(NOOP, name="b", depends_on=a)
    s.add(a)
    s.add(b)
    workers.start()
    assert_ended(client, s, "Failed")
    seq = len(client.events(s.id) or [])
    s.restart(failed_only=failed_only)
    wait_for(lambda: "session.resumed" in types(client, s.id)[seq:], what="the restart")
    assert_ended(client, s, "Failed", after=seq)
    assert [state(s, t) for t in s.list_ids()] == ["failed", "canceled"]


def test_stop_of_an_ended_session_then_restart_ends_again(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("stop-restart")
    a = Task(BOOM, name="a")
    s.add(a)
    s.add(Task(NOOP, name="b", depends_on=a))
    workers.start()
    assert_ended(client, s, "Failed")
    seq = len(client.events(s.id) or [])
    s.stop()  # nothing waits or runs: it stays as it ended
    assert s.wait(timeout=30) == "Failed"
    assert types(client, s.id)[seq:] == []
    s.restart(failed_only=True)
    wait_for(lambda: "session.resumed" in types(client, s.id)[seq:], what="the restart")
    assert_ended(client, s, "Failed", after=seq)


def test_stop_of_a_running_chain_then_restart_ends_completed(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("chain-stop")
    a = Task("tests.tasks:sleeper", args=[1.5], name="a")
    s.add(a)
    b = s.add(Task(NOOP, name="b", depends_on=a))
    workers.start()
    wait_for(lambda: state(s, a.ids[s.id]) == "started", what="a started")
    s.stop()
    assert s.wait(timeout=30) == "Stopped"
    wait_for(lambda: state(s, a.ids[s.id]) == "canceled", what="a stopped")
    # the stop operation cancels b (a worker carries it out: maybe after a was interrupted)
    wait_for(lambda: state(s, b) == "canceled", what="b canceled")
    # session.stopped comes when the stop is accepted, before the cancellations it makes
    assert "session.stopped" in types(client, s.id)
    seq = len(client.events(s.id) or [])
    s.restart()
    wait_for(lambda: "session.resumed" in types(client, s.id)[seq:], what="the restart")
    assert_ended(client, s, "Completed", after=seq)
    assert [state(s, t) for t in s.list_ids()] == ["succeeded", "succeeded"]


# -- depends_on an id that names no task --------------------------------------------------------
@pytest.mark.parametrize("parent", ["nope-1", "nosuchsession-7"])
def test_an_unknown_parent_is_refused_before_anything_is_written(
    client: Client, parent: str
) -> None:
    s = client.session("unknown-parent")
    before = types(client, s.id)
    with pytest.raises(ValidationError, match="depends_on") as info:
        s.add(Task(NOOP, name="orphan", depends_on=parent))
    assert parent in str(info.value)
    assert len(s) == 0 and types(client, s.id) == before
    assert s.wait(timeout=0) == "Pending"


def test_an_unknown_parent_is_refused_at_flush_with_nothing_written(client: Client) -> None:
    s = client.session("unknown-parent-batch")
    ok = Task(NOOP, name="fine")
    s.add(ok, flush=False)
    with pytest.raises(ValidationError, match="depends_on"):
        s.add(Task(NOOP, name="orphan", depends_on=[ok, "nope-3"]), flush=False)
        s.flush()
    # the batch was refused whole: nothing of it was written, and it can be sent again
    s.flush()
    assert s.list_names() == [] and len(client.events(s.id) or []) == 1  # session.created
    s.add(ok)
    assert s.list_names() == ["fine"]


def test_a_parent_of_another_session_and_one_staged_in_the_same_batch_are_accepted(
    client: Client, workers: WorkerProcs
) -> None:
    other = client.session("known")
    pid = other.add(Task(NOOP, name="p"))
    s = client.session("known-batch")
    first = Task(NOOP, name="first")
    s.add(first, flush=False)
    s.add(Task(NOOP, name="second", depends_on=[first, pid]), flush=False)
    s.flush()
    workers.start()
    assert_ended(client, s, "Completed")
    assert [state(s, t) for t in s.list_ids()] == ["succeeded", "succeeded"]


def test_cli_add_with_an_unknown_parent_exits_2_naming_depends_on(
    settings: Settings, client: Client
) -> None:
    base = ["--url", settings.url, "--prefix", settings.prefix, "--user", settings.user]
    result = CliRunner().invoke(
        cli, [*base, "add", "cli-parent", "--task", NOOP, "--depends-on", "nope-1"]
    )
    assert result.exit_code == 2, result.output
    assert "depends_on" in result.output and "nope-1" in result.output
    assert "Traceback" not in result.output
