"""`--max-jobs N`: up to N runs in flight in one worker process - `async def` functions on the
worker's event loop (a thread of its own), plain functions and commands in a pool of N
threads - while the main thread steps as with one: each run.lua call finishes what ended and
claims what there is room for, in steps of at most claim_batch_max runs (runs that end
together are replaced a few at a time, while Redis works on the rest). A few runs are claimed
ahead (about 20 ms of work, at most claim_batch_max): they begin the moment Redis has the
ends of those they replace.

A run ends (a timeout, a stop, a cold shutdown) by its CurrentRun: an async run's task is
cancelled; a command's process group is ended; a plain function on a pool thread sees its
stop only through current_task().should_stop, and one that does not end within the grace
period is the watcher's (worker.watch enforce: it records the run and ends the process, for
its supervisor to start a fresh one). Runs begin in the order of the worker's runs list, so
the first N started runs there are those in flight (what recover.lua charges if the worker is
lost)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from sessionq.common.scripts import Finish, Scripts, WorkerHead
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Outcome
from sessionq.worker.context import set_current
from sessionq.worker.current import CurrentRun, StopReason, interrupted
from sessionq.worker.prepare import (
    Ended,
    Prepared,
    encoded,
    judge,
    prepare,
    returned,
    run_command,
    stopped_unrun,
)

log = logging.getLogger(__name__)
POLL_S = 0.05  # with runs in flight and nothing to claim: look again this often
HOLD_S = 0.5  # runs held in hand this long while no slot frees up go back
BATCH_WINDOW_S = 0.02  # claim about this much work at once (fewer round trips, no hoarding)
Ready = tuple[str, str, Any, Any, Any, int]  # run id, queue, data, sq, timeout, attempt


class Host(Protocol):
    """What the runner needs of its worker (SessionWorker is one)."""

    name: str
    redis: Any
    scripts: Scripts
    settings: Settings
    allow_commands: bool
    head: WorkerHead
    shutting_down: bool
    hard_stop: bool
    ready: deque[Ready]
    take_lock: threading.RLock
    cancel_ids: dict[str, str]
    inflight: dict[str, CurrentRun]

    def _claim(
        self, finishes: list[Finish], claim: int = 0, waits: bool | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> bool: ...  # fmt: skip

    def _collect(self, keep: int) -> None: ...

    def _finish(self, finishes: list[Finish], current: str | None = None) -> None: ...

    def _suspended(self) -> bool: ...

    def wait_idle(self) -> None: ...

    def ended(self, run_id: str, outcome: str, sq: Any) -> None: ...

    def give_back(self, why: str) -> list[Finish]: ...

    def _begin(
        self, run_id: str, queue: str, timeout: Any, interrupt: Callable[[str], None] | None
    ) -> CurrentRun: ...


class InFlight:
    """The runs in flight of one worker process, and its main thread's steps."""

    def __init__(self, host: Host, max_jobs: int) -> None:
        self.host = host
        self.max_jobs = max_jobs
        self.running = 0
        # runs claimed beyond max_jobs, in hand to begin the moment others end: about
        # BATCH_WINDOW_S of work at the rate runs end (none until the first has ended)
        self.ahead = 0
        self.avg_run_s: float | None = None
        self._began_at = 0.0  # when runs last began (runs held in hand longer go back)
        # runs finished and claimed per step: a wave of runs that end together is carried in
        # small steps, so the first are replaced while Redis still works on the rest
        self.step_max = host.settings.claim_batch_max
        # (finish, sq) of ended runs, put by pool threads and the event loop
        self.done: queue.SimpleQueue[tuple[Finish, Any]] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    # -- the main thread's step -------------------------------------------------------------
    def turn(self, burst: bool) -> bool:
        """One step; False when a burst worker has nothing left (or a stopping one nothing in
        flight)."""
        h = self.host
        self._begin_ready()
        finishes = self.collect(0)
        if h.shutting_down:  # warm: finish what runs, begin and claim nothing
            if finishes:
                h._finish(finishes, "")
            if not self.running:
                return False
            finishes = self.collect(POLL_S)
            if finishes:
                h._finish(finishes, "")
            return True
        if finishes and h.ready:
            self._replace(finishes)
            return True
        room = self.room()
        if room <= 0:  # full: wait for a run to end, then finish it and fill its place
            self._settle(finishes or self.collect(POLL_S), claim=True)
            return True
        if h._claim(finishes, room, waits=not self.running):
            return True
        if self.running:  # nothing to claim now: the next end (or a while) brings a look
            self._settle(self.collect(POLL_S), claim=False)  # (claimed with the next step's)
            return True
        if h._suspended():
            if burst:
                return False
            time.sleep(1)
            return True
        if burst:
            return False
        h.wait_idle()
        return True

    def _settle(self, finishes: list[Finish], claim: bool) -> None:
        """After a wait for runs to end: runs in hand take the places of those that ended
        (_replace); else their finishes go (with a claim of the room they left, if `claim`);
        none ended: the runs in hand may have been held long enough."""
        h = self.host
        if finishes and h.ready:
            self._replace(finishes)
        elif finishes and claim:
            h._claim(finishes, self.room(), waits=False)
        elif finishes:
            h._finish(finishes)
        else:
            self._hold_no_longer()

    def _hold_no_longer(self) -> None:
        """No run has ended for HOLD_S: the runs in flight outlast what the past made us
        expect, so the runs in hand go back (uncharged, to the front of their queues) for
        idle workers to take, and none are claimed ahead until a run ends."""
        h = self.host
        if h.ready and time.monotonic() - self._began_at > HOLD_S:
            self.ahead = 0
            h._finish(h.give_back("held back: the worker's slots are busy"))

    def room(self) -> int:
        """How many runs to claim now: up to max_jobs in flight and `ahead` more in hand, at
        most step_max."""
        return min(self.step_max, self.max_jobs + self.ahead - self.running - len(self.host.ready))

    def _replace(self, finishes: list[Finish]) -> None:
        """Finish runs that ended and begin runs in hand in their places - once Redis has
        the ends, so that the runs of ours in flight stay the first max_jobs on our list
        (what recover.lua charges if we are lost) - claiming what there is room for in the
        same round trip."""
        h = self.host
        h._finish(finishes)
        room = self.room()
        if room > 0:
            h._claim([], room, waits=False, meanwhile=partial(self._begin_ready, 1))
        else:
            h._collect(0)
            self._begin_ready()

    def _begin_ready(self, pending: int = 0) -> None:
        """Begin runs in hand while there is room in flight (async ones in one wake of the
        event loop) - only when no step but the `pending` last ones (claims) is unanswered:
        a finish sent must be applied before a run begins in its place."""
        h = self.host
        if h.shutting_down or not h.ready or self.running >= self.max_jobs:
            return
        if h.scripts.steps_unanswered > pending:
            return
        spawn: list[tuple[Prepared, Any, float]] = []
        while h.ready and self.running < self.max_jobs:
            self.begin(spawn)
        if spawn:
            self._event_loop().call_soon_threadsafe(self._spawn_all, spawn)
        self._began_at = time.monotonic()

    def collect(self, timeout: float) -> list[Finish]:
        """The finishes of runs that ended; waiting up to `timeout` for the first."""
        out: list[Finish] = []
        try:
            item = self.done.get(timeout=timeout) if timeout else self.done.get_nowait()
        except queue.Empty:
            return out
        items = [item]
        while len(items) < self.step_max:
            try:
                items.append(self.done.get_nowait())
            except queue.Empty:
                break
        h = self.host
        with h.take_lock:
            for finish, _sq in items:
                h.inflight.pop(finish[0], None)
        for finish, sq in items:
            self.running -= 1
            if finish[2] != Outcome.CANCELED:  # (one stopped before it began took 0 ms)
                ran_s = finish[4] / 1000
                self.avg_run_s = ran_s if self.avg_run_s is None else (
                    0.8 * self.avg_run_s + 0.2 * ran_s)  # fmt: skip
            h.ended(finish[0], finish[2], sq)
            out.append(finish)
        if self.avg_run_s is not None:
            fits = int(BATCH_WINDOW_S * self.max_jobs / max(self.avg_run_s, 1e-4))
            self.ahead = min(self.step_max, fits)
        return out

    # -- beginning a run --------------------------------------------------------------------
    def begin(self, spawn: list[tuple[Prepared, Any, float]]) -> None:
        """Begin the next run in hand: on a pool thread, on the event loop (added to `spawn`,
        for the caller to hand over), or (cancelled or rejected before it began) ended at
        once. Taken from `ready` under take_lock, as a stop looks for it there or in flight."""
        h = self.host
        self.running += 1
        with h.take_lock:
            run_id, queue_name, data, sq, timeout, attempt = h.ready.popleft()
            reason = h.cancel_ids.pop(run_id, None)
            if reason is None:
                run = h._begin(run_id, queue_name, timeout, None)
        if reason is not None:  # stopped before its turn came: it never runs
            self._end(None, run_id, queue_name, sq, 0.0, stopped_unrun(reason))
            return
        started = time.perf_counter()
        try:
            if h.hard_stop:
                raise_shutdown()
            p = prepare(h, run, data, sq, run.timeout, attempt)
        except BaseException as exc:  # noqa: BLE001 - the per-run boundary
            self._end(run, run_id, queue_name, sq, started, judge(run_id, exc, run, run.timeout))
            return
        if p.is_async:
            spawn.append((p, sq, started))
        else:
            self._thread_pool().submit(self._call, p, sq, started)

    def _end(
        self, run: CurrentRun | None, run_id: str, queue_name: str, sq: Any, started: float,
        ended: Ended,
    ) -> None:  # fmt: skip
        """A run ended (any thread): its finish to the main thread, which takes it out of
        flight (until then it is on the worker's runs list and in `inflight`, ended)."""
        ms = int((time.perf_counter() - started) * 1000) if started else 0
        finish = (run_id, queue_name, ended[0], ended[1], ms)
        if run is not None:
            run.end(finish)
        self.done.put((finish, sq))

    # -- a pool thread ------------------------------------------------------------------------
    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_jobs, thread_name_prefix="sessionq-run")
        return self._pool

    def _call(self, p: Prepared, sq: Any, started: float) -> None:
        run = p.run
        try:
            if p.fn is None:
                ended = run_command(self.host, p, None)
            else:
                set_current(p.ctx)
                try:
                    result = p.fn(*p.args, **p.kwargs)
                finally:
                    set_current(None)
                ended = returned(p, result, self.host.settings.result_max_bytes)
        except BaseException as exc:  # noqa: BLE001 - the per-run boundary
            ended = judge(run.run_id, exc, run, run.timeout)
        self._end(run, run.run_id, run.queue, sq, started, ended)

    # -- the event loop -----------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                 name="sessionq-loop", daemon=True)  # fmt: skip
            self._loop_thread.start()
        return self._loop

    def _spawn_all(self, spawn: list[tuple[Prepared, Any, float]]) -> None:
        """(On the loop) start each async run as a task of its own; a stop cancels it."""
        loop = self._event_loop()
        for p, sq, started in spawn:
            task = loop.create_task(self._run_async(p, sq, started))
            if p.run.attach_interrupt(partial(_cancel, loop, task)) is not None:
                # stopped before it was spawned: cancelled after its first step, inside its
                # body (a task cancelled before that never enters it, and never ends the run)
                loop.call_soon(task.cancel)

    async def _run_async(self, p: Prepared, sq: Any, started: float) -> None:
        run = p.run
        assert p.fn is not None
        timer = None
        if run.timeout:
            timer = asyncio.get_running_loop().call_later(run.timeout, run.request_stop,
                                                          StopReason.TIMEOUT)  # fmt: skip
        set_current(p.ctx)  # (this task's own context)
        try:
            result = await p.fn(*p.args, **p.kwargs)
            ended = returned(p, result, self.host.settings.result_max_bytes)
        except asyncio.CancelledError:
            ended = encoded(interrupted(run.reason or StopReason.SHUTDOWN, run.timeout))
        except BaseException as exc:  # noqa: BLE001 - the per-run boundary
            ended = judge(run.run_id, exc, run, run.timeout)
        finally:
            if timer is not None:
                timer.cancel()
        self._end(run, run.run_id, run.queue, sq, started, ended)

    def close(self) -> None:
        """After the last run ended: stop the loop and the pool."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            if not self._loop.is_running():
                self._loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None], reason: str) -> None:
    loop.call_soon_threadsafe(task.cancel)


def raise_shutdown() -> None:
    """SIGINT came as the run was taken up: it does not begin."""
    from sessionq.worker.execute import RunInterrupted

    raise RunInterrupted(StopReason.SHUTDOWN)
