"""TLS: `rediss://` with redis-py's ssl query parameters, as the README's Security section
says, for the producer, a worker process and a listener."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from sessionq.common.errors import ConfigError, ConnectionFailed
from sessionq.common.redisserver import RedisServer, free_port
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import FAST, WorkerProcs


def make_certificates(folder: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "the openssl command is needed to make test certificates (apt-get install openssl)"
        )
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
         "-subj", "/CN=sessionq test CA"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext"],
    ):  # fmt: skip
        subprocess.run([openssl, *cmd], cwd=folder, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    make_certificates(tmp_path)
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.pem"),
           "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file",
           str(tmp_path / "ca.pem"), "--tls-auth-clients", "no"]  # fmt: skip
    server = RedisServer(extra=tls)
    try:
        server.start()
    except ConfigError:
        pytest.fail(
            f"{server.binary} was built without TLS: the TLS test needs a redis-server "
            "with TLS (Debian's redis-server has it)"
        )
    yield server, port
    server.stop()


def test_producer_worker_and_listener_over_tls(
    tls_server: tuple[RedisServer, int], tmp_path: Path
) -> None:
    server, port = tls_server
    ca = tmp_path / "ca.pem"
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    settings = Settings.from_env(url, environ={}, user="tester", **FAST)
    admin = Redis(port=server.port)  # the plain port, only to watch
    client = Client(settings=settings)
    workers = WorkerProcs(settings, admin)
    try:
        [sid] = client.create("secret", task="tests.tasks:add", args=[20, 22])
        workers.start(1)
        events = list(client.listen(sid, after=0, timeout=30))
        assert events[-1]["type"] == "session.completed"
        assert client.info(sid)[0]["result"] == 42

        unverified = Client(settings=Settings.from_env(url.split("&")[0], environ={}))
        with pytest.raises(ConnectionFailed, match="certificate verify failed"):
            unverified.info(sid)  # no CA given: the server's certificate is not trusted
        with pytest.raises(ConnectionFailed, match="certificate verify failed"):
            next(unverified.listen(sid, after=0, timeout=5))  # said, not retried for ever
        unverified.close()
    finally:
        workers.stop_all()
        client.close()
        admin.close()
