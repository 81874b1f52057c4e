"""SPEC §3 edge cases found in review: bad input, adds racing stops, destroys and each other,
replaced and removed tasks - and the session's counters always equal to its task records."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from redis import Redis

from sessionq.common.errors import SessionNotFound, ValidationError
from sessionq.common.keys import Keys
from sessionq.common.rqcompat import rq_keys
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import TaskState
from sessionq.producer import Client, Session, SessionConfig, Task
from tests.conftest import WorkerProcs, wait_for

NOOP = "tests.tasks:noop"


def recount(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in TaskState}
    for record in session:
        counts[record["state"]] += 1
    return counts


def assert_counts_match(client: Client, session: Session) -> None:
    """The session's counters equal the recount from its task records, and the global run
    counters equal the sum over every session's."""
    assert session.progress()["tasks"] == recount(session)
    total = {s.value: 0 for s in TaskState}
    for record in client.fetch(view="all"):
        for state, n in record["tasks"].items():
            total[state] += n
    assert client.stats()["tasks"] == total


def ended(session: Session) -> bool:
    return session.progress()["status"] in ("Completed", "Failed", "Stopped")


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depends_on", 5),
        ("depends_on", ""),
        ("depends_on", [""]),
        ("at", float("nan")),
        ("at", float("inf")),
        ("at", 1e20),
        ("in_", float("inf")),
    ],
)
def test_every_bad_task_field_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        Task(NOOP, **{field: value})


@pytest.mark.parametrize(("field", "value"), [("cycle_sleep", float("inf"))])
def test_a_bad_config_field_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        SessionConfig(**{field: value})


def test_session_name_and_create_are_validated(client: Client, redis: Redis) -> None:
    with pytest.raises(ValidationError, match="name"):
        client.session("")
    with pytest.raises(TypeError, match="create"):
        client.session("fine", create="no")
    assert redis.dbsize() == 0


def test_a_failed_add_leaves_the_handle_usable(client: Client, monkeypatch: Any) -> None:
    s = client.session("after-a-failure")
    bad = Task(NOOP, name="bad")
    monkeypatch.setattr(client.scripts, "enqueue_call", _raise_codec_error)
    with pytest.raises(ValueError, match="cannot encode"):
        s.add(bad)
    monkeypatch.undo()
    assert s.id not in bad.ids  # it was not added
    good = s.add(Task(NOOP, name="good"))
    assert s.list_ids() == [good]
    again = s.add(bad)  # the same object, now added for real
    assert s.list_names() == ["good", "bad"] and again in s


def _raise_codec_error(*args: Any, **kwargs: Any) -> Any:
    from sessionq.common.errors import CodecError

    raise CodecError("cannot encode as msgpack: Integer value out of range")


# -- adds racing each other, stops and destroys -----------------------------------------------
def test_processes_opening_a_new_session_at_once_all_get_it(settings: Settings) -> None:
    def open_it(c: Client, name: str, barrier: threading.Barrier, got: list[Any]) -> None:
        barrier.wait()
        try:
            got.append(c.session(name).id)
        except SessionNotFound as exc:
            got.append(exc)

    for trial in range(5):
        clients = [Client(settings=settings) for _ in range(4)]
        barrier = threading.Barrier(len(clients))
        got: list[Any] = []
        threads = [threading.Thread(target=open_it, args=(c, f"race-{trial}", barrier, got))
                   for c in clients]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        assert len(set(got)) == 1 and isinstance(got[0], str), got


def test_add_after_destroy_is_not_found_and_leaves_nothing(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    s = client.session("short-lived")
    s.add(Task(NOOP, name="x"))
    workers.start()
    s.destroy()
    wait_for(lambda: not client.info(s.id), what="destroyed")
    with pytest.raises(SessionNotFound):
        s.add(Task(NOOP, name="y"))
    with pytest.raises(SessionNotFound):
        s.pause()
    assert redis.exists(keys.session(s.id)) == 0 and redis.exists(keys.session_tasks(s.id)) == 0
    assert sum(client.stats()["tasks"].values()) == 0


def test_add_while_a_destroy_waits_is_not_found(client: Client, redis: Redis) -> None:
    s = client.session("terminating")
    s.add(Task(NOOP, name="x"))
    assert client.destroy(s.id) == {s.id: True}  # no worker: it waits on the control queue
    with pytest.raises(SessionNotFound):
        s.add(Task(NOOP, name="y"))
    assert len(s) == 1


def test_stop_then_add_runs_the_new_task(client: Client, workers: WorkerProcs) -> None:
    s = client.session("stop-then-add")
    old = s.add(Task(NOOP, name="old"))
    s.stop()  # no worker yet: the stop waits on the control queue
    new = s.add(Task(NOOP, name="new"))
    assert s.progress()["status"] == "Running"
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert s[old]["state"] == "canceled" and s[new]["state"] == "succeeded"
    assert s.progress()["status"] == "Completed"
    assert_counts_match(client, s)


# -- replaced and removed tasks ---------------------------------------------------------------
def test_replace_leaves_the_counters_equal_to_the_records(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("replaced", config={"task_pre_exist": "replace"})
    s.add(Task(NOOP, name="job"))
    s.add(Task(NOOP, name="job"))  # replaces a queued one
    assert len(s) == 1 and s.progress()["total"] == 1
    assert_counts_match(client, s)
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    s.add(Task(NOOP, name="job"))  # replaces a succeeded one
    wait_for(lambda: ended(s), what="session end")
    assert len(s) == 1 and s.progress()["total"] == 1
    assert_counts_match(client, s)


def test_replace_of_a_running_task_is_refused(client: Client, workers: WorkerProcs) -> None:
    s = client.session("replace-running", config={"task_pre_exist": "replace"})
    first = s.add(Task("tests.tasks:sleeper", args=[0.5], name="long"))
    workers.start()
    wait_for(lambda: s[first]["state"] == "started", what="started")
    newer = Task(NOOP, name="long")
    with pytest.raises(ValidationError, match="running"):
        s.add(newer)
    assert s.id not in newer.ids and s.list_ids() == [first]
    wait_for(lambda: ended(s), what="session end")
    assert s.add(newer) != first and len(s) == 1
    wait_for(lambda: ended(s), what="session end")
    assert_counts_match(client, s)


def test_replace_twice_in_one_flush_keeps_the_last(client: Client) -> None:
    s = client.session("replace-batch", config={"task_pre_exist": "replace"})
    s.add(Task(NOOP, name="k"), flush=False)
    last = Task("tests.tasks:echo", args=[2], name="k")
    s.add(last, flush=False)
    s.flush()
    assert s.list_ids() == [last.ids[s.id]] and s.list_names() == ["k"]
    assert_counts_match(client, s)


def test_replace_in_one_flush_takes_one_run_out_of_runs_alike(client: Client) -> None:
    s = client.session("replace-alike", config={"task_pre_exist": "replace"})
    a, k, b = (Task(NOOP, name=n) for n in ("a", "k", "b"))
    for t in (a, k, b):
        s.add(t, flush=False)
    newer = Task(NOOP, name="k")
    s.add(newer, flush=False)
    s.flush()
    assert s.id not in k.ids
    assert s.list_ids() == [a.ids[s.id], b.ids[s.id], newer.ids[s.id]]
    assert s.list_names() == ["a", "b", "k"]
    assert_counts_match(client, s)


def test_a_refused_flush_of_runs_alike_gives_none_of_their_tasks_an_id(client: Client) -> None:
    s = client.session("refused-alike")
    s.add(Task(NOOP, name="taken"))
    tasks = [Task(NOOP, name=n) for n in ("x", "taken", "y")]
    for t in tasks:
        s.add(t, flush=False)
    with pytest.raises(ValidationError, match="^name: "):
        s.flush()
    assert all(s.id not in t.ids for t in tasks)
    assert s.list_names() == ["taken"]
    assert s.add(tasks[0]) != "" and s.list_names() == ["taken", "x"]


def test_removing_a_held_task_then_step_releases_the_next_one(
    client: Client, workers: WorkerProcs, settings: Settings, redis: Redis
) -> None:
    s = client.session("held-removed", config={"autoplay": False})
    a = s.add(Task(NOOP, name="a"))
    b = s.add(Task(NOOP, name="b"))
    s.remove(a)
    workers.start()
    s.step()
    wait_for(lambda: s[b]["state"] == "succeeded", what="b ran")
    assert redis.exists(rq_keys(settings.prefix).job(a)) == 0
    assert_counts_match(client, s)


# -- destroy ------------------------------------------------------------------------------------
def test_destroy_leaves_nothing_in_the_schedule_or_the_waiting_set(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    s = client.session("scheduled-then-destroyed")
    s.add(Task(NOOP, name="later", in_=3600))
    s.add(Task(NOOP, name="nightly", cron="0 3 * * *"))
    parent = s.add(Task("tests.tasks:sleeper", args=[0.3], name="parent"))
    s.add(Task(NOOP, name="child", depends_on=parent))
    workers.start()
    wait_for(lambda: s[parent]["state"] == "started", what="parent started")
    s.destroy()
    wait_for(lambda: not client.info(s.id), what="destroyed")
    assert redis.zcard(keys.schedule()) == 0
    wait_for(lambda: redis.scard(keys.waiting()) == 0, what="the waiting set swept")
    assert sum(client.stats()["tasks"].values()) == 0


def test_the_scheduler_drops_due_runs_of_a_session_destroyed_since_it_looked(
    client: Client, redis: Redis, keys: Keys
) -> None:
    from sessionq.worker.ops import destroy_session
    from sessionq.worker.schedule import Scheduler

    s = client.session("cached-then-destroyed")
    tid = s.add(Task(NOOP, name="later", in_=3600))
    scheduler = Scheduler(client.scripts, "tester")
    assert scheduler.fire_due() == 0 and scheduler._cycle(s.id) is not None  # cached
    destroy_session(client.scripts, s.id)
    assert not client.info(s.id)
    redis.zadd(keys.schedule(), {tid: 0})  # left behind, and due (as before destroy cleaned it)
    scheduler.fire_due()
    assert redis.zcard(keys.schedule()) == 0


# -- cron tasks -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["remove", "forget"])
def test_removing_a_cron_task_ends_its_schedule(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys, how: str
) -> None:
    s = client.session(f"cron-{how}")
    tid = s.add(Task(NOOP, name="tick", cron="* * * * * *"))  # every second
    other = s.add(Task(NOOP, name="other", in_=3600))
    workers.start()
    wait_for(lambda: s[tid]["state"] == "succeeded", what="the first firing")
    getattr(s, how)(tid)
    assert tid not in s and redis.zrange(keys.schedule(), 0, -1) == [other.encode()]
    assert all(r["state"] != "deferred" for r in s if r["name"] == "tick")
    s.remove(other)
    wait_for(lambda: ended(s), what="the session ends: no schedule is left")
    assert_counts_match(client, s)


def test_replacing_a_cron_task_ends_its_schedule(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    s = client.session("replace-cron", config={"task_pre_exist": "replace"})
    s.add(Task("tests.tasks:noop", name="tick", cron="* * * * * *"))
    workers.start()
    wait_for(lambda: any(r["state"] == "succeeded" for r in s), what="a firing")
    s.add(Task("tests.tasks:noop", name="tick"))  # the same name, no schedule
    assert s.wait(timeout=15) == "Completed"
    left = [m for m in redis.zrange(keys.schedule(), 0, -1) if m.decode().startswith(s.id)]
    assert left == []


def test_a_removed_task_object_can_be_added_again(client: Client) -> None:
    s = client.session("re-add")
    t = Task("tests.tasks:noop", name="again")
    first = s.add(t)
    s.remove(first)
    second = s.add(t)
    assert second != first and s.list_ids() == [second]
