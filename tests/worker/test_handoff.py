"""Runs handed to a worker that waits idle: an enqueue starts the run for it in the same call
(enqueue.lua `hand`), the worker takes it from its inbox. What must hold: the run is started
once, for a live waiting worker only, never ahead of runs queued before it, and a run handed
but never taken goes back unrun and uncharged - whether its worker leaves or is lost."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator

import pytest
from redis import Redis

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.jobhash import build_run
from sessionq.common.keys import Keys
from sessionq.common.rqcompat import rq_keys
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker import task
from sessionq.worker.loop import SessionWorker
from sessionq.worker.ops import recover_worker
from sessionq.worker.watch import Watcher
from tests.conftest import WorkerProcs, ended, wait_for

ADD = "tests.tasks:add"
RAN: list[str] = []


@task
def count_me(tag: str) -> str:
    RAN.append(tag)
    return tag


def job(redis: Redis, settings: Settings, run_id: str) -> dict[str, str]:
    raw = redis.hgetall(rq_keys(settings.prefix).job(run_id))
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


def in_rq_queue_sets(redis: Redis, settings: Settings, name: str) -> list[str]:
    """The queues whose RQ set of workers (rq info's per-queue view) lists worker `name`."""
    rq = rq_keys(settings.prefix)
    return [
        q for q in ("control", "default") if redis.sismember(rq.queue_workers(q), rq.worker(name))
    ]


def started_by(client: Client, sid: str) -> list[str | None]:
    """The worker of each task.started event of a session, in order."""
    return [e["worker"] for e in client.events(sid) or [] if e["type"] == "task.started"]


@pytest.fixture
def waiting(settings: Settings) -> Iterator[list[SessionWorker]]:
    """In-process workers made to wait idle as a worker loop does: registered, heartbeating,
    and listed by a claim that found nothing. Each leaves at the end."""
    made: list[SessionWorker] = []
    yield made
    for w in made:
        if w._watcher is not None and w._watcher.is_alive():
            w._leave()


def make_waiting(made: list[SessionWorker], settings: Settings, **kwargs: object) -> SessionWorker:
    w = SessionWorker(settings, **kwargs)
    w.register()
    w._watcher = Watcher(w)
    w._watcher.start()
    made.append(w)
    assert not w._claim([]), "nothing to claim yet"
    return w


def test_a_run_created_while_a_worker_waits_is_started_for_it_by_the_create(
    client: Client, settings: Settings, redis: Redis, workers: WorkerProcs
) -> None:
    workers.start()
    [name] = workers.names()
    idle = Keys(settings.prefix).idle_workers()
    wait_for(lambda: redis.sismember(idle, name), what="the worker to wait idle")
    [sid] = client.create("handed", task=ADD, args=[2, 3])
    run = job(redis, settings, f"{sid}-1")
    assert run["state"] in ("started", "succeeded"), "started by the create call itself"
    assert run["worker_name"] == name
    assert redis.llen(rq_keys(settings.prefix).queue("default")) == 0, "never queued"
    wait_for(lambda: ended(client, sid), what="the run to end")
    assert client.info(sid)[0]["status"] == "Completed"
    assert started_by(client, sid) == [name], "started once, as that worker's"
    assert job(redis, settings, f"{sid}-1")["attempts"] == "1"


def test_a_worker_that_leaves_gives_back_a_handed_run_it_did_not_take_uncharged(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    w = make_waiting(waiting, settings)
    keys = Keys(settings.prefix)
    [sid] = client.create("handed", task=ADD, args=[1, 1])  # retries=0: a charge would fail it
    run_id = f"{sid}-1"
    assert job(redis, settings, run_id)["worker_name"] == w.name
    assert redis.llen(keys.worker_inbox(w.name)) == 1
    w._leave()
    run = job(redis, settings, run_id)
    assert run["state"] == "queued" and run["attempts"] == "0", "given back uncharged"
    assert not redis.sismember(keys.idle_workers(), w.name)
    assert not redis.exists(keys.worker_inbox(w.name), keys.worker_runs(w.name))
    assert redis.zscore(keys.workers(), w.name) is None, "unregistered"
    assert not in_rq_queue_sets(redis, settings, w.name)
    SessionWorker(settings).work(burst=True)
    assert client.info(sid)[0]["status"] == "Completed"
    assert job(redis, settings, run_id)["attempts"] == "1"


@pytest.mark.parametrize("max_jobs", [1, 2])
def test_a_handed_run_stopped_before_its_worker_took_it_from_the_inbox_never_runs(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker],
    max_jobs: int,
) -> None:  # fmt: skip
    """A stop of a run handed to this worker (its holder, so stopped here: ops._stop_started)
    that comes while the run still waits in the worker's inbox - the step that carried the
    stop was read first - is kept for the run: it ends canceled when taken, never run."""
    w = make_waiting(waiting, settings, max_jobs=max_jobs)
    [sid] = client.create("handed", task="tests.worker.test_handoff:count_me", args=["late"])
    run_id = f"{sid}-1"
    assert redis.llen(Keys(settings.prefix).worker_inbox(w.name)) == 1
    w.stop_held("session stopped", run_id)  # as the stop operation's ops.stop_session
    while w._turn(burst=True):  # takes the handed run from the inbox
        pass
    assert "late" not in RAN
    [record] = client.info(sid)
    assert record["tasks"]["canceled"] == 1 and record["tasks"]["succeeded"] == 0
    assert not w.cancel_ids, "nothing kept once the run ended"


@task
def fail_me(tag: str) -> str:
    RAN.append(tag)
    raise RuntimeError(tag)


def test_a_late_stop_of_a_run_that_ended_here_does_not_cancel_its_restart(
    client: Client, settings: Settings, waiting: list[SessionWorker]
) -> None:
    """RQ's stop-job (a producer's stop sends one too) that comes after the run ended here
    names no run of ours: it is not kept, or it would cancel the same id's next attempt."""
    w = make_waiting(waiting, settings)
    [sid] = client.create("late", task="tests.worker.test_handoff:fail_me", args=["again"])
    while w._turn(burst=True):
        pass
    assert RAN.count("again") == 1
    w.stop_current("stopped", f"{sid}-1")  # as the watcher does for RQ's stop-job
    assert client.restart(sid)[sid]
    while w._turn(burst=True):
        pass
    assert RAN.count("again") == 2, "the restarted run ran"
    assert client.info(sid)[0]["tasks"]["failed"] == 1


def test_a_lost_workers_handed_run_it_never_took_goes_back_uncharged(
    client: Client, settings: Settings, redis: Redis, workers: WorkerProcs
) -> None:
    """The worker process is frozen while it waits (its heartbeat still fresh for the
    producer below), handed a run, then killed: its supervisor recovers it."""
    workers.start()
    [name] = workers.names()
    keys = Keys(settings.prefix)
    wait_for(lambda: redis.sismember(keys.idle_workers(), name), what="the worker to wait idle")
    pid = int(name.rsplit(".", 1)[1])
    os.kill(pid, signal.SIGSTOP)
    # this producer allows a heartbeat a minute late: the frozen worker still looks alive
    patient = Client(settings=dataclasses.replace(settings, heartbeat_interval_s=30,
                                                  heartbeat_ttl_s=100))  # fmt: skip
    try:
        [sid] = patient.create("handed", task=ADD, args=[4, 4])  # retries=0
    finally:
        patient.close()
        os.kill(pid, signal.SIGKILL)
    assert job(redis, settings, f"{sid}-1")["worker_name"] == name, "handed to the frozen one"
    wait_for(lambda: ended(client, sid), what="the run to end on the next worker")
    assert client.info(sid)[0]["status"] == "Completed", "not failed: the attempt was not charged"
    events = client.events(sid) or []
    given_back = [e for e in events if e["type"] == "task.queued" and e["data"].get("reason")]
    assert [e["data"]["reason"] for e in given_back] == ["given back unrun by a lost worker"]
    # it never took the run: no start of it shows (task.started comes as a worker takes it)
    starts = started_by(client, sid)
    assert len(starts) == 1 and starts[0] != name
    assert job(redis, settings, f"{sid}-1")["attempts"] == "1"


def test_a_lost_worker_s_handed_run_is_recovered_by_the_reaper_too(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """recover_worker is what the reaper runs for a worker whose heartbeat stopped."""
    w = make_waiting(waiting, settings)
    [sid] = client.create("handed", task=ADD, args=[1, 2])
    w._watcher.stop()  # it is lost: no heartbeat, nothing taken
    waiting.clear()
    recover_worker(w.scripts, w.name, "lost")
    w.scripts.close()
    w.redis.close()
    keys = Keys(settings.prefix)
    assert job(redis, settings, f"{sid}-1")["attempts"] == "0"
    assert not redis.exists(keys.worker_inbox(w.name))
    assert not redis.sismember(keys.idle_workers(), w.name)
    assert not in_rq_queue_sets(redis, settings, w.name), "unregistered from RQ's as RQ does"
    SessionWorker(settings).work(burst=True)
    assert client.info(sid)[0]["status"] == "Completed"


def test_a_worker_recovered_after_its_rq_hash_expired_leaves_rq_s_queue_sets_too(
    settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """Lost for longer than its RQ worker hash lives (heartbeat TTL + 60 s): the reaper no
    longer reads its queues there, and takes it out of every queue's set RQ knows of."""
    w = make_waiting(waiting, settings)
    w._watcher.stop()
    waiting.clear()
    assert in_rq_queue_sets(redis, settings, w.name) == ["control", "default"]
    redis.delete(rq_keys(settings.prefix).worker(w.name))  # (expired)
    assert recover_worker(w.scripts, w.name, "lost")
    w.scripts.close()
    w.redis.close()
    assert not in_rq_queue_sets(redis, settings, w.name)


def test_a_worker_handed_a_run_is_handed_no_other_until_it_waits_again(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """A worker waits on each of its queues: once a run of one is handed to it, a run of the
    other is queued for any worker, not handed to this busy one."""
    w = make_waiting(waiting, settings, queues=["a", "b"])
    [first] = client.create("one", task=ADD, args=[1, 2], queue="a")
    [second] = client.create("two", task=ADD, args=[1, 2], queue="b")
    assert job(redis, settings, f"{first}-1")["state"] == "started"
    assert job(redis, settings, f"{second}-1")["state"] == "queued"
    assert redis.lrange(rq_keys(settings.prefix).queue("b"), 0, -1) == [f"{second}-1".encode()]
    while w._turn(burst=True):  # the handed run, then the queued one
        pass
    assert [r["status"] for r in client.info([first, second])] == ["Completed", "Completed"]
    assert started_by(client, first) == [w.name] and started_by(client, second) == [w.name]


def test_runs_queued_before_go_first_no_run_overtakes_them(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """A worker waits; runs already queued (it was woken, has not claimed yet) go first: a new
    run joins the queue behind them instead of being handed past them."""
    w = make_waiting(waiting, settings)
    queue = rq_keys(settings.prefix).queue("default")
    redis.rpush(queue, "someone-else-1")  # queued by a call that found no one waiting
    [sid] = client.create("later", task=ADD, args=[1, 2])
    assert job(redis, settings, f"{sid}-1")["state"] == "queued"
    assert redis.lrange(queue, 0, -1) == [b"someone-else-1", f"{sid}-1".encode()]
    assert redis.sismember(Keys(settings.prefix).idle_workers(), w.name), "still waiting"


def test_a_bad_inbox_entry_does_not_kill_the_worker_and_its_run_still_runs_once(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    w = make_waiting(waiting, settings)
    [sid] = client.create("handed", task=ADD, args=[20, 22])
    inbox = Keys(settings.prefix).worker_inbox(w.name)
    redis.lset(inbox, 0, b"\xc1 not msgpack")
    assert w._turn(burst=False), "the worker takes its inbox"
    assert w.lost_connection, "it lost track of a run: it takes it up from its runs list"
    w._resend()
    while w._turn(burst=True):
        pass
    [record] = client.info(sid)
    assert record["status"] == "Completed" and record["result"] == 42
    assert started_by(client, sid) == [w.name], "started once"


def test_a_burst_worker_does_not_wait_idle(
    client: Client, settings: Settings, redis: Redis
) -> None:
    w = SessionWorker(settings)
    w.work(burst=True)
    keys = Keys(settings.prefix)
    assert not redis.sismember(keys.idle_workers(), w.name)
    assert redis.lrange(keys.idle("default"), 0, -1) == []
    [sid] = client.create("queued", task=ADD, args=[1, 2])
    assert job(redis, settings, f"{sid}-1")["state"] == "queued"


def test_a_worker_killed_while_running_a_handed_run_uses_up_its_attempt(
    client: Client, settings: Settings, redis: Redis, workers: WorkerProcs
) -> None:
    """Once the worker has said it took the handed run, losing it mid-run charges the run as
    any run (SPEC §4): with no retries left it fails."""
    workers.start()
    [name] = workers.names()
    keys = Keys(settings.prefix)
    wait_for(lambda: redis.sismember(keys.idle_workers(), name), what="the worker to wait idle")
    [sid] = client.create("handed", task="tests.tasks:sleeper", args=[60])  # retries=0
    wait_for(lambda: not redis.exists(keys.worker_handed(name)), what="the worker to take it")
    os.kill(int(name.rsplit(".", 1)[1]), signal.SIGKILL)
    wait_for(lambda: ended(client, sid), what="the run to be recovered")
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "died" in record["error"]
    assert started_by(client, sid) == [name], "not run again: its one attempt is used up"


def test_a_run_handed_while_the_worker_recovers_from_a_lost_connection_runs_once(
    client: Client, settings: Settings, waiting: list[SessionWorker]
) -> None:
    """The worker waited (listed) when its connection dropped. While it takes stock (its
    inbox, then its runs list) an enqueue lands between the two reads: the run must not be
    taken up both as one it lost track of and again from its inbox."""
    RAN.clear()
    w = make_waiting(waiting, settings)
    w.scripts._lane.reset()  # the BLPOP's connection dropped
    w.lost_connection = True
    take_inbox, made = w._take_inbox, list[object]()

    def take_inbox_then_enqueue(unlist: bool = False, *, leaving: bool = False) -> None:
        take_inbox(unlist, leaving=leaving)
        if not made:
            made.extend(client.create("h", task=f"{__name__}:count_me", args=["x"]))

    w._take_inbox = take_inbox_then_enqueue  # type: ignore[method-assign]  # the race, timed
    w._resend()
    while w._turn(burst=True):
        pass
    [sid] = made
    assert client.info(sid)[0]["status"] == "Completed"
    assert RAN == ["x"], "run once"


@pytest.mark.parametrize("before, after", [({"queues": ["a"]}, {"queues": ["b"]}),
                                           ({"allow_commands": True}, {})])  # fmt: skip
def test_a_run_is_handed_only_to_a_worker_that_serves_its_queue(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker],
    before: dict[str, object], after: dict[str, object],
) -> None:  # fmt: skip
    """A lost worker's place in a queue's line is left behind; a new worker of the same name
    (a container's pids repeat) serving other queues is not handed that queue's runs."""
    old = SessionWorker(settings, name="w", **before)
    old.register()
    assert not old._claim([])  # waits on its queues
    recover_worker(old.scripts, "w", "lost")
    old.scripts.close()
    old.redis.close()
    make_waiting(waiting, settings, name="w", **after)
    if "queues" in before:
        [sid] = client.create("on-a", task=ADD, args=[1, 2], queue="a")
    else:
        [sid] = client.create("cmd", cmd=["true"])
    assert job(redis, settings, f"{sid}-1")["state"] == "queued"


def test_a_new_sessions_events_are_numbered_without_a_gap_after_a_handoff(
    client: Client, settings: Settings, waiting: list[SessionWorker]
) -> None:
    w = make_waiting(waiting, settings)
    [sid] = client.create("h", task=ADD, args=[1, 2])
    while w._turn(burst=True):
        pass
    events = client.events(sid) or []
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events][:4] == [
        "session.created", "task.queued", "session.started", "task.started"]  # fmt: skip


def test_a_new_session_whose_runs_were_all_handed_has_no_place_in_the_line(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """enqueue.lua counts a new session's entries in a queue's line with its record, before
    handing runs out: a session whose runs were all handed takes none, so that a run added
    to it later joins the line (it would wait behind an entry that is not there, for ever)."""
    a = make_waiting(waiting, settings)
    b = make_waiting(waiting, settings)
    one, two = client.create("h", task=ADD, args=[1, 2], replicas=2)
    queue = rq_keys(settings.prefix).queue("default")
    assert redis.llen(queue) == 0, "both handed"
    client.add_runs(one, [build_run(name="more", task=ADD, args=[3, 4])])
    assert redis.lrange(queue, 0, -1) == [f"{one}-2".encode()], "in the line"
    for w in (a, b):
        while w._turn(burst=True):
            pass
    assert [r["tasks"]["succeeded"] for r in client.info([one, two])] == [2, 1]


def test_a_run_handed_to_a_lost_worker_while_it_is_recovered_is_recovered_too(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Recovery reads the lost worker's runs, then gives them back in a script; a run handed
    to it in between (it still looked alive) is given back by a second look."""
    w = make_waiting(waiting, settings)
    w._watcher.stop()  # lost
    waiting.clear()
    made: list[str] = []
    with_queues = w.scripts.with_queues

    def read_then_hand(run_ids: list[str]) -> list[tuple[str, str]]:
        if not made:
            made.extend(client.create("late", task=ADD, args=[2, 2]))
        return with_queues(run_ids)

    monkeypatch.setattr(w.scripts, "with_queues", read_then_hand)
    recover_worker(w.scripts, w.name, "lost")
    w.scripts.close()
    w.redis.close()
    [sid] = made
    run = job(redis, settings, f"{sid}-1")
    assert run["state"] == "queued" and run["attempts"] == "0"
    assert redis.zscore(Keys(settings.prefix).workers(), w.name) is None, "unregistered"


def test_a_wake_is_passed_on_when_the_inbox_fills_the_claim(
    client: Client, settings: Settings, redis: Redis, waiting: list[SessionWorker]
) -> None:
    """A worker's BLPOP took queue a's wake, but before it claimed, a run was handed to it
    and filled its batch: the wake goes back for another worker."""
    keys = Keys(settings.prefix)
    w = make_waiting(waiting, settings, queues=["b", "a"])
    [queued] = client.create("on-a", task=ADD, args=[1, 2], queue="a")  # handed to w
    assert job(redis, settings, f"{queued}-1")["state"] == "started"
    redis.rpush(rq_keys(settings.prefix).queue("a"), "other-1")  # queued after it, woken
    redis.delete(keys.wake("a"))  # ... and the wake taken by w's BLPOP
    assert w._claim([]), "takes the handed run"
    assert redis.llen(keys.wake("a")) == 1, "the wake is back"


@pytest.mark.parametrize(
    ("holds", "seen", "expected"),
    [
        # its supervisor saw it run the second: the first ended (its end unsent), the third
        # never began
        ("1", 1, ["ended", "charged", "unrun"]),
        # a host lost while it held finishes back: nobody can tell - none is charged
        ("1", None, ["unsure", "unsure", "unsure"]),
        # holding none back, a step names the run it goes on to (RQ's current_job): the first
        ("0", None, ["charged", "unrun", "unrun"]),
        # its RQ worker hash expired (lost longer than its TTL): nothing tells - none charged
        (None, None, ["unsure", "unsure", "unsure"]),
    ],
)
def test_recovery_charges_the_run_a_lost_worker_was_running_and_only_when_it_is_known(
    client: Client, settings: Settings, redis: Redis, holds: str | None, seen: int | None,
    expected: list[str],
) -> None:  # fmt: skip
    """recover.lua's charge of a worker of one run at a time that may hold back the finishes
    of very short runs (worker.loop FINISHES_HELD_MAX): three runs started for it, in list
    order; what its step said (`holds`), and what its supervisor saw, decide which is charged
    (retries=0: charged is failed) and why each other one goes back."""
    sid = client.open_session("recovered")
    ids = client.add_runs(sid, [build_run(name=f"r{i}", task=ADD, args=[i, 1]) for i in range(12)])
    w = SessionWorker(settings)
    w.register()
    w._claim([], claim=3)
    assert [r[0] for r in w.ready] == ids[:3]
    rq_worker = rq_keys(settings.prefix).worker(w.name)
    if holds is None:
        redis.delete(rq_worker)
    else:
        redis.hset(rq_worker, "holds", holds)
    recover_worker(w.scripts, w.name, "lost", current=ids[1] if seen else None)
    w.scripts.close()
    w.redis.close()
    reasons = {e["task"]: e["data"]["reason"] for e in client.events(sid) or []
               if e["type"] == "task.queued" and e["data"].get("reason")}  # fmt: skip
    words = {"ended": "it ended, its end unsent", "unrun": "given back unrun",
             "unsure": "unrun, or it ended"}  # fmt: skip
    for run_id, what in zip(ids[:3], expected, strict=True):
        record = job(redis, settings, run_id)
        if what == "charged":
            assert record["state"] == "failed" and run_id not in reasons
        else:
            assert record["state"] == "queued" and record["attempts"] == "0", run_id
            assert words[what] in reasons[run_id], (run_id, reasons[run_id])
