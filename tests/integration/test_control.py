"""SPEC §3 control (narupatools), shared state, progress and event logging (DPF), and the CLI
commands on persistent sessions - with real worker processes."""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sessionq.common.errors import TaskFailed
from sessionq.producer import Client, Session, Task
from sessionq.producer.cli import cli
from tests.conftest import WorkerProcs, wait_for

SLEEP = "tests.tasks:sleeper"


def counts(session: Session) -> dict[str, int]:
    tasks: dict[str, int] = session.progress()["tasks"]
    return tasks


def started_ids(client: Client, sid: str) -> list[str]:
    return [e["task"] for e in client.events(sid) or [] if e["type"] == "task.started"]


def test_pause_step_play_with_two_busy_workers(client: Client, workers: WorkerProcs) -> None:
    s = client.session("narupa")
    ids = [s.add(Task(SLEEP, args=[0.4], name=f"r{i}")) for i in range(12)]
    workers.start(2)
    wait_for(lambda: counts(s)["started"] == 2, what="two runs started")
    s.pause()
    before = set(started_ids(client, s.id))  # what had started when pause returned
    # the runs under way finish; every other run is parked, none starts
    wait_for(lambda: counts(s)["started"] == 0 and counts(s)["queued"] == 0, what="all parked")
    assert set(started_ids(client, s.id)) == before
    held = [r["id"] for r in s if r["state"] == "held"]
    assert len(held) == 12 - len(before) and held == sorted(held, key=ids.index)
    s.step()
    wait_for(lambda: counts(s)["succeeded"] == len(before) + 1, what="the stepped run")
    assert started_ids(client, s.id)[len(before) :] == [held[0]]  # exactly the oldest held
    assert s.progress()["status"] == "Paused" and counts(s)["held"] == len(held) - 1
    s.play()
    assert s.wait(timeout=30) == "Completed"
    started = started_ids(client, s.id)
    assert sorted(started) == sorted(ids)  # every run started exactly once


def test_running_functions_see_should_stop_on_pause(client: Client, workers: WorkerProcs) -> None:
    s = client.session("polite")
    tid = s.add(Task("tests.tasks:until_stopped", name="loop"))
    workers.start()
    wait_for(lambda: s[tid]["state"] == "started", what="started")
    s.pause()
    wait_for(lambda: s[tid]["state"] == "succeeded", what="the run ended")
    assert s[tid]["result"] == "saw should_stop"


def test_step_with_nothing_held_yet_lets_exactly_one_run_start(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("credit", config={"autoplay": False})
    s.pause()
    workers.start()
    first = s.add(Task("tests.tasks:noop", name="a"))
    s.add(Task("tests.tasks:noop", name="b"))
    s.step()
    wait_for(lambda: s[first]["state"] == "succeeded", what="one run")
    assert counts(s)["succeeded"] == 1 and counts(s)["held"] == 1


def test_stop_cancels_what_waits_and_stops_what_runs(client: Client, workers: WorkerProcs) -> None:
    s = client.session("halt")
    running = s.add(Task("tests.tasks:stubborn_sleeper", args=[30], name="long"))
    waiting = [s.add(Task("tests.tasks:noop", name=f"w{i}", depends_on=running))
               for i in range(3)]  # fmt: skip
    later = s.add(Task("tests.tasks:noop", name="later", in_=60))
    workers.start()
    wait_for(lambda: s[running]["state"] == "started", what="started")
    s.stop()
    assert s.wait(timeout=20) == "Stopped"
    wait_for(lambda: s[running]["state"] == "canceled", what="the run stopped")
    # the worker carries out the stop from the control queue once its run has stopped
    wait_for(lambda: {s[t]["state"] for t in [*waiting, later]} == {"canceled"},
             what="the waiting runs canceled")  # fmt: skip
    assert counts(s)["deferred"] == 0 and counts(s)["started"] == 0


def test_restart_failed_only_runs_just_the_failed_tasks_again(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("again")
    good = s.add(Task("tests.tasks:noop", name="good"))
    bad = s.add(Task("tests.tasks:boom", name="bad"))
    after = s.add(Task("tests.tasks:noop", name="after", depends_on=bad))
    workers.start()
    assert s.wait(timeout=15) == "Failed"
    assert s[after]["state"] == "canceled"
    s.restart(failed_only=True)
    wait_for(lambda: s[bad]["attempts"] == 2 and s.progress()["status"] == "Failed",
             what="the failed task ran again")  # fmt: skip
    assert s[good]["attempts"] == 1
    s.restart()
    wait_for(lambda: s[good]["attempts"] == 2 and s.progress()["status"] == "Failed",
             what="everything ran again")  # fmt: skip


def test_health_check_and_run_block_raise_task_failed_with_the_remote_traceback(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("sick", config={"autoplay": False})
    tid = s.add(Task("tests.tasks:boom", args=["kaput"], name="bad"))
    s.health_check()  # nothing failed yet
    workers.start()
    with pytest.raises(TaskFailed) as failed:
        s.run(block=True, timeout=15)
    assert failed.value.task_id == tid and "ValueError: kaput" in failed.value.error
    assert "Traceback" in failed.value.error
    with pytest.raises(TaskFailed, match="kaput"):
        s.start_loop(interval_s=0.05)


def test_health_check_carries_a_commands_exit_status(client: Client, workers: WorkerProcs) -> None:
    s = client.session("exit-status")
    s.add(Task(cmd=["sh", "-c", "exit 3"], name="three"))
    workers.start(allow_commands=True)
    s.wait(timeout=15)
    with pytest.raises(TaskFailed, match="exit status 3|exited with 3|status 3"):
        s.health_check()


def test_shared_state_between_producer_and_tasks(client: Client, workers: WorkerProcs) -> None:
    s = client.session("shared-state")
    s.state["temperature"] = 300
    reader = s.add(Task("tests.tasks:get_state", args=["temperature"], name="reader"))
    writer = s.add(Task("tests.tasks:set_state", args=["pressure", [1, 2]], name="writer",
                        depends_on=reader))  # fmt: skip
    workers.start()
    assert s.wait(timeout=15) == "Completed"
    assert s[reader]["result"] == 300
    assert s.state["pressure"] == [1, 2] and dict(s.state) == {
        "pressure": [1, 2],
        "temperature": 300,
    }
    changes = [e for e in client.events(s.id) or [] if e["type"] == "state.changed"]
    assert [(e["task"], e["data"]["key"], e["data"]["value"]) for e in changes] == [
        (None, "temperature", 300),
        (writer, "pressure", [1, 2]),
    ]
    del s.state["temperature"]
    assert "temperature" not in s.state


def test_progress_wait_and_listen_to_progress(client: Client, workers: WorkerProcs) -> None:
    s = client.session("progress")
    for i in range(4):
        s.add(Task("tests.tasks:with_progress", kwargs={"steps": 2}, name=f"p{i}"))
    assert s.progress()["fraction"] == 0.0 and s.progress()["total"] == 4
    workers.start()
    out = io.StringIO()
    s.listen_to_progress(out=out)  # returns when the session ends
    assert out.getvalue().rstrip().endswith("4/4 done, 0 failed, Completed")
    assert s.wait() == "Completed"
    assert s.progress() == {"status": "Completed", "total": 4, "done": 4, "fraction": 1.0,
                            "tasks": {"queued": 0, "deferred": 0, "held": 0, "started": 0,
                                      "succeeded": 4, "failed": 0, "canceled": 0}}  # fmt: skip
    s.add_progress_system()


def _says(path: Path, text: str) -> bool:
    return text in path.read_text()


def test_file_logger_verbosity_levels_and_rpc_log(
    client: Client, workers: WorkerProcs, tmp_path: Path
) -> None:
    with client.session("logged") as s:
        for level in (0, 1, 2):
            s.handle_events_with_file_logger(str(tmp_path / f"v{level}.log"), level)
        s.start_emitting_rpc_log()
        s.add(Task("tests.tasks:with_progress", kwargs={"steps": 2}, name="p"))
        s.pause()  # (an ended session refuses a pause: paused while it has a run to hold)
        workers.start()
        wait_for(lambda: "op.pause" in (tmp_path / "v1.log").read_text(), what="op.pause")
        s.play()
        assert s.wait(timeout=15) == "Completed"
        # (each logger follows the events on its own: every one has written them all)
        for log_file in (tmp_path / f"v{level}.log" for level in (0, 1, 2)):
            wait_for(partial(_says, log_file, "session.completed"), what=log_file.name)
    text = {level: (tmp_path / f"v{level}.log").read_text() for level in (0, 1, 2)}
    assert "session.started" in text[0] and "task." not in text[0] and "op." not in text[0]
    assert "task.succeeded" in text[1] and "op.add" in text[1] and "task.progress" not in text[1]
    assert "task.progress" in text[2] and "task.log" in text[2] and "op.pause" in text[2]


def test_cli_add_control_and_info_tasks(client: Client, workers: WorkerProcs) -> None:
    runner = CliRunner()
    base = ["--url", client.settings.url, "--user", client.user]

    def run(*args: str) -> Any:
        result = runner.invoke(cli, [*base, *args], catch_exceptions=False,
                               standalone_mode=False)  # fmt: skip
        return result

    added = run("add", "cli-session", "--task", "tests.tasks:echo", "--args", "hi", "--name",
                "echo", "--json")  # fmt: skip
    tid = json.loads(added.stdout)["task"]
    sid = tid.rpartition("-")[0]
    assert run("pause", sid).output.strip() == f"{sid} accepted"
    second = run("add", sid, "--cmd", "true", "--name", "second").output.strip()
    assert second.startswith(f"{sid}-") and second != tid
    workers.start(allow_commands=True)
    # the worker parks the run queued before the pause; then both are held, in add order
    wait_for(lambda: client.info(sid)[0]["tasks"]["held"] == 2, what="both runs held")
    assert run("step", sid).output.strip() == f"{sid} accepted"
    wait_for(lambda: client.tasks(sid)[0]["state"] == "succeeded", what="stepped run")
    assert run("play", sid).exit_code == 0
    wait_for(lambda: client.info(sid)[0]["status"] == "Completed", what="completed")
    info = json.loads(run("info", sid, "--tasks", "--json").output)
    assert [(t["name"], t["state"]) for t in info[0]["task_records"]] == [
        ("echo", "succeeded"),
        ("second", "succeeded"),
    ]
    assert info[0]["task_records"][0]["result"] == "hi"
    text = run("info", sid, "--tasks").output
    assert f"{tid}" in text and "succeeded" in text
    assert run("restart", sid, "--failed-only").exit_code == 0
    assert run("stop", sid).output.strip() == f"{sid} accepted"
    refused = runner.invoke(cli, [*base, "pause", "nosuchsession"])
    assert refused.exit_code == 1 and "no such session" in refused.output
    bad = runner.invoke(cli, [*base, "add", sid, "--task", "tests.tasks:echo", "--cron", "nope"])
    assert bad.exit_code == 2 and "cron" in bad.output


def test_step_passes_a_run_queued_before_the_pause_ahead_of_one_added_since(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("step-order")
    early = [s.add(Task("tests.tasks:noop", name=f"early{i}")) for i in range(3)]
    s.pause()
    late = s.add(Task("tests.tasks:noop", name="late"))  # held at once; the early ones queued
    s.step()
    workers.start()
    wait_for(lambda: s[early[0]]["state"] == "succeeded", what="the oldest run")
    wait_for(lambda: counts(s)["held"] == 3, what="the rest parked")
    assert started_ids(client, s.id) == [early[0]]
    s.step()
    wait_for(lambda: s[early[1]]["state"] == "succeeded", what="the next oldest")
    assert started_ids(client, s.id) == early[:2] and s[late]["state"] == "held"


def test_restart_gives_back_retries_and_rejudges_runs_canceled_by_the_failure(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("restart-retries")
    bad = s.add(Task("tests.tasks:boom", name="bad", retries=1))
    child = s.add(Task("tests.tasks:noop", name="child", depends_on=bad, run_if="failed"))
    other = s.add(Task("tests.tasks:noop", name="other", depends_on=bad))
    workers.start()
    assert s.wait(timeout=15) == "Failed"
    assert s[bad]["attempts"] == 2 and s[other]["state"] == "canceled"
    s.restart(failed_only=True)
    wait_for(lambda: s[bad]["attempts"] == 4 and s.progress()["status"] == "Failed",
             what="two more attempts (the retry given back)")  # fmt: skip
    assert s[child]["state"] == "succeeded" and s[child]["attempts"] == 1  # not failed: not rerun
    assert s[other]["state"] == "canceled"  # judged again: its parent failed again
