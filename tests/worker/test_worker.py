"""The worker class in-process (burst mode): runs, failures, bad jobs, and what it writes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import sessionq.worker.loop
import sessionq.worker.prepare
import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common import codec
from sessionq.common.keys import Keys
from sessionq.common.rqcompat import rq_keys
from sessionq.common.scripts import FastLane
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from sessionq.worker.loop import SessionWorker
from tests.conftest import wait_for


def drain(settings: Settings, **kwargs: object) -> SessionWorker:
    w = SessionWorker(settings, **kwargs)
    w.work(burst=True)
    return w


def types_of(client: Client, sid: str) -> list[str]:
    return [e["type"] for e in client.events(sid) or []]


def test_function_result_status_and_events(client: Client, settings: Settings) -> None:
    [sid] = client.create("adder", task="tests.tasks:add", args=[2, 3])
    drain(settings)
    [record] = client.info(sid)
    assert record["status"] == "Completed"
    assert record["result"] == 5 and record["error"] is None
    assert record["progress"] == 1.0 and record["tasks"]["succeeded"] == 1
    assert types_of(client, sid) == [
        "session.created", "task.queued", "session.started", "task.started",
        "task.succeeded", "session.completed",
    ]  # fmt: skip
    seqs = [e["seq"] for e in client.events(sid) or []]
    assert seqs == list(range(1, len(seqs) + 1))


def test_progress_and_log_from_inside_a_function(client: Client, settings: Settings) -> None:
    [sid] = client.create("prog", task="tests.tasks:with_progress", kwargs={"steps": 3})
    drain(settings)
    progress = [e["data"] for e in client.events(sid) or [] if e["type"] == "task.progress"]
    assert [p["fraction"] for p in progress] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert progress[0]["message"] == "step 1"
    assert (client.logs(sid) or {})[sid] == "all steps done\n"


def test_replica_environment_reaches_functions(client: Client, settings: Settings) -> None:
    ids = client.create("env", task="tests.tasks:environment", env={"GREETING": "hi"}, replicas=2)
    drain(settings)
    results = {r["name"]: r["result"] for r in client.info(ids)}
    assert results["env-2"] == {
        "REPLICA_ID": "2",
        "REPLICA_COUNT": "2",
        "GREETING": "hi",
        "SESSIONQ_SESSION_ID": ids[1],
        "SESSIONQ_TASK_ID": f"{ids[1]}-1",
    }


def test_unregistered_function_fails_the_run_and_the_worker_goes_on(
    client: Client, settings: Settings
) -> None:
    [bad] = client.create("bad", task="os:system", args=["echo pwned"])
    [evil] = client.create("evil", task="builtins:eval", args=["1+1"])
    [good] = client.create("good", task="tests.tasks:add", args=[1, 1])
    w = drain(settings)
    by_id = {r["id"]: r for r in client.info([bad, evil, good])}
    assert by_id[bad]["status"] == "Failed"
    assert "'os:system' is not a registered @task" in by_id[bad]["error"]
    assert "'builtins:eval' is not a registered @task" in by_id[evil]["error"]
    assert by_id[good]["result"] == 2
    assert w.runs_done == 3


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("data", b"\xc1\xff\x00garbage", "undecodable"),
        ("data", b"\x93\xa1a", "undecodable"),  # truncated
        ("data", b"\x92\xa1a\xa1b", "expected [func, instance, args, kwargs]"),
        ("sq", b"\xff\xfe", "job field 'sq'"),
        ("sq", b"\x81\xa1v\x63", "unknown schema version"),
    ],
)
def test_broken_job_fields_fail_that_run_only(
    client: Client, settings: Settings, redis: Redis, field: str, value: bytes, says: str
) -> None:
    [broken] = client.create("broken", task="tests.tasks:add", args=[1, 2])
    [fine] = client.create("fine", task="tests.tasks:add", args=[3, 4])
    redis.hset(rq_keys(settings.prefix).job(f"{broken}-1"), field, value)
    drain(settings)
    by_id = {r["id"]: r for r in client.info([broken, fine])}
    assert by_id[broken]["status"] == "Failed" and says in by_id[broken]["error"]
    assert by_id[fine]["result"] == 7


def test_garbage_id_in_a_queue_is_skipped(client: Client, settings: Settings, redis: Redis) -> None:
    rq = rq_keys(settings.prefix)
    redis.rpush(rq.queue("default"), "no-such-run-1", "\xff\xfe")
    [sid] = client.create("after", task="tests.tasks:add", args=[1, 1])
    drain(settings)
    assert client.info(sid)[0]["result"] == 2


def test_exception_traceback_is_kept_and_retries_are_used(
    client: Client, settings: Settings
) -> None:
    [failed] = client.create("boom", task="tests.tasks:boom", kwargs={"message": "kaput"})
    [flaky] = client.create("flaky", task="tests.tasks:flaky", args=["m"], retries=1)
    drain(settings)
    by_id = {r["id"]: r for r in client.info([failed, flaky])}
    assert "ValueError: kaput" in by_id[failed]["error"] and "Traceback" in by_id[failed]["error"]
    assert by_id[flaky]["status"] == "Completed" and by_id[flaky]["result"] == 2
    assert "task.retrying" in types_of(client, flaky)


def test_unencodable_return_value_fails_the_run(client: Client, settings: Settings) -> None:
    [sid] = client.create("obj", task="tests.tasks:unencodable")
    drain(settings)
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "cannot encode" in record["error"]


def test_timeout_ends_a_running_function(client: Client, settings: Settings) -> None:
    [sid] = client.create("slow", task="tests.tasks:stubborn_sleeper", args=[30], timeout=0.3)
    drain(settings)
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "timeout" in record["error"]


def test_commands_need_allow_commands(client: Client, settings: Settings) -> None:
    [sid] = client.create("cmd", cmd=[sys.executable, "-c", "print(1)"])
    drain(settings)  # serves no command queue: the run waits
    assert client.info(sid)[0]["status"] == "Pending"
    drain(settings, allow_commands=True)
    assert client.info(sid)[0]["status"] == "Completed"


def test_command_output_and_exit_status(client: Client, settings: Settings) -> None:
    script = (
        "import sys; print('out 1'); print('err 1', file=sys.stderr); print('out 2'); sys.exit(3)"
    )
    [sid] = client.create("cmd", cmd=sys.executable, args=["-c", script])
    drain(settings, allow_commands=True)
    [record] = client.info(sid)
    assert record["status"] == "Failed" and record["error"] == "exit status 3"
    lines = (client.logs(sid) or {})[sid].splitlines()
    assert sorted(lines) == ["err 1", "out 1", "out 2"]
    assert lines.index("out 1") < lines.index("out 2")


def test_command_not_found(client: Client, settings: Settings) -> None:
    [sid] = client.create("nope", cmd="definitely-not-a-program-xyz")
    drain(settings, allow_commands=True)
    assert "command not found" in client.info(sid)[0]["error"]


def test_command_timeout_kills_the_process_group(client: Client, settings: Settings) -> None:
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    [sid] = client.create("hang", cmd=[sys.executable, "-c", code], timeout=0.5)
    drain(settings, allow_commands=True)
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "timeout" in record["error"]


def test_runs_claimed_by_a_call_whose_reply_was_lost_are_run(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that claimed runs was carried out, but the connection dropped before its reply
    came: the runs it took are on the worker's list, and the worker takes them up."""
    ids = client.create("lost", task="tests.tasks:add", args=[1, 2], replicas=2)
    original, lost = FastLane.receive, list[Any]()

    def receive_with_a_lost_reply(self: FastLane) -> Any:
        reply = original(self)
        if not lost:
            lost.append(reply)
            self.reset()
            raise RedisConnectionError("connection lost before the reply")
        return reply

    monkeypatch.setattr(FastLane, "receive", receive_with_a_lost_reply)
    drain(settings)
    assert lost and lost[0][0], "the lost reply had claimed a run"
    assert [r["status"] for r in client.info(ids)] == ["Completed", "Completed"]
    for sid in ids:
        assert types_of(client, sid).count("task.started") == 1, "started once"


def test_a_worker_whose_server_lost_its_scripts_loads_them_again(
    client: Client, settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server forgets every script and function between a worker's steps (a restart
    without persistence, FUNCTION FLUSH): the step meets "Function not found" (NOSCRIPT by
    EVALSHA), and the worker's own connection loads them and sends the step again."""
    ids = client.create("forgot", task="tests.tasks:add", args=[1, 2], replicas=3)
    original, sends = FastLane.send, list[int]()

    def send_after_a_flush(self: FastLane, *args: Any) -> None:
        sends.append(1)
        if len(sends) == 2:
            redis.function_flush()
            redis.script_flush()
        original(self, *args)

    monkeypatch.setattr(FastLane, "send", send_after_a_flush)
    drain(settings)
    assert len(sends) > 2
    assert [r["status"] for r in client.info(ids)] == ["Completed"] * 3


def test_ram_caps_a_commands_memory(client: Client, settings: Settings) -> None:
    hog = [sys.executable, "-c", "bytearray(500_000_000); print('allocated')"]
    [capped] = client.create("hog", cmd=hog, ram=0.05)  # 50 MB of address space
    [free] = client.create("free", cmd=[sys.executable, "-c", "bytearray(50_000_000)"])
    [huge] = client.create("huge", cmd=[sys.executable, "-c", "pass"], ram=1e12)  # > 2**62 B
    drain(settings, allow_commands=True)
    [record] = client.info(capped)
    assert record["status"] == "Failed"
    assert record["error"] == "exit status 1 (memory was capped at ram=0.05 GB)"
    assert "MemoryError" in (client.logs(capped) or {})[capped]
    assert client.info(free)[0]["status"] == "Completed", "the worker went on"
    assert client.info(huge)[0]["status"] == "Completed", "more than any address space: no cap"


def control_job(redis: Redis, settings: Settings, op_id: str, data: bytes | None) -> None:
    """Put a job straight on the control queue, as a bug or an intruder might."""
    rq = rq_keys(settings.prefix)
    if data is not None:
        redis.hset(rq.job(op_id), mapping={"data": data, "origin": "control", "status": "queued"})
    redis.rpush(rq.queue("control"), op_id)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (codec.encode(["sessionq.op:frobnicate", None, ["x"], {}]), "unknown operation"),
        (codec.encode(["sessionq.op:destroy", None, [1, 2], {}]), "bad arguments"),
        (codec.encode(["os:system", None, ["echo pwned"], {}]), "not a control operation"),
        (b"\xc1garbage", "undecodable"),
        (codec.encode(["sessionq.op:destroy"])[:-3], "undecodable"),
        (None, "missing"),
    ],
)
def test_a_bad_control_job_is_logged_and_dropped(
    client: Client, settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture,
    data: bytes | None, says: str,
) -> None:  # fmt: skip
    [sid] = client.create("bystander", task="tests.tasks:add", args=[1, 2])
    before = client.events(sid)
    control_job(redis, settings, "op-injected", data)
    w = drain(settings)
    dropped = [r for r in caplog.records if "control operation op-injected dropped" in r.message]
    assert len(dropped) == 1 and says in dropped[0].message
    assert w.runs_done == 1 and client.info(sid)[0]["status"] == "Completed"
    assert (client.events(sid) or [])[: len(before or [])] == before
    rq = rq_keys(settings.prefix)
    assert not redis.exists(rq.job("op-injected")) and not redis.llen(rq.queue("control"))


@pytest.mark.parametrize(
    "record",
    [
        b"\xc1garbage",
        codec.encode({"v": 1, "id": "x", "name": "n"})[:-2],  # truncated
        "other version",
    ],
)
def test_a_broken_session_record_touches_no_other_session(
    client: Client, settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture,
    record: bytes | str,
) -> None:  # fmt: skip
    [victim, other] = client.create("rec", task="tests.tasks:add", args=[1, 2], replicas=2)
    keys = Keys(settings.prefix)
    if record == "other version":
        wire = codec.decode(redis.hget(keys.sessions(), victim))
        record = codec.encode({**wire, "v": 2})
    redis.hset(keys.sessions(), victim, record)
    # the producer: the record is left out and logged; the rest works
    assert [r["id"] for r in client.info([victim, other])] == [other]
    assert client.destroy([victim]) == {victim: False}
    running, pending = keys.idx_status("Running"), keys.idx_status("Pending")
    redis.smove(pending, running, victim)  # stats reads the records of running sessions
    assert client.stats()["sessions"]["Running"] == 1
    redis.smove(running, pending, victim)
    # the worker: a destroy of it reaches the control queue anyway, and is dropped
    assert client.scripts.request(victim, "destroy", [victim])
    drain(settings)
    assert any(f"session {victim}" in r.message for r in caplog.records if r.levelname == "ERROR")
    assert client.info(other)[0]["status"] == "Completed"
    assert redis.hget(keys.sessions(), victim) == record, "left as it was, for a human to see"


def test_a_runs_environment_does_not_leak_into_the_next_run_or_the_process(
    client: Client, settings: Settings
) -> None:
    import os

    [first] = client.create("env-a", task="tests.tasks:environment", env={"GREETING": "hi"})
    [second] = client.create("env-b", task="tests.tasks:environment")
    drain(settings)
    results = {r["id"]: r["result"] for r in client.info([first, second])}
    assert results[first]["GREETING"] == "hi"
    assert results[first]["SESSIONQ_TASK_ID"] == f"{first}-1"
    assert results[second]["GREETING"] == ""  # set for the run before, not for this one
    assert results[second]["SESSIONQ_TASK_ID"] == f"{second}-1"
    assert "GREETING" not in os.environ and "SESSIONQ_TASK_ID" not in os.environ


def test_a_burst_worker_runs_what_its_own_last_finish_released(
    client: Client, settings: Settings
) -> None:
    """The step that finishes a parent also claims, before the parent's waiting runs are
    judged (and queued): the worker must look again instead of leaving them behind."""
    session = client.session("chain")
    parent = Task("tests.tasks:noop", name="parent")
    session.add(Task("tests.tasks:noop", name="child", depends_on=parent))
    drain(settings)
    assert session.progress()["status"] == "Completed"
    assert [t["state"] for t in session] == ["succeeded", "succeeded"]


STOPPED_WHILE_SET_UP = [
    # (what runs, how it is stopped, the outcome asked of it)
    ({"task": "tests.tasks:stubborn_sleeper", "args": [30]}, "stop", "canceled"),
    ({"cmd": [sys.executable, "-c", "import time; time.sleep(30)"]}, "stop", "canceled"),
    ({"task": "tests.tasks:stubborn_sleeper", "args": [30]}, "sigint", "queued"),
    ({"cmd": [sys.executable, "-c", "import time; time.sleep(30)"]}, "sigint", "queued"),
]


@pytest.mark.parametrize(("spec", "how", "outcome"), STOPPED_WHILE_SET_UP,
                         ids=["function-stop", "command-stop", "function-sigint",
                              "command-sigint"])  # fmt: skip
def test_a_stop_that_comes_while_the_run_is_set_up_is_not_lost(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch,
    spec: dict[str, Any], how: str, outcome: str,
) -> None:  # fmt: skip
    """A stop (or SIGINT) that lands after the run became current but before its function or
    process started (its module being imported, say) ends it; before, the request was lost
    and the run ran its 30 s."""

    [sid] = client.create("late-stop", **spec)
    w = SessionWorker(settings, allow_commands=True)
    real = sessionq.worker.prepare.parse_meta  # type: ignore[attr-defined]  # its import, patched

    def parse_meta_then_stop(raw: bytes) -> dict[str, Any]:
        if how == "stop":
            w.stop_current("stopped", f"{sid}-1")  # as a stop-job from the watcher thread
        else:
            w.stop_now("shutdown")  # as the SIGINT handler
        return real(raw)

    monkeypatch.setattr(sessionq.worker.prepare, "parse_meta", parse_meta_then_stop)
    w.work(burst=True)
    [record] = client.info(sid)
    assert record["tasks"][outcome] == 1 and record["tasks"]["succeeded"] == 0
    if outcome == "queued":
        requeued = [e for e in client.events(sid) or [] if e["type"] == "task.queued"][-1]
        assert requeued["data"] == {"reason": "worker shut down"}


def test_sigint_as_the_run_is_taken_up_gives_it_back_unrun(
    client: Client, settings: Settings
) -> None:
    """SIGINT between the run leaving `ready` and becoming current (the handler finds no run
    to stop): the run does not begin, it is given back uncharged."""
    [sid] = client.create("sigint", task="tests.tasks:stubborn_sleeper", args=[30])
    w = SessionWorker(settings)
    real_reset = w.interrupter.reset

    def sigint_then_reset() -> None:
        w.stop_now("shutdown")  # as the SIGINT handler, on the main thread
        real_reset()

    w.interrupter.reset = sigint_then_reset  # type: ignore[method-assign]  # the SIGINT, timed
    w.work(burst=True)
    [record] = client.info(sid)
    assert record["tasks"]["queued"] == 1 and record["tasks"]["succeeded"] == 0
    requeued = [e for e in client.events(sid) or [] if e["type"] == "task.queued"][-1]
    assert requeued["data"] == {"reason": "worker shut down"}


def test_a_stopped_command_gets_one_term_then_its_grace(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    """A second TERM often means "quit now, skip the cleanup": a stop sends one, then waits
    the grace period before KILL. The command notes each TERM and takes 1 s to clean up."""
    marks = tmp_path / "marks"
    code = (
        "import signal, sys, time\n"
        f"marks = open({str(marks)!r}, 'a', buffering=1)\n"
        "def on_term(signum, frame):\n"
        "    marks.write('TERM\\n')\n"
        "    time.sleep(1)\n"
        "    marks.write('cleaned up\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "marks.write('ready\\n')\n"
        "time.sleep(30)\n"
    )
    [sid] = client.create("term", cmd=[sys.executable, "-c", code])
    w = SessionWorker(settings, allow_commands=True)

    def stop_when_ready() -> None:  # a stop-job, from another thread, as the watcher's
        wait_for(lambda: marks.exists() and "ready" in marks.read_text(), timeout=30,
                 what="the command to be ready")  # fmt: skip
        w.stop_current("stopped", f"{sid}-1")

    stopper = threading.Thread(target=stop_when_ready)
    stopper.start()
    w.work(burst=True)
    stopper.join()
    assert marks.read_text().splitlines() == ["ready", "TERM", "cleaned up"]
    [record] = client.info(sid)
    assert record["tasks"]["canceled"] == 1
