"""`SessionWorker`: one worker process's loop over RQ's data, one round trip per run.

Per run the loop makes one script call (common/lua/run.lua): it finishes the run just ran and,
when the worker holds no more, claims and starts the next small batch in the same call - onto
a list that names this worker, so a run is never lost between dequeue and start. Finishes
are pipelined: their replies are read before the next claim. Functions run in
this process - no fork per run - and an Interrupter or a process-group kill ends them on a
timeout or a stop. The watcher thread (worker.watch) heartbeats, takes stop commands and
recovers lost workers. Each run in flight is a CurrentRun (worker.current), the one thing of
it that other threads reach; with `max_jobs` > 1 the runs go to worker.inflight's event loop
and thread pool while this loop steps as above.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from sessionq.common import codec
from sessionq.common.connection import Backoff, connect, redis_unavailable, sync_reply
from sessionq.common.errors import CodecError, ConfigError
from sessionq.common.events import EventType
from sessionq.common.jobhash import parse_meta
from sessionq.common.keys import CONTROL_QUEUE, DEFAULT_QUEUE, command_queue_for, session_of
from sessionq.common.rqcompat import load_rq, rq_home
from sessionq.common.scripts import Finish, Scripts, StartResult, handed_run
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Outcome, Status, StepResult
from sessionq.worker.context import set_current
from sessionq.worker.current import CurrentRun, StopReason, interrupted
from sessionq.worker.execute import (
    RUN_ENVIRONMENT,
    Interrupter,
    RunInterrupted,
    call_function,
)
from sessionq.worker.inflight import BATCH_WINDOW_S, InFlight
from sessionq.worker.ops import Op
from sessionq.worker.prepare import (
    Ended,
    encoded,
    judge,
    prepare,
    returned,
    run_command,
    stopped_unrun,
)

log = logging.getLogger(__name__)
IDLE_WAIT_S = 1
REDIS_BACKOFF_MAX_S = 5.0
MAX_UNANSWERED = 64
# Finishes of very short runs (on average under half FINISHES_HELD_S) are held back and sent
# together, one step for up to FINISHES_HELD_MAX of them, or once the oldest has waited
# FINISHES_HELD_S: a step's fixed cost and its one write per key and session (registries,
# counts, history) are shared by them all. Only a worker under a supervisor holds any: it
# shares the run it runs with its supervisor (supervisor.Shared), which says which one that was
# should the process die, so that its runs are charged exactly as if each finish had been sent
# (recover.lua); each step tells Redis whether the worker may go on past the run it names
# without a word (`holds`).
# A run of a function not known to be as short (its own average) sends them before it begins:
# finishes are never held behind a long run.
FINISHES_HELD_MAX = 32
FINISHES_HELD_S = 0.002
FUNCTIONS_TIMED_MAX = 1000  # functions whose average run time a worker keeps
CANCEL_IDS_MAX = 10_000  # stops kept for runs not begun (stop_current), oldest dropped past it
RQ_IDLE, RQ_SUSPENDED = "idle", "suspended"


class _HeldNotSent(BaseException):
    """(inside a run's boundary) Redis failed as the finishes held were sent before the run's
    body: not the run's failure - _execute raises the cause to the loop."""


# RQ's worker states (rq info), not a run's
Ready = tuple[str, str, Any, Any, Any, int]  # run id, queue, data, sq, timeout, attempt


def _run_coroutine(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(fn(*args, **kwargs))


def _prerun_fatal(sq: Any) -> bool:
    """Does a run's meta say a failure before its body stops the session?"""
    try:
        return bool(parse_meta(sq).get("prerun_fatal"))
    except CodecError:
        return False


class SessionWorker:
    """A worker process: serves the control queue first, then its queues (of a namespace of
    several partitions, keys.Layout: worker.partitioned.PartitionedWorker)."""

    partitioned = False  # serves every partition of a partitioned namespace (PartitionedWorker)

    def __init__(
        self,
        settings: Settings,
        *,
        queues: list[str] | None = None,
        allow_commands: bool = False,
        name: str | None = None,
        cores: float | None = None,
        ram: float | None = None,
        hard_kill: bool = False,
        max_jobs: int = 1,
    ) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs!r}")
        if settings.partition_count > 1 and not self.partitioned:
            raise ConfigError(
                f"{settings.partition_count} partitions: a SessionWorker serves one; make the "
                "worker with sessionq.worker.partitioned.worker_class(settings) (as `sessionq "
                "worker` does)"
            )
        self.settings = settings
        load_rq(rq_home(settings))
        self.redis = connect(settings.for_worker())
        self.scripts = Scripts(self.redis, settings)
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:4]}"
        user_queues = queues or [DEFAULT_QUEUE]
        self.queues = [CONTROL_QUEUE, *user_queues]
        if allow_commands:
            self.queues += [command_queue_for(q) for q in user_queues]
        self.allow_commands = allow_commands
        self.cores, self.ram = cores, ram
        self.hard_kill = hard_kill
        self.head = self.scripts.worker_head(self.name, self.queues)
        # an idle worker waits on its inbox (runs an enqueue started for it) and the wakes
        self.inbox, self.wait_keys = self._wait_keys()
        self.waits = True  # lists itself as waiting idle when a claim finds nothing
        self.ready: deque[Ready] = deque()  # started for us, to run in this order
        # held by a stop (any thread) and by the main thread as it takes a run up or lets it
        # go, so that a stop finds its run either waiting in `ready` or in flight; reentrant:
        # the SIGINT handler runs on the main thread, maybe inside the held section
        self.take_lock = threading.RLock()
        self.unacked: deque[Finish] = deque()  # finishes sent, reply not read yet
        self.held: list[Finish] = []  # finishes not sent yet (FINISHES_HELD_MAX)
        self.held_since = 0.0  # when the oldest of them was held (time.monotonic)
        self.run_s: dict[str, float] = {}  # a function's average run time (s), by name
        self._func = ""  # the function of the run being run
        # (a partitioned worker steps in every partition: it holds none)
        self.may_hold = not self.partitioned and max_jobs == 1
        self.holds = False  # what the last step said: finishes may be held back (_holds)
        # runs stopped before they began: id -> reason; each ends unrun when its turn comes
        # (in `ready`, or still on its way: handed to our inbox, in a step reply not read)
        self.cancel_ids: dict[str, str] = {}
        self.lost_connection = False
        self.batch = 1
        self.avg_run_s = 0.01
        self.interrupter = Interrupter()  # ends a function on the main thread (--max-jobs 1)
        self.shutting_down = False
        self.hard_stop = False
        # the runs in flight, by id (under take_lock): what stops and the watcher reach
        self.inflight: dict[str, CurrentRun] = {}
        # --max-jobs N > 1: the pool and event loop running them (None: the main thread)
        self.runner = InFlight(self, max_jobs) if max_jobs > 1 else None
        self.runs_done = 0
        self.runs_claimed = 0  # runs and operations claimed (or started after a lost reply)
        self.parents_ended = 0  # finishes whose waiting runs were judged (some may be queued)
        self.parent_pid = 0  # set when a supervisor started this process
        # shared with the supervisor: the current run, its deadline and its command's process
        # group (supervisor.Shared)
        self.shared: Any = None
        # RQ's per-worker counters, added to its worker hash with each heartbeat
        self.counts = {"successful_job_count": 0, "failed_job_count": 0}
        self._rq_worker: Any = None
        self._was_suspended = False
        self._claim_refused = False  # the last step's claim was refused by `rq suspend`
        self._watcher: Any = None

    def _wait_keys(self) -> tuple[str, list[str]]:
        """Its inbox, and what it waits on idle: the inbox and its queues' wake lists."""
        inbox = self.scripts.keys.worker_inbox(self.name)
        return inbox, [inbox, *(self.scripts.keys.wake(q) for q in self.queues)]

    def held_runs(self) -> list[str]:
        """The runs its runs list holds (claimed or started for it)."""
        held = sync_reply(self.redis.lrange(self.scripts.keys.worker_runs(self.name), 0, -1))
        return [codec.text(i) for i in held]

    # -- lifecycle -------------------------------------------------------------------------
    def register(self) -> bool:
        """Appear in RQ's worker registry (so `rq info` sees us) and in our heartbeat set."""
        from rq.worker import Worker

        from sessionq.common.codec import RQSerializer
        from sessionq.common.scripts.transport import server_of

        self.scripts.check_namespace()  # ConfigError: another SESSIONQ_PARTITIONS
        if self._rq_worker is None:  # (tried again after a Redis error: RQ's birth once)
            # (RQ takes one server's client: on a cluster, that of its worker hash's slot)
            home = server_of(self.redis, self.scripts.rq.worker(self.name))
            self._rq_worker = Worker(
                self.queues, name=self.name, connection=home, serializer=RQSerializer
            )
            self._rq_worker.register_birth()
        self.redis.hset(self.scripts.rq.worker(self.name), mapping=self.rq_fields())
        self.scripts.heartbeat(self.name)  # on Redis's clock, as every heartbeat
        return True

    def rq_fields(self) -> dict[FieldT, EncodableT]:
        """What its RQ worker hash says of it beyond RQ's own fields."""
        extra: dict[FieldT, EncodableT] = {"state": RQ_IDLE}
        if self.runner is not None:  # recovery charges this many started runs (recover.lua)
            extra["max_jobs"] = self.runner.max_jobs
        if self.cores:
            extra["cores"] = str(self.cores)
        if self.ram:
            extra["ram"] = str(self.ram)
        return extra

    def install_signals(self) -> None:
        """SIGTERM: finish the runs in flight, claim no more, then exit. A second SIGTERM, or
        SIGINT: stop the runs in flight and requeue them."""

        def on_term(signum: int, frame: object) -> None:
            if self.shutting_down or signum == signal.SIGINT:
                log.info("worker %s: stopping now: the runs in flight go back to their queues, "
                         "uncharged", self.name)  # fmt: skip
                self.stop_now(StopReason.SHUTDOWN)
            else:
                log.info("worker %s: finishing the runs in flight, then stopping", self.name)
                self.shutting_down = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def stop_now(self, reason: str) -> None:
        self.shutting_down = True
        self.hard_stop = True
        self.stop_current(reason)

    def stop_current(self, reason: str, run_id: str | None = None, *, held: bool = False) -> None:
        """End the runs in flight (only `run_id`, when given); a run started for us but not
        begun yet (in hand) is finished unrun when its turn comes. `held`: Redis says now
        that `run_id` is started for us (a stop operation read it: stop_held) - not in hand
        either, it is on its way (handed to our inbox, or started by a step whose reply
        comes after the stop's), and the stop is kept for it. Without `held` (RQ's stop-job,
        a deadline) a run not here has ended, or is not ours: a stop kept for it would
        cancel a later run of the same id (a restart, a retry)."""
        with self.take_lock:
            if run_id is None:
                runs = list(self.inflight.values())
            elif run_id in self.inflight:
                runs = [self.inflight[run_id]]
            else:
                if held or any(r[0] == run_id for r in tuple(self.ready)):
                    if len(self.cancel_ids) >= CANCEL_IDS_MAX:  # (ids of runs that never came)
                        del self.cancel_ids[next(iter(self.cancel_ids))]
                    self.cancel_ids[run_id] = reason
                return
            # (under take_lock: the main thread's interrupter serves no other run meanwhile)
            for run in runs:
                run.request_stop(reason)

    def stop_held(self, reason: str, run_id: str) -> None:
        """Stop `run_id`, which Redis says is started for this worker (a stop or destroy
        operation carried out here: worker.ops), wherever it is on its way to us."""
        self.stop_current(reason, run_id, held=True)

    def in_flight(self) -> list[CurrentRun]:
        """The runs in flight now (for the watcher)."""
        with self.take_lock:
            return list(self.inflight.values())

    def shut_down(self) -> None:
        """Finish the runs in flight, claim no more, then exit (any thread)."""
        self.shutting_down = True

    # -- the loop --------------------------------------------------------------------------
    def work(self, burst: bool = False) -> int:
        """Run until stopped (or, with burst, until the queues are empty); exit status."""
        from sessionq.worker.watch import Watcher

        self.waits = not burst  # a burst worker leaves when it finds nothing
        backoff = Backoff(log, f"worker {self.name}", first_s=0.1, cap_s=REDIS_BACKOFF_MAX_S)
        while not backoff.attempt(self.register, False, self._lost) and not self.shutting_down:
            pass
        self._watcher = Watcher(self)
        self._watcher.start()
        # What the process holds now (modules, the task modules, its connections) lives as
        # long as it does: out of the collector's full passes, which would walk it all again
        # every few thousand runs (gc.freeze's documentation; collected first, so that no
        # garbage of the start, a test's or an embedding program's, is kept for ever)
        gc.collect()
        gc.freeze()
        log.info("worker %s serving %s", self.name, ", ".join(self.queues))
        try:
            while not self.shutting_down or (self.runner is not None and self.runner.running):
                if self.lost_connection:
                    backoff.attempt(self._resend, None, self._lost)
                elif not backoff.attempt(lambda: self._turn(burst), True, self._lost):
                    break
        finally:
            self._leave()
        log.info("worker %s stopped after %d runs", self.name, self.runs_done)
        return 0

    def _lost(self) -> None:
        """Redis was lost or said "try later" (BUSY, OOM, ...): send again what went unanswered
        (_resend), a finish that got OOM too; forget the pipelined steps."""
        self.lost_connection = True
        self.scripts.close()

    def _leave(self) -> None:
        """Give back the runs started but not run (uncharged) and those only claimed, then
        unregister. If Redis is gone, the reaper does it later."""
        self._watcher.stop()  # no heartbeat may bring us back after we unregister
        try:
            self._take_inbox(unlist=True, leaving=True)
            self._collect(0)  # (a claim still unanswered adds its runs to those in hand)
            giveback = self._unheld() + self.give_back("worker shut down")
            if giveback or self.unacked or self.holds:
                # (holding nothing back past it: a run whose body ended the process - sys.exit
                # - is the started one left, and recovery charges it)
                self._finish(giveback, "")
            self._collect(0)
            from sessionq.worker.ops import recover_worker

            recover_worker(self.scripts, self.name, "worker stopped")  # leftovers, then leave
        except (RedisError, OSError) as exc:
            if not redis_unavailable(exc):
                raise
            log.error("worker %s: could not unregister (%s); the reaper will", self.name, exc)
        finally:
            if self.runner is not None:
                self.runner.close()
            RUN_ENVIRONMENT.restore()
            self.scripts.close()
            self.redis.close()

    def give_back(self, why: str) -> list[Finish]:
        """Take the runs in hand (started for us, not begun) out of `ready`: the finishes
        that give them back uncharged (`why`), or end one canceled that a stop meant for
        (any thread)."""
        with self.take_lock:
            held = list(self.ready)
            self.ready.clear()
            out: list[Finish] = []
            for r in held:
                reason = self.cancel_ids.pop(r[0], None)
                if reason is None:
                    out.append((r[0], r[1], Outcome.REQUEUE, codec.encode(why), 0))
                else:
                    out.append((r[0], r[1], *stopped_unrun(reason), 0))
        return out

    def _turn(self, burst: bool) -> bool:
        """One step of the loop; False when a burst worker has nothing left."""
        if self.runner is not None:
            return self.runner.turn(burst)
        finishes = self.held  # (kept there until sent: a Redis error keeps them for _resend)
        if self.ready:
            finishes.append(self._execute())
            if self.ready and not self.shutting_down and self._hold(finishes):
                return True
            self.held = []
            if self.ready or self.shutting_down:
                self._finish(finishes)
                return True
        self.held = []
        # nothing more in hand: finish the last run and claim the next ones in one call
        if self._claim(finishes):
            return True
        if self._suspended():
            if burst:
                log.info("worker %s: suspended (rq suspend), leaving (burst)", self.name)
                return False
            time.sleep(IDLE_WAIT_S)
            return True
        if burst:
            return False
        self.wait_idle()
        return True

    def _hold(self, finishes: list[Finish]) -> bool:
        """Hold back `finishes` (sent with a later one) rather than send them now? Only
        those of very short runs, at most FINISHES_HELD_MAX, none older than
        FINISHES_HELD_S, and only while they succeed (a failure, whose session may stop, is
        sent at once with those before it)."""
        if not self.holds or len(finishes) >= FINISHES_HELD_MAX:
            return False
        if finishes[-1][2] != Outcome.SUCCEEDED:
            return False
        if self.avg_run_s >= FINISHES_HELD_S / 2:
            return False
        now = time.monotonic()
        if len(finishes) == 1:
            self.held_since = now
        return now - self.held_since < FINISHES_HELD_S

    def _holds(self) -> bool:
        """Whether the step sent now says that finishes may be held back after it: a worker
        of one run at a time under a supervisor (which can tell which run it was running,
        were it lost: recover.lua) whose runs are very short."""
        self.holds = (self.may_hold and self.shared is not None
                      and self.avg_run_s < FINISHES_HELD_S / 2)  # fmt: skip
        return self.holds

    def _send_held(self, current: str) -> None:
        """Send the finishes held back now, `current` beginning, emptying the list they are
        held in (which the step of that run's end adds its own finish to)."""
        sent = list(self.held)
        self.held.clear()
        self._finish(sent, current)

    def _unheld(self) -> list[Finish]:
        """The finishes held back, taken (to be sent now)."""
        held, self.held = self.held, []
        return held

    def wait_idle(self) -> None:
        """Wait idle: an enqueue may start a run for us (our inbox), or wake us to claim."""
        popped = self.scripts.wait(self.wait_keys, IDLE_WAIT_S)
        if popped and codec.text(popped[0]) == self.inbox:
            handed = handed_run(popped[1])
            if handed[2] == StartResult.RUN:
                self.scripts.took_handed(self.name, handed[0], handed[6])
                self.holds = False  # (RQ's view names the run handed: prelude.lua `hand`)
            self._take([handed])

    def _suspended(self) -> bool:
        """Has `rq suspend` paused the workers? (Asked only when a claim found nothing: a
        suspended step claims nothing, does not wait idle and says so in its reply, see
        run.lua.) RQ's view of this worker says so while it lasts."""
        suspended = self._claim_refused  # (told by the claim's step: no EXISTS of our own)
        if suspended != self._was_suspended:
            self._was_suspended = suspended
            state = RQ_SUSPENDED if suspended else RQ_IDLE
            self.redis.hset(self.scripts.rq.worker(self.name), "state", state)
            log.info("worker %s: %s", self.name, "suspended by rq suspend" if suspended
                     else "resumed")  # fmt: skip
        return suspended

    def _claim(
        self, finishes: list[Finish], claim: int = 0, waits: bool | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:  # fmt: skip
        """Send `finishes` with a claim of the next batch (`claim` runs; 0: the adaptive
        batch); whether there may be more to do: something was claimed, or a finish released
        runs that waited on it (queued after this call's claim looked). `meanwhile` is
        called once every step sent before this one is answered, before this one's reply is
        read."""
        self.unacked.extend(finishes)
        # ('': the first run the claim starts - with runs in flight, one of them, so that RQ's
        # view and stats() show the worker busy)
        shown = next(iter(list(self.inflight)), "")
        self.scripts.step_send(self.head, self.name, finishes, [], shown, claim=claim or self.batch,
                               waits=self.waits if waits is None else waits,
                               holds=self._holds())  # fmt: skip
        before = (self.runs_claimed, self.parents_ended)
        if meanwhile is not None:
            self._collect(1)
            meanwhile()
        self._collect(0)
        return (self.runs_claimed, self.parents_ended) != before

    def _start(self, runs: list[tuple[str, str]]) -> None:
        """Start runs already on our list (after a lost reply), in one round trip."""
        # (RQ's current_job: the run it runs first - recovery charges that one, see recover.lua)
        current = self.ready[0][0] if self.ready else runs[0][0]
        self.scripts.step_send(self.head, self.name, [], runs, current, holds=self._holds())
        self._collect(0)

    def _shown(self) -> str:
        """The run RQ's view shows this worker on: the next ready one, else one in flight (a
        worker of --max-jobs runs), else none."""
        return self.ready[0][0] if self.ready else next(iter(list(self.inflight)), "")

    def _finish(self, finishes: list[Finish], current: str | None = None) -> None:
        """Send finishes without waiting; their replies are read before the next claim.
        `current`: the run the worker begins now (none held back past it), else the next
        ready one or one in flight, for RQ's view of it."""
        holds = False
        if current is None:
            current, holds = self._shown(), self._holds()
        self.holds = holds
        self.unacked.extend(finishes)
        self.scripts.step_send(self.head, self.name, finishes, [], current, holds=holds)
        if self.scripts.steps_unanswered > MAX_UNANSWERED:
            self._collect(MAX_UNANSWERED // 2)

    def _collect(self, keep: int) -> None:
        """Read step replies until at most `keep` are unanswered; the runs they started are
        ready in order, the control operations they claimed are carried out at once."""
        while self.scripts.steps_unanswered > keep:
            reply = self.scripts.step_receive()
            for run_id, _queue, result, terminating, waited_on in reply.finished:
                self.unacked.popleft()
                if self.cancel_ids:  # a stop that came as it ended
                    with self.take_lock:
                        self.cancel_ids.pop(run_id, None)
                if result == StepResult.SUCCEEDED:
                    self.counts["successful_job_count"] += 1
                elif result == StepResult.FAILED:
                    self.counts["failed_job_count"] += 1
                if waited_on:
                    # runs wait on this one, which ended: judge them now
                    from sessionq.worker.schedule import resolve_children

                    resolve_children(self.scripts, [run_id], self.name)
                    self.parents_ended += 1
                if terminating:
                    # the last run of a session being destroyed ended: carry out the destroy
                    from sessionq.worker.ops import destroy_session

                    destroy_session(self.scripts, session_of(run_id), worker_name=self.name,
                                    stop_local=self.stop_held)  # fmt: skip
            self._take(reply.started)
            self._claim_refused = reply.suspended

    def _take(self, started: list[tuple[str, str, str, Any, Any, Any, int]]) -> None:
        """Take up runs started for us (claimed, or handed to us while we waited): to run in
        order; control operations are carried out at once."""
        for run_id, queue, status, data, sq, timeout, attempt in started:
            self.runs_claimed += 1
            if status == StartResult.RUN:
                self.ready.append((run_id, queue, data, sq, timeout, attempt))
            elif status == StartResult.OP:
                from sessionq.worker.ops import run_op

                run_op(self, run_id)
            elif status == StartResult.GONE:
                # popped from a queue, and no such job: a run whose session was destroyed (or
                # whose RQ job was deleted) as it was claimed - nothing to run, nothing wrong
                log.info("worker %s: %s from queue %s skipped: no such run (%s)", self.name,
                         run_id, queue, data)  # fmt: skip
            elif status == StartResult.FOREIGN:
                # popped from a queue, and no sessionq run: said, never dropped in silence
                # (one RQ's own API enqueued is marked failed where RQ's readers look)
                log.error("worker %s: %s from queue %s is not a sessionq run (%s); marked failed",
                          self.name, run_id, queue, data)  # fmt: skip
            elif status == StartResult.BAD:
                # its run is on our runs list, started: _resend takes it up from there
                log.error("worker %s: %s", self.name, data)
                self.lost_connection = True
            else:
                log.debug("run %s not started (%s): %s", run_id, status, data)

    def _take_inbox(self, unlist: bool = False, *, leaving: bool = False) -> None:
        """Take up the runs in our inbox; with unlist, first stop waiting idle (in the same
        transaction), so that no enqueue hands us another one. Unless leaving (they are
        given back), each run taken shows its start (took.lua)."""
        pipe = self.redis.pipeline(transaction=True)
        if unlist:
            pipe.srem(self.scripts.keys.idle_workers(), self.name)
            for q in self.queues[1:]:  # not the control queue: no one waits on it
                pipe.lrem(self.scripts.keys.idle(q), 0, self.name)
        pipe.lrange(self.inbox, 0, -1)
        pipe.delete(self.inbox)
        if leaving:
            pipe.delete(self.scripts.keys.worker_handed(self.name))
        entries = pipe.execute()[-3 if leaving else -2]
        handed = [handed_run(e) for e in entries]
        if not leaving:
            for run in handed:
                if run[2] == StartResult.RUN:
                    self.scripts.took_handed(self.name, run[0], run[6])
        self._take(handed)

    def _resend(self) -> None:
        """After a lost connection: send again the finishes nobody answered (the script
        ignores one it has already recorded), then take up the runs our list holds that we
        lost track of (a claim or start whose reply was lost; starting them again is safe)."""
        pending = list(self.unacked) + self._unheld()
        self.unacked.clear()
        if self.runner is not None:  # ended runs whose finish was not sent yet
            pending += self.runner.collect(0)
        if pending:
            self._finish(pending)
        self._collect(0)
        self._take_inbox(unlist=True)  # no run is handed to us until our next claim
        from sessionq.worker.ops import run_op

        with self.take_lock:  # (runs in flight, ended or not, are known until collected)
            known = {r[0] for r in self.ready} | set(self.inflight)
        orphans = [i for i in self.held_runs() if i not in known]
        if orphans:
            log.warning("worker %s: %d run(s) held after a lost reply", self.name, len(orphans))
            runs = self.scripts.with_queues(orphans)
            for run_id, queue in runs:
                if queue == CONTROL_QUEUE:
                    run_op(self, run_id)
            runs = [r for r in runs if r[1] != CONTROL_QUEUE]
            if runs:
                self._start(runs)
        self.lost_connection = False

    # -- one run (--max-jobs 1: on the main thread) ------------------------------------------
    def _execute(self) -> Finish:
        """Run the next ready run and say how it ended: (run id, queue, outcome, payload,
        duration ms)."""
        with self.take_lock:
            run_id, queue, data, sq, timeout, attempt = self.ready.popleft()
            reason = self.cancel_ids.pop(run_id, None)
            if reason is None:
                self.interrupter.reset()
                run = self._begin(run_id, queue, timeout, self.interrupter.request)
                if self.shared is not None:  # its supervisor enforces the deadline if we cannot
                    self.shared.share(run_id, run.deadline)
        if reason is not None:  # stopped before its turn came: it never runs
            return (run_id, queue, *stopped_unrun(reason), 0)
        started = time.perf_counter()
        try:
            outcome, payload = self._outcome(run, data, sq, run.timeout, attempt)
        except _HeldNotSent as lost:  # to the loop's backoff: _lost, then _resend
            raise cast("BaseException", lost.__cause__) from None
        finally:
            with self.take_lock:  # a stop meant for this run does not reach the next one
                if self.shared is not None:
                    self.shared.share("", None)
                del self.inflight[run_id]
        elapsed = time.perf_counter() - started
        self.ended(run_id, outcome, sq)
        self.avg_run_s = 0.8 * self.avg_run_s + 0.2 * elapsed
        if self.may_hold and self._func:
            if len(self.run_s) >= FUNCTIONS_TIMED_MAX and self._func not in self.run_s:
                self.run_s.clear()
            # (a long run counts at once: the finishes held wait for no run like it)
            last = self.run_s.get(self._func, elapsed)
            self.run_s[self._func] = max(elapsed, 0.8 * last + 0.2 * elapsed)
        fits = int(BATCH_WINDOW_S / max(self.avg_run_s, 1e-6))
        self.batch = max(1, min(self.settings.claim_batch_max, fits))
        return (run_id, queue, outcome, payload, int(elapsed * 1000))

    def _begin(
        self, run_id: str, queue: str, timeout: Any, interrupt: Callable[[str], None] | None
    ) -> CurrentRun:
        """Make `run_id` in flight (under take_lock): from now on a stop reaches it."""
        run = CurrentRun(run_id, queue, float(timeout) if timeout else None, interrupt)
        self.inflight[run_id] = run
        return run

    def ended(self, run_id: str, outcome: str, sq: Any) -> None:
        """A run ended (on the main thread): count it; one that failed before its body ran
        stops its session, unless the session silences that."""
        self.runs_done += 1
        if outcome == Outcome.REJECTED and _prerun_fatal(sq):
            sid = session_of(run_id)
            log.error("run %s failed before it started: stopping session %s", run_id, sid)
            self.scripts.request(sid, Op.STOP, [sid], status=Status.FAILED,
                                 event=EventType.SESSION_FAILED, worker=self.name)  # fmt: skip

    def _outcome(
        self, run: CurrentRun, data: bytes, sq: bytes, timeout: float | None, attempt: int
    ) -> Ended:
        try:
            if self.hard_stop:  # SIGINT came as the run was taken up: it does not begin
                return encoded(interrupted(StopReason.SHUTDOWN, timeout))
            self._func = ""
            p = prepare(self, run, data, sq, timeout, attempt)
            self._func = p.func
            if self.held and self.run_s.get(p.func, 1.0) >= FINISHES_HELD_S / 2:
                try:
                    self._send_held(run.run_id)  # (not behind a run that may be long)
                except (RedisError, OSError) as exc:  # not the run's failure: the loop's
                    raise _HeldNotSent from exc
            if p.fn is None:
                return run_command(self, p, self._note_pgid)
            fn = p.fn
            if p.is_async:  # one async run at a time: on a loop of its own, to its end
                fn = partial(_run_coroutine, p.fn)
            set_current(p.ctx)
            try:
                result = call_function(fn, p.args, p.kwargs, p.env, timeout, self.interrupter)
            finally:
                set_current(None)
            return returned(p, result, self.settings.result_max_bytes)
        except (RunInterrupted, Exception) as exc:  # the per-run boundary: the worker lives on
            return judge(run.run_id, exc, None, timeout)

    def _note_pgid(self, pgid: int) -> None:
        if self.shared is not None:  # (its supervisor kills the group if this process dies)
            self.shared.pgid.value = pgid
