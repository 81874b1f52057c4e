"""Control operations (the control queue, served first): destroy, and recovering lost workers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from common import codec
from common.errors import CodecError
from common.keys import CONTROL_QUEUE, DEFAULT_QUEUE
from common.models import parse_job_data, parse_record
from common.scripts import OP_PREFIX, Scripts

if TYPE_CHECKING:
    from worker.loop import SessionWorker

StopLocal = Callable[[str, str], None]

log = logging.getLogger(__name__)
OP_MAX_ATTEMPTS = 5


def run_op(worker: SessionWorker, op_id: str) -> None:
    """Carry out one control operation; a failing one is retried, then dropped with an error."""
    r, rq = worker.redis, worker.scripts.rq
    job_key = rq.job(op_id)
    raw = r.hget(job_key, "data")
    try:
        func, args, _ = parse_job_data(raw)
        if not func.startswith(OP_PREFIX):
            raise CodecError(f"{func!r} is not a control operation")
        name = func[len(OP_PREFIX) :]
        handler = OPS.get(name)
        if handler is None or len(args) != 1 or not isinstance(args[0], str):
            raise CodecError(f"unknown operation {name!r} or bad arguments {args!r}")
        handler(worker.scripts, args[0], worker_name=worker.name, stop_local=worker.stop_current)
    except CodecError as exc:
        log.error("control operation %s dropped: %s", op_id, exc)
    except Exception:  # noqa: BLE001 - the per-job boundary for operations
        attempts = int(r.hincrby(job_key, "attempts", 1))
        log.exception("control operation %s failed (attempt %d)", op_id, attempts)
        if attempts < OP_MAX_ATTEMPTS:
            pipe = r.pipeline()
            pipe.lrem(worker.scripts.keys.worker_runs(worker.name), 1, op_id)
            pipe.rpush(rq.queue(CONTROL_QUEUE), op_id)
            pipe.execute()
            return
    pipe = r.pipeline()
    pipe.lrem(worker.scripts.keys.worker_runs(worker.name), 1, op_id)
    pipe.delete(job_key)
    pipe.execute()


def with_queues(scripts: Scripts, run_ids: list[str]) -> list[tuple[str, str]]:
    """[(run id, the queue it came from)] - what the scripts need to name its keys."""
    pipe = scripts.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(scripts.rq.job(run_id), "origin")
    origins = pipe.execute()
    return [
        (run_id, codec.text(origin) if origin else DEFAULT_QUEUE)
        for run_id, origin in zip(run_ids, origins, strict=True)
    ]


def destroy_session(
    scripts: Scripts, sid: str, *, worker_name: str = "", stop_local: StopLocal | None = None
) -> None:
    """Cancel what waits, stop what runs, and - once nothing runs - delete the session."""
    r, k = scripts.redis, scripts.keys
    raw = r.hget(k.sessions(), sid)
    if raw is None:
        return
    record = parse_record(raw, sid)  # CodecError: logged and dropped by run_op
    run_ids = [codec.text(i) for i in r.hkeys(k.session_tasks(sid))]
    runs = with_queues(scripts, run_ids)
    names_field = f"{record.owner}/{record.name}" if record.persistent else ""
    reply = scripts.destroy(
        sid, runs, kind=record.kind, owner=record.owner, names_field=names_field,
        worker=worker_name,
    )  # fmt: skip
    if reply[0] == "waiting":
        from rq.command import send_command

        for i in range(1, len(reply), 2):
            run_id, holder = reply[i], reply[i + 1]
            if holder == worker_name and stop_local is not None:
                stop_local("session destroyed", run_id)
            elif holder:
                send_command(r, holder, "stop-job", job_id=run_id)
        log.info("destroy %s: waiting for %d running run(s) to stop", sid, (len(reply) - 1) // 2)
    elif reply[0] == "destroyed":
        log.info("session %s destroyed", sid)


def reap(scripts: Scripts, me: str = "") -> int:
    """Recover the runs of workers whose heartbeat is older than heartbeat_ttl_s."""
    r, k, ttl = scripts.redis, scripts.keys, scripts.settings.heartbeat_ttl_s
    deadline = int((time.time() - ttl) * 1000)
    dead = [codec.text(n) for n in r.zrangebyscore(k.workers(), "-inf", deadline)]
    for name in dead:
        if name != me:
            recover_worker(scripts, name, f"worker {name} was lost (no heartbeat for {ttl:g}s)")
    return len(dead)


def recover_worker(scripts: Scripts, name: str, reason: str) -> None:
    """Give back everything worker `name` held; finish destroys it was the last run of."""
    r, k = scripts.redis, scripts.keys
    run_ids = [codec.text(i) for i in r.lrange(k.worker_runs(name), 0, -1)]
    runs = with_queues(scripts, run_ids)
    if runs:
        log.warning("recovering %d run(s) of %s: %s", len(runs), name, reason)
    for sid in scripts.recover(name, runs, reason, unregister=True):
        destroy_session(scripts, sid)


OPS = {"destroy": destroy_session}
