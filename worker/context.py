"""`current_task()`: what a running function knows of its run, and how it reports back."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Protocol

from sessionq.common.errors import SessionqError, ValidationError
from sessionq.common.events import EventType
from sessionq.common.vocabulary import Status

# per thread and per asyncio task: concurrent runs of one worker each see their own
_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "sessionq_current_task", default=None
)
PROGRESS_MIN_INTERVAL_S = 0.05
STATUS_CHECK_INTERVAL_S = 0.1
HALTED_STATUSES = frozenset(
    {None, Status.PAUSED, Status.STOPPED, Status.TERMINATING, Status.FAILED}
)
# a run that returns once should_stop said its session is stopped or gone ends as that stop
# would have ended it (the stop operation may come after it returned): canceled, saying so
STOPPED_BY = {Status.STOPPED: "session stopped", Status.TERMINATING: "session destroyed",
              None: "session destroyed"}  # fmt: skip


class StopFlag(Protocol):
    """Says whether the run was told to stop (a threading.Event is one; so is CurrentRun)."""

    def is_set(self) -> bool: ...


class TaskContext:
    """The run in progress on this thread or asyncio task (SPEC §4). `env` holds the run's
    variables (REPLICA_*, SESSIONQ_SESSION_ID, SESSIONQ_TASK_ID and its own `env`): with
    `--max-jobs 1` they are in os.environ too while it runs; with more runs in flight they
    are here only (os.environ is one for the whole process)."""

    def __init__(
        self,
        *,
        session_id: str,
        task_id: str,
        name: str,
        attempt: int,
        emit: Callable[[str, dict[str, Any]], None],
        log_line: Callable[[str, str], None],
        stop_flag: StopFlag,
        state: Callable[[], MutableMapping[str, Any]] | None = None,
        session_status: Callable[[], Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env: Mapping[str, str] = env or {}
        self.session_id = session_id
        self.task_id = task_id
        self.name = name
        self.attempt = attempt
        self._emit = emit
        self._log_line = log_line
        self._stop_flag = stop_flag
        self._last_progress = 0.0
        self._make_state = state
        self._state: MutableMapping[str, Any] | None = None
        self._session_status = session_status
        self._status_checked = 0.0
        self._session_halted = False
        self.stopped_by: str | None = None  # (STOPPED_BY) what should_stop last read

    @property
    def state(self) -> MutableMapping[str, Any]:
        """The session's shared state (made on first use: most runs never touch it)."""
        if self._state is None:
            self._state = self._make_state() if self._make_state is not None else {}
        return self._state

    @property
    def should_stop(self) -> bool:
        """True once the session is paused, stopped or destroyed, or the worker is stopping.
        The session's status is read at most every STATUS_CHECK_INTERVAL_S."""
        if self._stop_flag.is_set():
            return True
        now = time.monotonic()
        if self._session_status is not None and now - self._status_checked >= (
            STATUS_CHECK_INTERVAL_S
        ):
            self._status_checked = now
            status = self._session_status()
            if isinstance(status, bytes):
                status = status.decode()
            self._session_halted = status in HALTED_STATUSES
            self.stopped_by = STOPPED_BY.get(status)
        return self._session_halted

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the run is (0.0-1.0) as a task.progress event; calls closer together
        than 50 ms are coalesced, except the final 1.0."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValidationError("fraction", f"expected a number, got {type(fraction).__name__}")
        if not 0.0 <= fraction <= 1.0:
            raise ValidationError("fraction", f"must be 0.0-1.0, got {fraction}")
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress < PROGRESS_MIN_INTERVAL_S:
            return
        self._last_progress = now
        data: dict[str, Any] = {"fraction": float(fraction)}
        if message is not None:
            data["message"] = str(message)
        self._emit(EventType.TASK_PROGRESS.value, data)

    def log(self, message: str) -> None:
        """Add a line to the session's logs (and a task.log event)."""
        for line in str(message).splitlines() or [""]:
            self._log_line("log", line)


def current_task() -> TaskContext:
    """The run this code is part of; SessionqError outside a run."""
    ctx = _current.get()
    if ctx is None:
        raise SessionqError("current_task() called outside a sessionq run")
    return ctx


def set_current(ctx: TaskContext | None) -> None:
    """Make `ctx` the run of this thread (or asyncio task), None: no run."""
    _current.set(ctx)
