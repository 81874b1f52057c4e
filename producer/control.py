"""Session control as plans (SPEC §3, narupatools): pause, play, step, stop, restart, and the
task records of a session. Pause, play and step are one atomic script each, here; stop and
restart act on work under way, so they go to the control queue and workers carry them out.
`Client` and `AsyncClient` carry out the same plans (producer.plans has what a plan is)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import SessionNotFound
from sessionq.common.events import EventType
from sessionq.common.keys import run_number
from sessionq.common.records import TASK_FIELDS, task_dict
from sessionq.common.scripts import Scripts
from sessionq.common.vocabulary import Status
from sessionq.producer.plans import (
    Batch,
    Command,
    Plan,
    ScriptCall,
    owned,
    stop_running,
    texts,
    with_queues,
)

log = logging.getLogger(__name__)
MAX_TRIES = 50  # optimistic steps (play, step) retried when a worker moved a run meanwhile
OK, NO, RETRY = "ok", "no", "retry"  # control.lua's first reply word
STOP_QUEUED = 1  # request.lua's reply to a stop it put on the control queue (2: ended already)


task_order = run_number  # the order a session's tasks were added in

One = Callable[[Scripts, str], Plan[bool]]


def _each(scripts: Scripts, ids: str | Sequence[str], one: One, what: str) -> Plan[dict[str, bool]]:
    """id -> accepted: `one` for each of the caller's sessions; an unknown id, or another
    owner's session, is logged and False (as for destroy)."""
    out = yield from owned(scripts, ids, what)
    for sid, mine in out.items():
        if mine:
            out[sid] = yield from one(scripts, sid)
    return out


def _control(
    scripts: Scripts, op: str, sid: str, runs: Sequence[tuple[str, str]] = ()
) -> Plan[list[Any]]:
    reply = yield ScriptCall("control", *scripts.control_call(op, sid, {}, runs))
    return texts(reply)


def pause(scripts: Scripts, ids: str | Sequence[str]) -> Plan[dict[str, bool]]:
    """After this returns no further run of the session starts (runs already started
    carry on and see should_stop); runs dequeued meanwhile are parked, in order."""
    return (yield from _each(scripts, ids, _pause_one, "pause"))


def _pause_one(scripts: Scripts, sid: str) -> Plan[bool]:
    reply = yield from _control(scripts, "pause", sid)
    if reply[0] == NO:
        _refused("pause", sid, reply[1])
    return bool(reply[0] == OK)


def _refused(what: str, sid: str, status: str) -> None:
    """Say why control.lua refused `what` (a session ended, or being destroyed)."""
    if what == "step" and status != Status.PAUSED:
        log.warning("step: session %s is %s, not paused", sid, status)
    else:
        log.warning("%s: session %s is %s; refused", what, sid, status)


def play(scripts: Scripts, ids: str | Sequence[str]) -> Plan[dict[str, bool]]:
    """Release the held runs, in order, and let the session run."""
    return (yield from _each(scripts, ids, _play_one, "play"))


def _play_one(scripts: Scripts, sid: str) -> Plan[bool]:
    for _ in range(MAX_TRIES):
        (held,) = yield Batch([Command.of("zrange", scripts.keys.session_held(sid), 0, -1)])
        runs = yield from with_queues(scripts, [codec.text(i) for i in held])
        reply = yield from _control(scripts, "play", sid, runs)
        if reply[0] != RETRY:
            if reply[0] == NO:
                _refused("play", sid, reply[1])
            return bool(reply[0] == OK)
    log.error("play %s: the held runs kept changing; try again", sid)
    return False


def step(scripts: Scripts, ids: str | Sequence[str]) -> Plan[dict[str, bool]]:
    """Release exactly one run - the oldest held, else the next one dequeued - and stay
    paused; False for a session that is not paused."""
    return (yield from _each(scripts, ids, _step_one, "step"))


def _step_one(scripts: Scripts, sid: str) -> Plan[bool]:
    for _ in range(MAX_TRIES):
        (first,) = yield Batch([Command.of("zrange", scripts.keys.session_held(sid), 0, 0)])
        runs = yield from with_queues(scripts, [codec.text(i) for i in first])
        reply = yield from _control(scripts, "step", sid, runs)
        if reply[0] != RETRY:
            if reply[0] == NO:
                _refused("step", sid, reply[1])
            return bool(reply[0] == OK)
    log.error("step %s: the held runs kept changing; try again", sid)
    return False


def stop(scripts: Scripts, ids: str | Sequence[str]) -> Plan[dict[str, bool]]:
    """Cancel the queued runs and stop the running ones; the session ends Stopped. A session
    that has ended already (Completed, Failed, Stopped) is left as it is: accepted, nothing to
    do (request.lua)."""
    return (yield from _each(scripts, ids, _stop_one, "stop"))


def _stop_one(scripts: Scripts, sid: str) -> Plan[bool]:
    (status,) = yield Batch([Command.of("hget", scripts.keys.session(sid), "status")])
    if status is not None and codec.text(status) == Status.TERMINATING:
        return False
    call = scripts.request_call(sid, "stop", [sid], status=Status.STOPPED.value,
                                event=EventType.SESSION_STOPPED)  # fmt: skip
    reply = yield ScriptCall("request", *call)
    if reply == STOP_QUEUED:
        # the control queue may wait behind busy workers: tell those running it now
        yield from stop_running(scripts, sid)
    return bool(reply)


def restart(
    scripts: Scripts, ids: str | Sequence[str], *, failed_only: bool = False
) -> Plan[dict[str, bool]]:
    """Run the sessions' ended tasks again (only the failed ones with failed_only)."""

    def one(scripts: Scripts, sid: str) -> Plan[bool]:
        call = scripts.request_call(sid, "restart", [sid, bool(failed_only)])
        return bool((yield ScriptCall("request", *call)))

    return (yield from _each(scripts, ids, one, "restart"))


def tasks(scripts: Scripts, sid: str) -> Plan[list[dict[str, Any]]]:
    """The task records of one session, in the order they were added; NotFound if the
    session does not exist."""
    exists, names = yield Batch([
        Command.of("exists", scripts.keys.session(sid)),
        Command.of("hgetall", scripts.keys.session_tasks(sid)),
    ])  # fmt: skip
    if not exists:
        raise SessionNotFound(sid)
    by_id = {codec.text(k): codec.text(v) for k, v in names.items()}
    return (yield from task_records(scripts, sorted(by_id, key=task_order), by_id))


def task_records(
    scripts: Scripts, task_ids: Sequence[str], names: dict[str, str]
) -> Plan[list[dict[str, Any]]]:
    """The records of runs by id (named from `names`, else by id), in the order given."""
    if not task_ids:
        return []
    rows = yield Batch([Command.of("hmget", scripts.rq.job(tid), TASK_FIELDS) for tid in task_ids])
    return [
        task_dict(tid, names.get(tid, tid), row) for tid, row in zip(task_ids, rows, strict=True)
    ]
