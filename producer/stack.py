"""A Redis (embedded when none is configured, SPEC §7) and worker processes, for `up` and
`demo`; everything it starts, it stops."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from redis import Redis

from sessionq.common.connection import connect, sync_reply
from sessionq.common.errors import ConfigError
from sessionq.common.keys import Layout
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopSignal(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) to a Stack's process: an interruption."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


class Stack:
    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        allow_commands: bool = True,
        imports: list[str] | None = None,
        queues: list[str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.log_level = log_level
        self.queues = queues or []  # none: the workers' default
        self.settings = settings
        self.workers = workers
        self.allow_commands = allow_commands
        self.imports = imports or []
        self.server: RedisServer | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._saved_handlers: dict[int, Any] = {}

    def __enter__(self) -> Stack:
        self._take_signals()
        try:
            if not self.settings.url_configured:
                self.server = RedisServer().start()
                self.settings = self.settings.with_url(self.server.url)
                log.info("embedded Redis on %s (%s)", self.server.url, self.server.binary)
            self._start_workers()
        except BaseException:
            self.close()
            raise
        return self

    def _start_workers(self) -> None:
        s = self.settings
        cmd = [sys.executable, "-m", "sessionq", "--prefix", s.prefix,
               "--user", s.user, "--log-level", self.log_level, "worker",
               "--concurrency", str(self.workers)]  # fmt: skip
        if self.allow_commands:
            cmd.append("--allow-commands")
        for module in self.imports:
            cmd += ["--import", module]
        for queue in self.queues:
            cmd += ["--queue", queue]
        # the URL (maybe with a password) in the environment: a command line is public (ps)
        self.proc = subprocess.Popen(cmd, env={**os.environ, "SESSIONQ_URL": s.url})
        client: Redis = connect(s)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while sync_reply(client.zcard(Layout.of(s).glob.workers())) < self.workers:
                if self.proc.poll() is not None:
                    raise ConfigError(
                        f"the workers exited at start (status {self.proc.returncode})"
                    )
                if time.monotonic() > deadline:
                    raise ConfigError(f"workers not ready after {READY_TIMEOUT_S:g}s")
                time.sleep(0.05)
        finally:
            client.close()

    def wait(self, *, ready: Callable[[], None] | None = None) -> None:
        """Call `ready` (say, to announce the stack), then serve until the workers exit or a
        stop signal comes: SIGINT (a terminal's Ctrl-C, which also reaches the workers, not
        the embedded Redis), SIGTERM or SIGHUP. Then return: close() stops the workers, then
        Redis. (A stop signal outside wait() interrupts: KeyboardInterrupt.)"""
        assert self.proc is not None
        self._take_signals()
        try:
            if ready is not None:
                ready()
            self.proc.wait()
        except _StopSignal as stop:
            log.info("%s: stopping the workers, then Redis", stop.name)

    def close(self) -> None:
        """Stop the workers (SIGTERM; SIGINT after STOP_TIMEOUT_S, or at once on a further
        stop signal; SIGKILL after as long again), then Redis, whatever comes meanwhile."""
        self._take_signals()
        self._stopping = True  # from now on a stop signal hurries the workers
        try:
            if self.proc is not None and self.proc.poll() is None:
                self._stop_workers(self.proc)
        finally:
            try:
                if self.server is not None:
                    self.server.stop()
                    self.server = None
            finally:
                for sig, old in self._saved_handlers.items():
                    signal.signal(sig, old)
                self._saved_handlers = {}

    def _take_signals(self) -> None:
        """From the start until close() ends, STOP_SIGNALS come to _on_signal (on the main
        thread only: elsewhere signals are not ours to take)."""
        if self._saved_handlers or threading.current_thread() is not threading.main_thread():
            return
        self._saved_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._stopping:
            self._stopping = True
            raise _StopSignal(signum)
        # again while the workers stop: they stop their runs now (requeued)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    @staticmethod
    def _stop_workers(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()
