"""A Redis (embedded when none is configured, SPEC §7) and worker processes, for `up` and
`demo`; everything it starts, it stops."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import TracebackType

from redis import Redis

from sessionq.common.connection import connect
from sessionq.common.errors import ConfigError
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class Stack:
    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        allow_commands: bool = True,
        imports: list[str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.log_level = log_level
        self.settings = settings
        self.workers = workers
        self.allow_commands = allow_commands
        self.imports = imports or []
        self.server: RedisServer | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Stack:
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
        cmd = [sys.executable, "-m", "sessionq", "--url", s.url, "--prefix", s.prefix,
               "--user", s.user, "--log-level", self.log_level, "worker",
               "--concurrency", str(self.workers)]  # fmt: skip
        if self.allow_commands:
            cmd.append("--allow-commands")
        for module in self.imports:
            cmd += ["--import", module]
        self.proc = subprocess.Popen(cmd)
        client: Redis = connect(s)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while client.zcard(Keys(s.prefix).workers()) < self.workers:
                if self.proc.poll() is not None:
                    raise ConfigError(
                        f"the workers exited at start (status {self.proc.returncode})"
                    )
                if time.monotonic() > deadline:
                    raise ConfigError(f"workers not ready after {READY_TIMEOUT_S:g}s")
                time.sleep(0.05)
        finally:
            client.close()

    def wait(self) -> None:
        assert self.proc is not None
        self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()
