"""A run taken up, before its body runs: its job read, its function resolved or its command
checked, its current_task() made - and the per-run boundary that turns how a body ended into
the outcome recorded (whichever runs it: the main thread, a pool thread or the event loop)."""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sessionq.common import codec
from sessionq.common.errors import CodecError, RunRejected
from sessionq.common.jobhash import COMMAND_FUNC, parse_job_data, parse_meta
from sessionq.common.keys import session_of
from sessionq.common.scripts import OP_PREFIX
from sessionq.common.state import SharedState
from sessionq.common.vocabulary import Outcome
from sessionq.worker.context import TaskContext
from sessionq.worker.current import CurrentRun, interrupted
from sessionq.worker.execute import (
    RUN_ENVIRONMENT,
    Command,
    RunInterrupted,
    describe_exit,
    stored_result,
)
from sessionq.worker.host import WorkerHost
from sessionq.worker.registry import resolve

log = logging.getLogger(__name__)
Ended = tuple[str, bytes]  # outcome, payload


class RunHost(WorkerHost, Protocol):
    """What preparing a run needs of its worker (SessionWorker is one)."""

    @property
    def allow_commands(self) -> bool: ...


@dataclass(slots=True)
class Prepared:
    """A run ready for its body: a function (`fn`, with `ctx` its current_task()) or a
    command (`argv`); `env` the run's variables."""

    run: CurrentRun
    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    env: dict[str, str]
    meta: dict[str, Any]
    timeout: float | None
    fn: Callable[..., Any] | None = None
    ctx: TaskContext | None = None

    @property
    def is_async(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)


def prepare(
    host: RunHost, run: CurrentRun, data: bytes, sq: bytes, timeout: float | None, attempt: int
) -> Prepared:
    """Read a run's job and make what its body needs; CodecError or RunRejected if it cannot
    begin."""
    run_id = run.run_id
    sid = session_of(run_id)
    func, args, kwargs = parse_job_data(data)
    meta = parse_meta(sq)
    env = dict(meta.get("env") or {})
    env.update(
        REPLICA_ID=str(meta.get("replica_id", 1)),
        REPLICA_COUNT=str(meta.get("replica_count", 1)),
        SESSIONQ_SESSION_ID=sid,
        SESSIONQ_TASK_ID=run_id,
    )
    p = Prepared(run, func, args, kwargs, env, meta, timeout)
    if func == COMMAND_FUNC:
        if not host.allow_commands:
            raise RunRejected("commands run only on workers started with --allow-commands")
        if not args or not all(isinstance(a, str) for a in args):
            raise RunRejected("job field 'data': a command needs a list of string arguments")
        return p
    if func.startswith(OP_PREFIX):
        raise RunRejected(f"{func!r} is a control operation, not a task")
    p.fn = resolve(func)
    scripts, worker = host.scripts, host.name

    def emit(event_type: str, data: dict[str, Any]) -> None:
        scripts.emit(sid, [(event_type, run_id, data)], worker=worker)

    p.ctx = TaskContext(
        session_id=sid, task_id=run_id, name=str(meta.get("name", run_id)), attempt=attempt,
        emit=emit,
        log_line=lambda stream, line: scripts.log(sid, run_id, [(stream, line)], worker=worker),
        stop_flag=run,
        state=lambda: SharedState(scripts, sid, worker=worker, task=run_id),
        session_status=lambda: host.redis.hget(scripts.keys.session(sid), "status"),
        env=env,
    )  # fmt: skip
    return p


def judge(run_id: str, exc: BaseException, run: CurrentRun | None, timeout: float | None) -> Ended:
    """The per-run boundary: how a run whose body (or preparation) raised `exc` ended. A run
    told to stop ends as its stop says, whatever it raised on the way out."""
    if isinstance(exc, RunInterrupted):
        return encoded(interrupted(exc.reason, timeout))
    if run is not None and run.reason is not None:
        return encoded(interrupted(run.reason, timeout))
    if isinstance(exc, (CodecError, RunRejected)):
        log.error("run %s rejected: %s", run_id, exc)
        return Outcome.REJECTED, codec.encode(f"{type(exc).__name__}: {exc}")
    text = "".join(traceback.format_exception(exc))
    log.info("run %s failed: %s", run_id, text.strip().splitlines()[-1])
    return Outcome.FAILED, codec.encode(text)


def encoded(ended: tuple[str, str]) -> Ended:
    return ended[0], codec.encode(ended[1])


def stopped_unrun(reason: str) -> Ended:
    """How a run that a stop (`reason`) reached before it began ended: canceled, never run."""
    return Outcome.CANCELED, codec.encode(f"stopped: {reason}")


def returned(p: Prepared, result: Any, max_bytes: int) -> Ended:
    """How a run whose body returned `result` ended: as its stop says, if it returned after
    its stop or deadline (a pool thread or the event loop cannot interrupt it), else its
    result, stored."""
    run = p.run
    if run.reason is not None:
        return encoded(interrupted(run.reason, run.timeout))
    if p.ctx is not None and p.ctx.stopped_by is not None:  # (told by its session's status)
        return encoded(interrupted(p.ctx.stopped_by, run.timeout))
    return stored_result(run.run_id, p.func, result, max_bytes)


def run_command(host: RunHost, p: Prepared, note_pgid: Callable[[int], None] | None) -> Ended:
    """Run a prepared command run to its end (on this thread): its outcome and payload."""
    run_id, sid = p.run.run_id, session_of(p.run.run_id)
    scripts, worker = host.scripts, host.name
    # the worker's environment without what reaches Redis (SPEC §9), then the run's
    environ = host.settings.command_environ(RUN_ENVIRONMENT.base())
    command = Command(
        p.args, {**environ, **p.env}, ram_gb=p.meta.get("ram"),
        on_lines=lambda lines: scripts.log(sid, run_id, lines, worker=worker),
    )  # fmt: skip
    pending = p.run.attach_command(command)
    if pending:  # stopped while the run was being set up
        command.request_stop(pending)
    try:
        status = command.run(p.timeout, host.settings.stop_grace_s, note_pgid)
    except FileNotFoundError:
        return Outcome.REJECTED, codec.encode(f"command not found: {p.args[0]}")
    except PermissionError:
        return Outcome.REJECTED, codec.encode(f"command not executable: {p.args[0]}")
    if command.stop_reason is not None:
        return encoded(interrupted(command.stop_reason, p.timeout))
    if status == 0:
        return Outcome.SUCCEEDED, codec.encode(None)
    detail = describe_exit(status)
    if p.meta.get("ram"):
        detail += f" (memory was capped at ram={p.meta['ram']} GB)"
    return Outcome.FAILED, codec.encode(detail)
