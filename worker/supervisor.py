"""`sessionq worker --concurrency N`: N worker processes under one supervisor, which
replaces a process that dies (giving back its runs at once, or as soon as Redis takes it) and
relays stop signals."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from redis.exceptions import RedisError

from sessionq.common.connection import (
    Backoff,
    check_eviction_policy,
    connect,
    redis_unavailable,
)
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings

log = logging.getLogger(__name__)
POLL_S = 0.2
RESTART_BACKOFF_MAX_S = 10.0
GIVE_UP_TRIES = 10  # a stopping supervisor's tries at giving back the runs of dead children


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    queues: list[str]
    allow_commands: bool
    burst: bool
    name: str | None
    cores: float | None
    ram: float | None
    imports: list[str]


def child_name(base: str, pid: int) -> str:
    return f"{base}.{pid}"


def _child(
    settings: Settings, opts: WorkerOptions, base: str, parent: int, command_pgid: Any
) -> None:
    from sessionq.worker.loop import SessionWorker
    from sessionq.worker.registry import import_modules

    import_modules(opts.imports)
    w = SessionWorker(
        settings, queues=opts.queues, allow_commands=opts.allow_commands,
        name=child_name(base, os.getpid()), cores=opts.cores, ram=opts.ram, hard_kill=True,
    )  # fmt: skip
    w.parent_pid = parent
    w.command_pgid = command_pgid
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
        # per slot: the process group of the command its child is running (0: none)
        self.pgids = [self.ctx.Value("i", 0, lock=False) for _ in range(concurrency)]
        self.signals = 0
        self._scripts: Scripts | None = None
        # the runs of dead children still to give back (worker name -> reason), tried again
        # after a backoff while Redis is away or says "try later"
        self._lost: dict[str, str] = {}
        self._backoff = Backoff(log, f"supervisor {self.base}", first_s=POLL_S)
        self._next_recover = 0.0

    def _start(self, slot: int) -> None:
        proc = self.ctx.Process(
            target=_child,
            args=(self.settings, self.opts, self.base, os.getpid(), self.pgids[slot]),
            name=f"sessionq-worker-{slot}", daemon=False,
        )  # fmt: skip
        proc.start()
        self.children[slot] = proc

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
            if self._scripts is None:
                self._scripts = Scripts(connect(self.settings, check=False), self.settings)
            for name, reason in list(self._lost.items()):
                recover_worker(self._scripts, name, reason)
                del self._lost[name]
            self._backoff.succeeded()
        except Exception as exc:  # noqa: BLE001 - the reaper will recover them later
            if redis_unavailable(exc):  # not now: again after a backoff (no sleep here)
                self._next_recover = time.monotonic() + self._backoff.failed(exc)
                return
            log.exception("could not recover the runs of %s", ", ".join(self._lost))
            self._lost.clear()

    def run(self) -> int:
        self.check_redis()
        signal.signal(signal.SIGTERM, self._relay)
        signal.signal(signal.SIGINT, self._relay)
        for slot in range(self.concurrency):
            self._start(slot)
        log.info("supervisor %s: %d worker process(es)", self.base, self.concurrency)
        failures = 0
        status = 0
        # when every child has ended, the runs of the dead ones are given back before leaving,
        # but not for ever while Redis cannot take it: the reaper will, later
        while self.children or (self._lost and self._backoff.failures < GIVE_UP_TRIES):
            time.sleep(POLL_S)
            self._recover()
            for slot, proc in list(self.children.items()):
                if proc.is_alive():
                    continue
                proc.join()
                del self.children[slot]
                code = proc.exitcode
                if code == 0 and (self.signals or self.opts.burst):
                    continue
                if self.pgids[slot].value:
                    # its command's process group must not outlive it
                    try:
                        os.killpg(self.pgids[slot].value, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    self.pgids[slot].value = 0
                if code != 0:
                    log.error("worker process %s exited with %s", proc.pid, code)
                    name = child_name(self.base, proc.pid or 0)
                    self._lost[name] = f"worker {name} died (exit code {code})"
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

    def check_redis(self) -> None:
        """Warn unless Redis's maxmemory-policy is noeviction (where the ACL lets us see it)."""
        client = connect(self.settings, check=False)
        try:
            check_eviction_policy(client, log)
        except (RedisError, OSError) as exc:  # a warning only: the workers report Redis
            log.debug("could not read Redis's maxmemory-policy: %s", exc)
        finally:
            client.close()
