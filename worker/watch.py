"""The watcher thread of a worker process: heartbeats, RQ's stop commands, the reaper, the
scheduler's ticks, and the last resort for a run that ignores its stop. It backs off while
Redis is away or says "try later"; if it ends for any other reason than its stop, it ends the
process (never a half-alive worker: its supervisor replaces it and gives its runs back)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Protocol

from redis.exceptions import RedisError

from sessionq.common import codec
from sessionq.common.connection import RETRY_BACKOFF_CAP_S, Backoff, redis_unavailable
from sessionq.common.scripts import Finish, WorkerHead
from sessionq.common.vocabulary import Outcome
from sessionq.worker.current import CurrentRun, StopReason
from sessionq.worker.host import WorkerHost
from sessionq.worker.ops import reap
from sessionq.worker.schedule import Scheduler


class WatchedWorker(WorkerHost, Protocol):
    """What the watcher reads of its worker (SessionWorker is one): who it is, its runs in
    flight (each a CurrentRun, asked whether it is overdue), and how to stop them or it."""

    counts: dict[str, int]
    held: list[Finish]  # finishes of runs that ended, held back (worker.loop FINISHES_HELD_MAX)

    @property
    def head(self) -> WorkerHead: ...

    @property
    def parent_pid(self) -> int: ...

    @property
    def hard_kill(self) -> bool: ...

    def in_flight(self) -> list[CurrentRun]: ...

    def stop_current(self, reason: str, run_id: str | None = None) -> None: ...

    def shut_down(self) -> None: ...

    def give_back(self, why: str) -> list[Finish]: ...

    @property
    def take_lock(self) -> threading.RLock: ...


log = logging.getLogger(__name__)
EXIT_HARD_KILLED = 70
EXIT_WATCHER_DIED = 71
WAKE = b'{"command": "wake"}'  # what stop() sends the thread's own channel


class Watcher(threading.Thread):
    def __init__(self, worker: WatchedWorker) -> None:
        super().__init__(name=f"watcher-{worker.name}", daemon=True)
        self.worker = worker
        self._stopping = threading.Event()
        self._next_reap = 0.0
        self.beats = 0

    def stop(self) -> None:
        """End the thread and wait for it; a message on its channel wakes it at once (it
        may be waiting up to a quarter of a second for one)."""
        self._stopping.set()
        if self.is_alive():
            try:
                w = self.worker
                w.redis.publish(w.scripts.rq.worker_channel(w.name), WAKE)
            except (RedisError, OSError):
                pass  # Redis is gone: it notices within its wait
        self.join(timeout=5)

    def run(self) -> None:
        try:
            self._watch()
        finally:
            if not self._stopping.is_set():
                # an unexpected error (logged here: the excepthook would come too late) or an
                # early return: without this thread nobody heartbeats, stops runs or enforces
                # deadlines, and a reaper would run this worker's runs again elsewhere
                log.critical("worker %s: its watcher thread ended; exiting the process",
                             self.worker.name, exc_info=sys.exc_info()[0] is not None)  # fmt: skip
                logging.shutdown()
                os._exit(EXIT_WATCHER_DIED)

    def _watch(self) -> None:
        w = self.worker
        channel = w.scripts.rq.worker_channel(w.name)
        pubsub = None
        interval = w.settings.heartbeat_interval_s
        next_beat = next_tick = 0.0
        # (one per partition, keys.Layout: each its own lock, schedule and waiting runs)
        schedulers = [Scheduler(part, w.name, w.scripts) for part in w.scripts.parts]
        # at most a heartbeat interval between tries: beats resume as soon as Redis does
        backoff = Backoff(log, f"watcher {w.name}", cap_s=min(interval, RETRY_BACKOFF_CAP_S))
        while not self._stopping.is_set():
            try:
                if pubsub is None:
                    pubsub = w.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
                    pubsub.subscribe(channel)
                now = time.monotonic()
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = now + interval
                if now >= self._next_reap:
                    self._next_reap = now + w.settings.reap_interval_s
                    self.reap()
                if now >= next_tick:
                    next_tick = now + w.settings.scheduler_interval_s
                    try:
                        for scheduler in schedulers:
                            scheduler.tick()
                    except Exception as exc:  # noqa: BLE001 - the scheduler must not stop heartbeats
                        if redis_unavailable(exc):
                            raise
                        log.exception("watcher %s: scheduler tick failed", w.name)
                self.enforce()
                if w.parent_pid and os.getppid() != w.parent_pid:
                    log.warning("worker %s: supervisor gone; stopping", w.name)
                    w.shut_down()
                wait = min(interval, 0.25, max(0.0, next_tick - time.monotonic()))
                message = pubsub.get_message(timeout=wait)
                if self._stopping.is_set():
                    break
                if message and message.get("type") == "message":
                    self.command(message["data"])
                backoff.succeeded()
            except (RedisError, OSError) as exc:
                if not redis_unavailable(exc):
                    raise
                if pubsub is not None:
                    pubsub.reset()
                pubsub = None
                self._stopping.wait(backoff.failed(exc))
        if pubsub is not None:
            pubsub.close()

    def heartbeat(self) -> None:
        """One heartbeat, on Redis's clock (heartbeat.lua), with RQ's counters."""
        w = self.worker
        counts = {name: n for name, n in w.counts.items() if n}
        w.scripts.heartbeat(w.name, counts)
        for name, n in counts.items():
            w.counts[name] -= n
        self.beats += 1

    def reap(self) -> None:
        """Recover the runs of workers whose heartbeat is a TTL old - judged in Redis, by its
        clock, and only once this worker's own heartbeats have landed steadily for that long
        (reap.lua). While Redis was away or frozen nobody's heartbeat landed: every one is
        old when it comes back, and judging them at once would take the runs of live workers
        (running them twice). So a reaper that was cut off (or just started) waits a TTL,
        plus the longest retry backoff a worker may still be sleeping in when Redis returns."""
        w = self.worker
        steady_s = w.settings.heartbeat_ttl_s + RETRY_BACKOFF_CAP_S
        reap(w.scripts, w.name, steady_s=steady_s, lock_s=w.settings.reap_interval_s)

    def command(self, raw: bytes) -> None:
        """RQ's worker commands (JSON, RQ's own format): stop-job, kill-horse, shutdown."""
        try:
            payload: dict[str, Any] = json.loads(raw)
        except ValueError:
            log.error("watcher: ignoring an unreadable command (%d bytes)", len(raw))
            return
        w, name = self.worker, payload.get("command")
        if name == "stop-job":
            w.stop_current("stopped", str(payload.get("job_id")))
        elif name == "kill-horse":
            w.stop_current("stopped")
        elif name == "shutdown":
            w.shut_down()
        else:
            log.warning("watcher: unknown command %r", name)

    def enforce(self) -> None:
        """Tell a run on a pool thread that its deadline passed (only `should_stop` reaches
        it); a run that outlives its deadline or its stop by the grace period: record how it
        ended (the others in flight go back unrun) and end this process (its supervisor
        starts a fresh one)."""
        w = self.worker
        runs = w.in_flight()
        if not runs:
            return
        now, grace = time.monotonic(), w.settings.stop_grace_s
        for run in runs:
            if run.interrupt is None and run.deadline is not None and now > run.deadline:
                if run.reason is None:
                    w.stop_current(StopReason.TIMEOUT, run.run_id)
        if not w.hard_kill:
            return
        overdue = [o for o in (run.overdue(now, grace) for run in runs) if o is not None]
        if not overdue:
            return
        for o in overdue:
            log.error("run %s did not end %gs after its %s; restarting the worker process",
                      o.run_id, grace,
                      "deadline" if o.outcome == Outcome.FAILED else "stop")  # fmt: skip
        late = {o.run_id for o in overdue}
        finishes: list[Finish] = [(o.run_id, o.queue, o.outcome, codec.encode(o.reason), 0)
                                  for o in overdue]  # fmt: skip
        # from here on the main thread claims and begins nothing; the runs in flight and
        # those in hand are taken in one go (a run begun after the look above is in flight
        # now, and would be on our list but in neither - and recovery would charge it)
        w.shut_down()
        with w.take_lock:
            runs = w.in_flight()
            # those in hand, not begun: off our list, or recovery would charge them (the
            # first max_jobs started runs on it once the ones below are off)
            held = w.give_back("worker restarted")
        for run in runs:  # the others: as they ended, or back unrun
            if run.run_id in late:
                continue
            ended = run.finish
            finishes.append(ended or (run.run_id, run.queue, Outcome.REQUEUE,
                                      codec.encode("worker restarted"), 0))  # fmt: skip
        finishes.extend(held)
        # the finishes of runs that ended, held back (worker.loop FINISHES_HELD_MAX): first
        w.scripts.step_now(w.head, w.name, [*w.held, *finishes])
        os._exit(EXIT_HARD_KILLED)
