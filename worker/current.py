"""`CurrentRun`: one in-flight run as the other threads of its worker see it - its deadline,
its stop request and the command it runs - behind its own lock.

The main thread makes one when a run begins and drops it when the run ends; a stop (the
watcher's RQ command, an operation of the control queue, a signal) asks it to stop, and the
watcher asks it whether it is overdue. Nothing else of the worker is written by those threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple

from sessionq.common.vocabulary import Outcome


class StopReason(StrEnum):
    """Why a run was told to stop (other reasons are a stop's own words, e.g. "stopped")."""

    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"  # the worker stops now: the run goes back unrun (uncharged)


class Overdue(NamedTuple):
    """A run that outlived its deadline or its stop by the grace period (see CurrentRun)."""

    run_id: str
    queue: str
    outcome: Outcome
    reason: str


class CurrentRun:
    """One run in flight: `interrupt` is how its runner ends it (SIGUSR1 to the main thread,
    cancelling its asyncio task; None for a plain function on a pool thread, which only sees
    `is_set()` - told to stop - through current_task().should_stop)."""

    __slots__ = ("run_id", "queue", "timeout", "deadline", "interrupt", "_lock",
                 "_reason", "_stop_at", "_command", "finish")  # fmt: skip

    def __init__(
        self,
        run_id: str,
        queue: str,
        timeout: float | None,
        interrupt: Callable[[str], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.queue = queue
        self.timeout = timeout
        self.deadline = (time.monotonic() + timeout) if timeout else None
        self.interrupt = interrupt
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._stop_at: float | None = None
        self._command: Any = None
        # how it ended (run id, queue, outcome, payload, ms), once its body is done; the main
        # thread has yet to send it
        self.finish: tuple[str, str, str, bytes, int] | None = None

    def is_set(self) -> bool:
        """Was it told to stop? (What current_task().should_stop reads first.)"""
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """Why it was told to stop (the first reason given), or None."""
        return self._reason

    def request_stop(self, reason: str) -> None:
        """From any thread: end the run - its command's process group, or its function by
        its `interrupt`; in any case `should_stop` says so from now on."""
        with self._lock:
            if self.finish is not None:  # its body is done: nothing to stop
                return
            first = self._reason is None
            if first:
                self._reason = reason
                self._stop_at = time.monotonic()
            command, interrupt = self._command, self.interrupt
        if command is not None:
            command.request_stop(reason)
        elif interrupt is not None and first:
            interrupt(reason)

    def attach_command(self, command: Any) -> str | None:
        """The run's command is set up: a stop from now on ends it. The reason of a stop that
        came before (the command must not start), or None."""
        with self._lock:
            self._command = command
            return self._reason

    def end(self, finish: tuple[str, str, str, bytes, int]) -> None:
        """Its body is done (any thread): no stop reaches it now; `finish` says how it ended."""
        with self._lock:
            self.finish = finish
            # what would interrupt it goes: an async run's asyncio task holds its context,
            # whose current_task() holds this run - a cycle left for the GC to find, per run
            self.interrupt = None

    def attach_interrupt(self, interrupt: Callable[[str], None]) -> str | None:
        """The run's body can be interrupted now (its asyncio task exists). The reason of a
        stop that came before (the caller ends it itself), or None."""
        with self._lock:
            self.interrupt = interrupt
            return self._reason

    def overdue(self, now: float, grace: float) -> Overdue | None:
        """Has the function outlived its deadline or its stop by `grace`? (A command is never
        overdue: it is ended by its process group.) How to record it, if so."""
        with self._lock:
            if self._command is not None or self.finish is not None:
                return None
            if self.deadline is not None and now > self.deadline + grace:
                return Overdue(self.run_id, self.queue, Outcome.FAILED,
                               "timeout: the run ignored its deadline")  # fmt: skip
            if self._stop_at is not None and now > self._stop_at + grace:
                if self._reason == StopReason.SHUTDOWN:
                    return Overdue(self.run_id, self.queue, Outcome.REQUEUE, "worker shut down")
                return Overdue(self.run_id, self.queue, Outcome.CANCELED, "stopped (forced)")
        return None


def interrupted(reason: str, timeout: float | None) -> tuple[Outcome, str]:
    """How a run told to stop with `reason` ended: its outcome and the text recorded."""
    if reason == StopReason.TIMEOUT:
        return Outcome.FAILED, f"timeout: the run took longer than {timeout or 0:g}s"
    if reason == StopReason.SHUTDOWN:
        return Outcome.REQUEUE, "worker shut down"
    return Outcome.CANCELED, f"stopped: {reason}"
