"""`sessionq worker --concurrency N`: N worker processes under one supervisor, which
replaces a process that dies (giving back its runs at once), relays stop signals, vouches
for its live children (heartbeats for them) and enforces their runs' deadlines by signal -
a child whose own threads cannot run (a C call holding the GIL) is neither lost nor late. The
runs of a dead child go back at once, or as soon as Redis takes them."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from redis.exceptions import RedisError

from sessionq.common import codec
from sessionq.common.connection import (
    Backoff,
    check_eviction_policy,
    connect,
    redis_unavailable,
)
from sessionq.common.keys import CONTROL_QUEUE, DEFAULT_QUEUE
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Outcome

log = logging.getLogger(__name__)
POLL_S = 0.2
RESTART_BACKOFF_MAX_S = 10.0
GIVE_UP_TRIES = 10  # a stopping supervisor's tries at giving back the runs of dead children
OVERRAN = "timeout: the run ignored its deadline (killed by its supervisor)"
RUN_ID_MAX_BYTES = 256  # a longer run id is not shared: its child alone enforces its deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    queues: list[str]
    allow_commands: bool
    burst: bool
    name: str | None
    cores: float | None
    ram: float | None
    imports: list[str]
    max_jobs: int = 1


class Shared:
    """What one slot's child shares with its supervisor, in shared memory: the process group
    of the command it runs (0: none), and its current run with that run's deadline
    (time.monotonic(), the same clock in every process of the host; inf: none; 0: no run)."""

    def __init__(self, ctx: Any) -> None:
        self.pgid = ctx.Value("i", 0, lock=False)
        self.deadline = ctx.Value("d", 0.0, lock=False)
        self.run = ctx.Array("c", RUN_ID_MAX_BYTES, lock=False)

    def share(self, run_id: str, deadline: float | None) -> None:
        """In the child: the run it begins (deadline last), or none ("", deadline first)."""
        raw = run_id.encode()
        if not raw or len(raw) >= RUN_ID_MAX_BYTES:
            self.deadline.value = 0.0
            self.run.value = b""
            return
        self.run.value = raw
        self.deadline.value = math.inf if deadline is None else deadline

    def current(self) -> str:
        """In the supervisor, once the child is gone: the run it was running ("": none)."""
        return bytes(self.run.value).decode() if self.deadline.value else ""

    def overdue(self, now: float, grace: float) -> str | None:
        """In the supervisor: the run past its deadline by `grace`, if any. The deadline is
        read on both sides of the run id: a run id read while the child changed runs is
        never taken for another run's."""
        first = self.deadline.value
        run_id = self.run.value
        if not first or first != self.deadline.value or now <= first + grace:
            return None
        return bytes(run_id).decode() or None


def child_name(base: str, pid: int) -> str:
    return f"{base}.{pid}"


def _child(settings: Settings, opts: WorkerOptions, base: str, parent: int, shared: Shared) -> None:
    from sessionq.worker.partitioned import worker_class
    from sessionq.worker.registry import import_modules

    import_modules(opts.imports)
    w = worker_class(settings)(
        settings, queues=opts.queues, allow_commands=opts.allow_commands,
        name=child_name(base, os.getpid()), cores=opts.cores, ram=opts.ram, hard_kill=True,
        max_jobs=opts.max_jobs,
    )  # fmt: skip
    w.parent_pid = parent
    w.shared = shared
    w.install_signals()
    raise SystemExit(w.work(burst=opts.burst))


class Supervisor:
    def __init__(self, settings: Settings, opts: WorkerOptions, concurrency: int) -> None:
        self.settings = settings
        self.opts = opts
        self.concurrency = concurrency
        self.base = opts.name or f"{socket.gethostname()}.{os.getpid()}"
        self.ctx = multiprocessing.get_context("fork")
        self.children: dict[int, BaseProcess] = {}
        # per slot: its child's command process group, current run and deadline
        self.shared = [Shared(self.ctx) for _ in range(concurrency)]
        # per slot: the name of its live child, for the voucher (the main thread keeps it)
        self.live: dict[int, str] = {}
        # per slot: the run its child was killed for overrunning, to record once it is gone
        self.overran: dict[int, str] = {}
        self.signals = 0
        self._scripts: Scripts | None = None
        self._voucher = Voucher(settings, self)
        # the runs of dead children still to give back (worker name -> reason, and the run it
        # was running: "" none, None not known - a child of several runs in flight), tried
        # again after a backoff while Redis is away or says "try later"
        self._lost: dict[str, tuple[str, str | None]] = {}
        self._backoff = Backoff(log, f"supervisor {self.base}", first_s=POLL_S)
        self._next_recover = 0.0

    def _start(self, slot: int) -> None:
        self.shared[slot].share("", None)
        proc = self.ctx.Process(
            target=_child,
            args=(self.settings, self.opts, self.base, os.getpid(), self.shared[slot]),
            name=f"sessionq-worker-{slot}", daemon=False,
        )  # fmt: skip
        proc.start()
        self.children[slot] = proc
        assert proc.pid is not None
        self.live[slot] = child_name(self.base, proc.pid)

    def _enforce(self) -> None:
        """Kill a child whose run is past its deadline by the grace period and then some
        (the child's own watcher ends it at deadline + grace when it can run): the run is
        recorded failed by timeout once the child is gone (`_record_overrun`)."""
        now, settings = time.monotonic(), self.settings
        grace = settings.stop_grace_s + settings.heartbeat_interval_s
        for slot, proc in self.children.items():
            run_id = self.shared[slot].overdue(now, grace)
            if run_id is None or slot in self.overran or proc.pid is None:
                continue
            log.error("run %s of worker process %s is %gs past its deadline; killing it",
                      run_id, proc.pid, grace)  # fmt: skip
            self.overran[slot] = run_id
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _record_overrun(self, name: str, run_id: str) -> None:
        """The run a killed child overran ends failed by timeout, as its own watcher would
        have recorded it (a run already ended is left as it is: the step finds it stale)."""
        scripts = self._connected()
        origin = scripts.redis.hget(scripts.rq.job(run_id), "origin")
        queue = codec.text(origin) if origin else next(
            (q for q in self.opts.queues if q != CONTROL_QUEUE), DEFAULT_QUEUE)  # fmt: skip
        reason = codec.encode(OVERRAN)
        scripts.step_now(scripts.worker_head(name, [queue]), name,
                         [(run_id, queue, Outcome.FAILED, reason, 0)])  # fmt: skip

    def _connected(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(connect(self.settings.for_worker(), check=False), self.settings)
        return self._scripts

    def _relay(self, signum: int, frame: object) -> None:
        self.signals += 1
        hard = signum == signal.SIGINT or self.signals > 1
        for proc in self.children.values():
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signal.SIGINT if hard else signal.SIGTERM)

    def _recover(self) -> None:
        """Children died without leaving cleanly: give their runs back now, not at heartbeat
        expiry (the same script the reaper uses); while Redis cannot take it, again later."""
        from sessionq.worker.ops import recover_worker

        if not self._lost or time.monotonic() < self._next_recover:
            return
        try:
            for name, (reason, current) in list(self._lost.items()):
                recover_worker(self._connected(), name, reason, current=current)
                del self._lost[name]
            self._backoff.succeeded()
        except Exception as exc:  # noqa: BLE001 - the reaper will recover them later
            if redis_unavailable(exc):  # not now: again after a backoff (no sleep here)
                self._next_recover = time.monotonic() + self._backoff.failed(exc)
                return
            log.exception("could not recover the runs of %s", ", ".join(self._lost))
            self._lost.clear()

    def check_redis(self) -> None:
        """Warn unless Redis's maxmemory-policy is noeviction (where the ACL lets us see it)."""
        client = connect(self.settings.for_worker(), check=False)
        try:
            check_eviction_policy(client, log)
        except (RedisError, OSError) as exc:  # a warning only: the workers report Redis
            log.debug("could not read Redis's maxmemory-policy: %s", exc)
        finally:
            client.close()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._relay)
        signal.signal(signal.SIGINT, self._relay)
        self.check_redis()
        for slot in range(self.concurrency):
            self._start(slot)
        self._voucher.start()
        log.info("supervisor %s: %d worker process(es)", self.base, self.concurrency)
        try:
            return self._watch()
        finally:
            self._voucher.stop()

    def _pause(self) -> None:
        """Wait POLL_S, or less: until a child ends (a burst drain ends as its last worker
        does, not up to POLL_S later)."""
        sentinels = [proc.sentinel for proc in self.children.values()]
        if sentinels:
            wait(sentinels, timeout=POLL_S)
        else:
            time.sleep(POLL_S)

    def _watch(self) -> int:
        failures = 0
        status = 0
        # when every child has ended, the runs of the dead ones are given back before leaving,
        # but not for ever while Redis cannot take it: the reaper will, later
        while self.children or (self._lost and self._backoff.failures < GIVE_UP_TRIES):
            self._pause()
            self._recover()
            self._enforce()
            for slot, proc in list(self.children.items()):
                if proc.is_alive():
                    continue
                proc.join()
                del self.children[slot]
                self.live.pop(slot, None)
                code = proc.exitcode
                if code == 0 and (self.signals or self.opts.burst):
                    continue
                pgid = self.shared[slot].pgid
                if pgid.value:
                    # its command's process group must not outlive it
                    try:
                        os.killpg(pgid.value, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    pgid.value = 0
                overran = self.overran.pop(slot, None)
                # it died, or it exited unasked (os._exit in a task): its runs go back
                log.error("worker process %s exited with %s%s", proc.pid, code,
                          " unasked" if code == 0 else "")  # fmt: skip
                name = child_name(self.base, proc.pid or 0)
                # the run it was running, which used up an attempt (the runs before it
                # on its list ended, their finishes held back: recover.lua)
                current = self.shared[slot].current() if self.opts.max_jobs == 1 else None
                self._lost[name] = (f"worker {name} died (exit code {code})", current)
                if overran is not None and self.opts.max_jobs == 1:
                    # recovery charges it: the one that overran
                    self._lost[name] = (OVERRAN, overran)
                elif overran is not None:
                    try:
                        self._record_overrun(name, overran)
                    except Exception:  # noqa: BLE001 - recovered as lost instead
                        log.exception("could not record run %s as timed out", overran)
                self._recover()
                if self.signals:
                    status = status or (code if code and code > 0 else 0)
                    continue
                failures += 1
                time.sleep(min(RESTART_BACKOFF_MAX_S, 0.1 * 2 ** min(failures, 7)))
                if self.signals:  # told to stop while backing off: no new process
                    continue
                self._start(slot)
        if self._lost:
            log.error("supervisor %s: left the runs of %s to the reaper", self.base,
                      ", ".join(self._lost))  # fmt: skip
        return status


class Voucher(threading.Thread):
    """The supervisor's heartbeats for its live children (heartbeat.lua `vouch`): a child
    whose own watcher cannot run - a C call holding the GIL - is alive, and must not be
    declared lost and its run started a second time. Only a registered child is kept: a
    child that left or was recovered is never brought back."""

    def __init__(self, settings: Settings, supervisor: Supervisor) -> None:
        super().__init__(name="voucher", daemon=True)
        self.settings = settings
        self.supervisor = supervisor
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        scripts: Scripts | None = None
        interval = self.settings.heartbeat_interval_s
        while not self._stopping.wait(interval):
            try:
                if scripts is None:
                    scripts = Scripts(
                        connect(self.settings.for_worker(), check=False), self.settings
                    )
                for name in list(self.supervisor.live.values()):
                    scripts.heartbeat(name, vouch=True)
            except (RedisError, OSError) as exc:  # the children heartbeat on their own too
                log.warning("supervisor: could not vouch for its workers (%s)", exc)
        if scripts is not None:
            scripts.redis.close()
