"""Control operations (the control queue, served first): destroy, and recovering lost workers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.errors import CodecError
from sessionq.common.jobhash import parse_job_data
from sessionq.common.keys import CONTROL_QUEUE, DEFAULT_QUEUE, run_number
from sessionq.common.records import parse_record
from sessionq.common.scripts import OP_PREFIX, Scripts
from sessionq.common.timing import next_fire_ms
from sessionq.worker.host import WorkerHost

StopLocal = Callable[[str, str], None]


class Op(StrEnum):
    """The control queue's operations."""

    DESTROY = "destroy"
    STOP = "stop"
    RESTART = "restart"


class Verdict(StrEnum):
    """The first word of control.lua's and destroy.lua's replies."""

    OK = "ok"
    WAITING = "waiting"  # (destroy) runs still run: stopped, the destroy ends with the last
    DESTROYED = "destroyed"


class OpsWorker(WorkerHost, Protocol):
    """What a control operation needs of the worker carrying it out (SessionWorker is one)."""

    def stop_held(self, reason: str, run_id: str) -> None: ...


log = logging.getLogger(__name__)
OP_MAX_ATTEMPTS = 5


def run_op(worker: OpsWorker, op_id: str) -> None:
    """Carry out one control operation; a failing one is retried, then dropped with an error."""
    r, part = worker.redis, worker.scripts.of(op_id)  # (its session's partition: op_tag)
    rq = part.rq
    job_key = rq.job(op_id)
    raw = r.hget(job_key, "data")
    try:
        func, args, _ = parse_job_data(raw)
        if not func.startswith(OP_PREFIX):
            raise CodecError(f"{func!r} is not a control operation")
        name = func[len(OP_PREFIX) :]
        handler = OPS.get(name)
        arity = OP_ARGS.get(name)
        if handler is None or arity is None or not _args_fit(args, arity):
            raise CodecError(f"unknown operation {name!r} or bad arguments {args!r}")
        handler(worker.scripts, *args, worker_name=worker.name, stop_local=worker.stop_held)
    except CodecError as exc:
        log.error("control operation %s dropped: %s", op_id, exc)
    except Exception:  # noqa: BLE001 - the per-job boundary for operations
        attempts = sync_reply(r.hincrby(job_key, "attempts", 1))
        log.exception("control operation %s failed (attempt %d)", op_id, attempts)
        if attempts < OP_MAX_ATTEMPTS:
            pipe = r.pipeline()
            pipe.lrem(part.keys.worker_runs(worker.name), 1, op_id)
            pipe.rpush(rq.queue(CONTROL_QUEUE), op_id)
            pipe.execute()
            return
    pipe = r.pipeline()
    pipe.lrem(part.keys.worker_runs(worker.name), 1, op_id)
    pipe.delete(job_key)
    pipe.execute()


def destroy_session(
    scripts: Scripts, sid: str, *, worker_name: str = "", stop_local: StopLocal | None = None
) -> None:
    """Cancel what waits, stop what runs, and - once nothing runs - delete the session."""
    scripts = scripts.of(sid)
    r, k = scripts.redis, scripts.keys
    raw = r.hget(k.sessions(), sid)
    if raw is None:
        return
    record = parse_record(raw, sid)  # CodecError: logged and dropped by run_op
    run_ids = [codec.text(i) for i in sync_reply(r.hkeys(k.session_tasks(sid)))]
    runs = scripts.with_queues(run_ids)
    names_field = f"{record.owner}/{record.name}" if record.persistent else ""
    reply = scripts.destroy(
        sid, runs, kind=record.kind, owner=record.owner, names_field=names_field,
        worker=worker_name,
    )  # fmt: skip
    if reply[0] == Verdict.WAITING:
        from rq.command import send_command

        for i in range(1, len(reply), 2):
            run_id, holder = reply[i], reply[i + 1]
            if holder == worker_name and stop_local is not None:
                stop_local("session destroyed", run_id)
            elif holder:
                send_command(r, holder, "stop-job", job_id=run_id)
        log.info("destroy %s: waiting for %d running run(s) to stop", sid, (len(reply) - 1) // 2)
    elif reply[0] == Verdict.DESTROYED:
        log.info("session %s destroyed", sid)


def reap(scripts: Scripts, me: str, *, steady_s: float, lock_s: float) -> int:
    """Recover the runs of workers whose heartbeat is older than heartbeat_ttl_s by Redis's
    clock - judged in Redis, and only once `me`'s own heartbeats have gone through steadily
    for `steady_s` (reap.lua); each is judged again as its runs are given back."""
    ttl = scripts.settings.heartbeat_ttl_s
    lost = scripts.reap_candidates(me, steady_s=steady_s, lock_s=lock_s)
    for name in lost:
        recover_worker(scripts, name, f"worker {name} was lost (no heartbeat for {ttl:g}s)",
                       stale_ms=int(ttl * 1000))  # fmt: skip
    return len(lost)


def recover_worker(
    scripts: Scripts, name: str, reason: str, *, stale_ms: int = 0, current: str | None = None
) -> bool:
    """Give back everything worker `name` held; finish destroys it was the last run of.
    With `stale_ms` (the reaper), only if its heartbeat is that old by Redis's clock: False
    when it was not (it is alive); `current`: the run its supervisor saw it run as it died
    ('': none; None: nobody saw - the reaper's call). With several partitions, partition by
    partition: it leaves the registries with the last."""
    queues = _rq_queues(scripts, name)
    if len(scripts.parts) == 1:
        done = _recover_in(scripts, name, reason, stale_ms=stale_ms, unregister=True,
                           current=current)[0]  # fmt: skip
        if done:
            _leave_queue_sets(scripts, name, queues)
        return done
    # each partition's call stays in its slot: the heartbeat is judged here, before each
    # (the reaper judged it in reap.lua), and the worker leaves the registries after all; a
    # worker with N runs in flight has at most N started runs charged over all partitions
    charged = 0
    for part in scripts.parts:
        if stale_ms and not _stale(scripts, name, stale_ms):
            log.info("worker %s beat again before its recovery: left alone", name)
            return False
        done, charged = _recover_in(part, name, reason, stale_ms=0, unregister=True,
                                    charged=charged, current=current)  # fmt: skip
        if not done:
            return False
    _unregister(scripts, name)
    _leave_queue_sets(scripts, name, queues)
    return True


def _rq_queues(scripts: Scripts, name: str) -> list[str]:
    """The queues RQ's worker hash of `name` says it serves (RQ's `queues` field); once that
    hash has expired (a worker lost for longer than its TTL), every queue RQ knows of in the
    namespace (each partition's set of queues, and the two every worker serves by default)."""
    raw = sync_reply(scripts.redis.hget(scripts.grq.worker(name), "queues"))
    if raw:
        return [q for q in codec.text(raw).split(",") if q]
    known = {CONTROL_QUEUE, DEFAULT_QUEUE}
    for part in scripts.parts:
        head = part.rq.queue("")
        known.update(
            codec.text(k)[len(head) :]
            for k in sync_reply(scripts.redis.smembers(part.rq.queues_set))
        )
    return sorted(known)


def _leave_queue_sets(scripts: Scripts, name: str, queues: list[str]) -> None:
    """Worker `name`, unregistered, leaves RQ's set of workers of each of its queues too (as
    RQ's register_death does): they would hold it for ever."""
    g = scripts.grq
    if not queues or sync_reply(scripts.redis.exists(g.worker(name))):
        return  # (still registered: a run was handed to it meanwhile)
    for queue in queues:
        scripts.redis.srem(g.queue_workers(queue), g.worker(name))


def _stale(scripts: Scripts, name: str, stale_ms: int) -> bool:
    """Is worker `name`'s last heartbeat at least `stale_ms` old by Redis's clock (or gone)?"""
    g = scripts.gkeys
    beat = sync_reply(scripts.redis.zscore(g.workers(), name))
    seconds, micros = sync_reply(scripts.redis.time())
    return beat is None or float(beat) <= seconds * 1000 + micros // 1000 - stale_ms


def _unregister(scripts: Scripts, name: str) -> None:
    """Worker `name` leaves the namespace's registries (recover.lua's last lines, for a
    namespace of several partitions) once no partition holds a run of it."""
    r = scripts.redis
    if any(sync_reply(r.llen(part.keys.worker_runs(name))) for part in scripts.parts):
        return
    r.zrem(scripts.gkeys.workers(), name)
    r.srem(scripts.grq.workers_set, scripts.grq.worker(name))
    r.delete(scripts.grq.worker(name))


def _recover_in(
    scripts: Scripts, name: str, reason: str, *, stale_ms: int, unregister: bool,
    charged: int = 0, current: str | None = None,
) -> tuple[bool, int]:  # fmt: skip
    """recover_worker in one partition, `charged` of the worker's started runs charged
    before: whether it was done (not: the worker is alive), and the runs charged by then."""
    r, k = scripts.redis, scripts.keys
    for _ in range(2):  # a run handed to it between the read and the script: once more
        run_ids = [codec.text(i) for i in sync_reply(r.lrange(k.worker_runs(name), 0, -1))]
        runs = scripts.with_queues(run_ids)
        reply = scripts.recover(name, runs, reason, unregister=unregister, stale_ms=stale_ms,
                                charged=charged, current=current)  # fmt: skip
        if not reply.done:
            log.info("worker %s beat again before its recovery: left alone", name)
            return False, charged
        charged += reply.charged
        if runs:
            log.warning("recovered %d run(s) of %s: %s", len(runs), name, reason)
        for sid in reply.destroying:
            destroy_session(scripts, sid)
        if not r.exists(k.worker_runs(name)):
            break
    return True, charged


def _stop_started(
    scripts: Scripts, pairs: list[Any], worker_name: str, stop_local: StopLocal | None,
    reason: str,
) -> None:  # fmt: skip
    """Stop runs [run id, holder, run id, holder, ...] wherever they run."""
    from rq.command import send_command

    for i in range(0, len(pairs), 2):
        run_id, holder = str(pairs[i]), str(pairs[i + 1])
        if holder == worker_name and stop_local is not None:
            stop_local(reason, run_id)
        elif holder:
            send_command(scripts.redis, holder, "stop-job", job_id=run_id)


def session_runs(scripts: Scripts, sid: str) -> list[tuple[str, str]]:
    """Every run of a session with its queue, in add order."""
    ids = [codec.text(i) for i in sync_reply(scripts.redis.hkeys(scripts.keys.session_tasks(sid)))]
    ids.sort(key=run_number)
    return scripts.with_queues(ids)


def stop_session(
    scripts: Scripts, sid: str, *_: Any, worker_name: str = "",
    stop_local: StopLocal | None = None,
) -> None:  # fmt: skip
    """Cancel what waits and stop what runs (the status was set when the stop was accepted)."""
    reply = scripts.control(Op.STOP, sid, {}, session_runs(scripts, sid), worker=worker_name)
    if reply and reply[0] == Verdict.OK:
        _stop_started(scripts, reply[1:], worker_name, stop_local, "session stopped")
        log.info("session %s stopped", sid)


def restart_session(
    scripts: Scripts, sid: str, failed_only: bool = False, *, worker_name: str = "",
    stop_local: StopLocal | None = None,
) -> None:  # fmt: skip
    """Run the session's ended tasks again (only the failed ones with failed_only); a cron
    task's schedule starts again from its next firing time (control.lua restart)."""
    from sessionq.worker.schedule import resolve_runs

    runs = session_runs(scripts, sid)
    plan = {"failed_only": bool(failed_only), "due": _next_firings(scripts, runs)}
    reply = scripts.control(Op.RESTART, sid, plan, runs, worker=worker_name)
    if reply and reply[0] == Verdict.OK and len(reply) > 1:
        resolve_runs(scripts, [str(r) for r in reply[1:]], worker_name)


def _next_firings(scripts: Scripts, runs: list[tuple[str, str]]) -> dict[str, int]:
    """Cron expression -> its next firing time from now (epoch ms), for the cron tasks among
    these runs."""
    pipe = scripts.redis.pipeline(transaction=False)
    for run_id, _queue in runs:
        pipe.hget(scripts.rq.job(run_id), "cron")
    now_ms = int(time.time() * 1000)
    due: dict[str, int] = {}
    for raw in pipe.execute():
        expr = codec.text(raw) if raw else None
        if expr is not None and expr not in due:
            try:
                due[expr] = next_fire_ms(expr, now_ms)
            except (ValueError, KeyError) as exc:
                log.error("bad cron expression %r: %s", expr, exc)
    return due


def _args_fit(args: list[Any], arity: tuple[type, ...]) -> bool:
    return (
        len(arity) - 1 <= len(args) <= len(arity) if arity[-1] is bool else len(args) == len(arity)
    ) and all(isinstance(a, t) for a, t in zip(args, arity, strict=False))


OPS: dict[str, Callable[..., None]] = {
    Op.DESTROY: destroy_session,
    Op.STOP: stop_session,
    Op.RESTART: restart_session,
}
OP_ARGS: dict[str, tuple[type, ...]] = {Op.DESTROY: (str,), Op.STOP: (str,),
                                        Op.RESTART: (str, bool)}  # fmt: skip
