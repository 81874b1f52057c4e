"""SPEC §3 with real workers: the collection (gc3libs), the config (redengine), schedules and
conditions (redengine), workflows (DPF)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis

from sessionq.common.errors import ObjectNotFound, SessionNotFound, TaskNotFound, ValidationError
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import Client, Session, SessionConfig, Task, Workflow
from tests.conftest import ROOT, WorkerProcs, home, wait_for

NOOP = "tests.tasks:noop"


def states(session: Session) -> dict[str, str]:
    return {r["name"]: r["state"] for r in session}


def ended(session: Session) -> bool:
    return session.progress()["status"] in ("Completed", "Failed", "Stopped")


def events_of(client: Client, sid: str, etype: str) -> list[dict[str, Any]]:
    return [e for e in client.events(sid) or [] if e["type"] == etype]


# -- the collection (gc3libs) ----------------------------------------------------------------
def test_add_is_idempotent_for_the_same_task_object_and_for_the_same_key(client: Client) -> None:
    s = client.session("collection")
    t = Task(NOOP, name="one")
    assert s.add(t) == s.add(t)
    k1 = s.add(Task(NOOP, name="keyed", key="k-1"))
    k2 = s.add(Task(NOOP, name="keyed-again", key="k-1"))
    assert k1 == k2
    assert len(s) == 2
    assert s.list_names() == ["one", "keyed"]


def test_list_len_iteration_and_indexing_give_the_task_records(client: Client) -> None:
    s = client.session("records")
    ids = [s.add(Task(NOOP, name=f"t{i}")) for i in range(3)]
    assert s.list_ids() == ids
    assert len(s) == 3
    records = list(s)
    assert [r["id"] for r in records] == ids
    assert set(records[0]) >= {"id", "name", "state", "attempts", "result", "error", "worker",
                               "started_at", "finished_at"}  # fmt: skip
    assert s[ids[1]]["name"] == "t1" and s[ids[1]]["state"] == "queued"
    with pytest.raises(TaskNotFound):
        s["nope-1"]
    assert ids[0] in s and "nope-1" not in s


def test_remove_deletes_the_record_forget_keeps_it(
    client: Client, workers: WorkerProcs, redis: Redis, settings: Settings
) -> None:
    s = client.session("drop")
    a, b = s.add(Task(NOOP, name="a")), s.add(Task(NOOP, name="b"))
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    job = client.scripts.rq.job  # (its session's partition's, with several)
    s.forget(a)
    assert a not in s and redis.exists(job(a)) == 1
    s.remove(b)
    assert b not in s and redis.exists(job(b)) == 0
    assert len(s) == 0 and s.progress()["total"] == 0
    with pytest.raises(TaskNotFound):
        s.remove(b)


def test_remove_of_a_queued_task_cancels_it(client: Client) -> None:
    s = client.session("cancel-on-remove")
    tid = s.add(Task(NOOP, name="later"))
    s.forget(tid)
    assert client.tasks(s.id) == []
    assert [e["task"] for e in events_of(client, s.id, "task.canceled")] == [tid]


def test_flush_false_batches_many_changes_into_one_round_trip(
    client: Client, redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = client.session("batched")
    s.add(Task(NOOP, name="warm"))  # ids reserved, scripts loaded
    tasks = [Task(NOOP, name=f"b{i}") for i in range(10)]
    staged = [s.add(t, flush=False) for t in tasks[:5]]
    oid = s.save({"answer": 42}, flush=False)
    other = Client(settings=settings).session("batched")
    assert len(other) == 1  # nothing written yet
    staged += [s.add(t, flush=False) for t in tasks[5:]]
    sent: list[int] = []
    conn_type = home(client.redis, client.keys.session(s.id)).connection_pool.connection_class
    original = conn_type.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(conn_type, "send_packed_command", counting)
    s.flush()
    monkeypatch.undo()
    assert len(sent) == 1
    assert len(other) == 11
    assert other.list_ids()[1:] == staged
    assert other.load(oid) == {"answer": 42}


def test_reopening_by_name_from_another_process_gives_the_same_session(
    client: Client, settings: Settings
) -> None:
    s = client.session("shared")
    tid = s.add(Task(NOOP, name="only"))
    oid = s.save([1, "two", {"three": 3.0}])
    code = (
        "import json; from sessionq.common.settings import Settings;"
        "from sessionq.producer import Client;"
        f"c = Client(settings=Settings.from_env({settings.url!r}, environ={{}}, user='tester', "
        f"partitions={settings.partitions}));"
        "s = c.session('shared', create=False);"
        f"print(json.dumps([s.id, s.list_ids(), s.list_names(), s.load({oid!r})]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert json.loads(out) == [s.id, [tid], ["only"], [1, "two", {"three": 3.0}]]


def test_no_name_is_the_callers_default_session_and_create_false_is_not_found(
    client: Client, settings: Settings
) -> None:
    mine = client.session()
    assert mine.name == "default" and client.session().id == mine.id
    other_user = Client(settings=replace(settings, user="someone"))
    assert other_user.session().id != mine.id
    with pytest.raises(SessionNotFound):
        client.session("never-made", create=False)


def test_save_refuses_what_msgpack_cannot_hold(client: Client) -> None:
    s = client.session("objects")
    with pytest.raises(TypeError, match="obj"):
        s.save(object())
    with pytest.raises(ObjectNotFound, match="no such object: no-such-object") as caught:
        s.load("no-such-object")
    assert caught.value.object_id == "no-such-object"
    assert not isinstance(caught.value, TaskNotFound)


def test_timestamps_and_destroy(client: Client, workers: WorkerProcs) -> None:
    s = client.session("stamped")
    assert s.created_at is not None and s.finished_at is None
    s.add(Task(NOOP, name="x"))
    workers.start()
    wait_for(lambda: s.finished_at is not None, what="finished_at")
    s.set_start_timestamp(1_700_000_000)
    s.set_end_timestamp(1_700_000_060)
    assert s.started_at == "2023-11-14T22:13:20.000Z"
    assert s.finished_at == "2023-11-14T22:14:20.000Z"
    s.destroy()
    wait_for(lambda: not client.info(s.id), what="destroyed")
    assert client.session("stamped").id != s.id  # the name is free again


# -- the config (redengine) ------------------------------------------------------------------
def test_config_is_validated_and_stored(client: Client) -> None:
    with pytest.raises(ValidationError, match="task_pre_exist"):
        SessionConfig(task_pre_exist="explode")
    with pytest.raises(ValidationError, match="config.bogus"):
        client.session("cfg", config={"bogus": 1})
    with pytest.raises(TypeError, match="autoplay"):
        SessionConfig(autoplay="yes")
    client.session("cfg", config={"cycle_sleep": 0.5, "task_pre_exist": "rename"})
    assert client.session("cfg").config == SessionConfig(cycle_sleep=0.5, task_pre_exist="rename")


@pytest.mark.parametrize("policy", ["raise", "replace", "ignore", "rename"])
def test_task_pre_exist_policies(client: Client, policy: str) -> None:
    s = client.session(f"pre-{policy}", config={"task_pre_exist": policy})
    first = s.add(Task(NOOP, name="job"))
    second_task = Task("tests.tasks:echo", args=[2], name="job")
    if policy == "raise":
        with pytest.raises(ValidationError, match="job"):
            s.add(second_task)
        assert s.list_ids() == [first]
        return
    second = s.add(second_task)
    if policy == "ignore":
        assert second == first and len(s) == 1
    elif policy == "replace":
        assert second != first and s.list_ids() == [second] and s.list_names() == ["job"]
        assert [e["task"] for e in events_of(client, s.id, "task.canceled")] == [first]
    else:
        assert s.list_names() == ["job", "job-1"]


def test_use_instance_naming_names_unnamed_tasks_by_their_id(client: Client) -> None:
    plain = client.session("plain-names")
    plain.add(Task(NOOP))
    assert plain.list_names() == ["noop"]
    s = client.session("instance-names", config={"use_instance_naming": True})
    tid = s.add(Task(NOOP))
    assert s.list_names() == [tid]


@pytest.mark.parametrize("silence", [False, True])
def test_silence_task_prerun(client: Client, workers: WorkerProcs, silence: bool) -> None:
    s = client.session(f"prerun-{silence}", config={"silence_task_prerun": silence,
                                                     "autoplay": False})  # fmt: skip
    s.add(Task("tests.tasks:not_registered", name="bad"))
    for i in range(3):
        s.add(Task("tests.tasks:sleeper", args=[0.2], name=f"ok{i}"))
    workers.start()
    s.step()  # exactly the bad one runs first
    wait_for(lambda: states(s)["bad"] == "failed", what="bad task failed")
    if not silence:  # a worker carries out the stop it asked for (the control queue)
        wait_for(lambda: [states(s)[f"ok{i}"] for i in range(3)] == ["canceled"] * 3,
                 what="the stop to cancel the rest")  # fmt: skip
    # (refused when the failure has ended the session already: nothing is left to play)
    client.play(s.id)
    wait_for(lambda: ended(s), what="session end")
    st = states(s)
    assert "not a registered @task" in (s[s.list_ids()[0]]["error"] or "")
    if silence:
        assert [st[f"ok{i}"] for i in range(3)] == ["succeeded"] * 3
    else:
        assert [st[f"ok{i}"] for i in range(3)] == ["canceled"] * 3
    assert s.progress()["status"] == "Failed"


@pytest.mark.parametrize("silence", [False, True])
def test_silence_cond_check(client: Client, silence: bool) -> None:
    s = client.session(f"cond-{silence}", config={"silence_cond_check": silence})
    # an id that names no task is refused when added, silenced or not (SPEC §9); a parent
    # that goes away later is judged by silence_cond_check (tests/integration/
    # test_session_ends.py, a parent whose session is destroyed)
    with pytest.raises(ValidationError, match="depends_on"):
        s.add(Task(NOOP, name="orphan", depends_on="nosuchsession-7"))
    assert len(s) == 0


def test_force_status_from_logs_recounts_from_the_task_records(
    client: Client, redis: Redis, keys: Keys
) -> None:
    counters = client.session("counters")
    forced = client.session("forced", config={"force_status_from_logs": True})
    for s in (counters, forced):
        s.add(Task(NOOP, name="one"))
        redis.hset(keys.session(s.id), "queued", 7)  # counters gone wrong
    assert counters.progress()["tasks"]["queued"] == 7
    assert forced.progress()["tasks"]["queued"] == 1 and forced.progress()["total"] == 1


def test_cycle_sleep_spaces_a_sessions_scheduler_cycles(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("cycles", config={"cycle_sleep": 1.5})
    tid = s.add(Task(NOOP, name="soon", in_=0))
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    created = events_of(client, s.id, "session.created")[0]["ts"]
    started = [e for e in events_of(client, s.id, "task.started") if e["task"] == tid][0]["ts"]
    assert started >= created + 1.5  # not before the session's first cycle


def test_autoplay_false_holds_added_tasks_until_play(client: Client, workers: WorkerProcs) -> None:
    s = client.session("manual", config={"autoplay": False})
    tid = s.add(Task(NOOP, name="waits"))
    workers.start()
    assert s.progress()["status"] == "Paused" and s[tid]["state"] == "held"
    s.run(block=True, timeout=15)
    assert s[tid]["state"] == "succeeded"


# -- schedules and conditions (redengine) -----------------------------------------------------
def test_a_scheduled_task_runs_once_with_three_workers(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("scheduled")
    tid = s.add(Task(NOOP, name="later", in_=0.5))
    assert s[tid]["state"] == "deferred" and s[tid]["due_at"] is not None
    for _ in range(3):
        workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert [e["task"] for e in events_of(client, s.id, "task.started")] == [tid]
    assert s[tid]["state"] == "succeeded" and s[tid]["attempts"] == 1


def test_at_in_the_past_runs_at_once(client: Client, workers: WorkerProcs) -> None:
    s = client.session("overdue")
    tid = s.add(Task(NOOP, name="late", at="2001-01-01T00:00:00Z"))
    assert s[tid]["due_at"] == "2001-01-01T00:00:00.000Z"
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert s[tid]["state"] == "succeeded"


def test_a_cron_task_fires_repeatedly_and_keeps_the_session_running(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("cron")
    s.add(Task(NOOP, name="tick", cron="* * * * * *"))  # every second (croniter's seconds field)
    workers.start(2)
    wait_for(lambda: len(events_of(client, s.id, "task.succeeded")) >= 2, what="two firings")
    assert s.progress()["status"] == "Running"
    assert set(s.list_names()) == {"tick"} and len(s) >= 3  # two fired runs and the next one
    s.stop()
    wait_for(lambda: s.progress()["status"] == "Stopped" and s.progress()["tasks"]["deferred"]
             == 0, what="stopped")  # fmt: skip


@pytest.mark.parametrize(
    ("parent", "run_if", "expected"),
    [
        ("tests.tasks:noop", "succeeded", "succeeded"),
        ("tests.tasks:boom", "succeeded", "canceled"),
        ("tests.tasks:boom", "failed", "succeeded"),
        ("tests.tasks:noop", "failed", "canceled"),
        ("tests.tasks:boom", "finished", "succeeded"),
    ],
)
def test_depends_on_with_run_if(
    client: Client, workers: WorkerProcs, parent: str, run_if: str, expected: str
) -> None:
    s = client.session(f"cond-{parent.rpartition(':')[2]}-{run_if}")
    p = Task(parent, name="parent")
    child = s.add(Task(NOOP, name="child", depends_on=p, run_if=run_if))
    assert s[child]["state"] == "deferred" and s[child]["depends_on"] == [p.ids[s.id]]
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert s[child]["state"] == expected
    if expected == "canceled":
        reason = events_of(client, s.id, "task.canceled")[0]["data"]["reason"]
        assert p.ids[s.id] in reason and run_if in reason


def test_a_canceled_task_cancels_its_own_dependents(client: Client, workers: WorkerProcs) -> None:
    s = client.session("cascade")
    a = Task("tests.tasks:boom", name="a")
    b = Task(NOOP, name="b", depends_on=a)
    c = Task(NOOP, name="c", depends_on=b)
    s.add(c)
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert states(s) == {"a": "failed", "b": "canceled", "c": "canceled"}
    assert s.progress()["status"] == "Failed"


def test_schedule_arguments_are_validated(client: Client) -> None:
    with pytest.raises(ValidationError, match="cron"):
        Task(NOOP, cron="every tuesday")
    with pytest.raises(ValidationError, match="in_"):
        Task(NOOP, in_=-1)
    with pytest.raises(ValidationError, match="at"):
        Task(NOOP, at="yesterday")
    with pytest.raises(ValidationError):
        Task(NOOP, in_=1, cron="* * * * *")
    with pytest.raises(ValidationError, match="run_if"):
        Task(NOOP, run_if="sometimes")


# -- workflows (DPF) -------------------------------------------------------------------------
def test_a_diamond_workflow_runs_its_branches_in_parallel_on_different_workers(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("diamond")
    wf = Workflow()
    top = wf.add(Task("tests.tasks:sleeper", args=[0.3], name="top"))
    left = wf.add(Task("tests.tasks:sleeper", args=[1.0], name="left", depends_on=top))
    right = wf.add(Task("tests.tasks:sleeper", args=[1.0], name="right", depends_on=top))
    wf.add(Task("tests.tasks:sleeper", args=[0.1], name="bottom", depends_on=[left, right]))
    ids = s.add_workflow(wf, "diamond")
    assert len(ids) == 4 and s.workflow_ids("diamond") == ids
    workers.start(2)
    wait_for(lambda: ended(s), timeout=30, what="session end")
    rec = {r["name"]: r for r in s}
    assert {r["state"] for r in rec.values()} == {"succeeded"}
    assert rec["left"]["worker"] != rec["right"]["worker"]
    assert rec["left"]["started_at"] < rec["right"]["finished_at"]
    assert rec["right"]["started_at"] < rec["left"]["finished_at"]  # overlapping: in parallel
    # after both (the same millisecond is after: the step that finishes the last of them
    # claims and starts bottom under one clock reading)
    assert rec["bottom"]["started_at"] >= max(rec["left"]["finished_at"],
                                              rec["right"]["finished_at"])  # fmt: skip
    s.flush_workflows()
    assert s.workflow_ids("diamond") == []


def test_add_operator_adds_a_task_and_all_its_ancestors(client: Client) -> None:
    s = client.session("operator")
    a = Task(NOOP, name="a")
    b = Task(NOOP, name="b", depends_on=a)
    c = Task(NOOP, name="c", depends_on=b)
    Task(NOOP, name="unrelated", depends_on=a)
    s.add_operator(c, "chain")
    assert s.list_names() == ["a", "b", "c"]


def test_a_cycle_is_refused_before_anything_is_written(client: Client) -> None:
    s = client.session("cyclic")
    a = Task(NOOP, name="a")
    b = Task(NOOP, name="b", depends_on=a)
    a.depends_on.append(b)
    with pytest.raises(ValidationError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        s.add_workflow(Workflow([a, b]), "loop")
    with pytest.raises(ValueError, match="cycle"):
        s.add(b)
    assert len(s) == 0
