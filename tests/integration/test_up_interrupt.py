"""`sessionq up`, then Ctrl-C as a terminal sends it: SIGINT to the whole foreground process
group. The workers leave first (their registration removed while Redis still answers), then
the embedded Redis stops; no error lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import ROOT


def _up(*extra: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("SESSIONQ_URL", "REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionq", "up", "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
        start_new_session=True,  # its own process group, as a shell's foreground job
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("sessionq is up"):
            return proc, line.split("SESSIONQ_URL=", 1)[1].split()[0], seen
    proc.wait(timeout=60)
    proc.stdout.close()
    pytest.fail("sessionq up did not come up:\n" + "".join(seen))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_stops_workers_then_redis_cleanly(sig: signal.Signals) -> None:
    proc, url, seen = _up()
    try:
        os.killpg(proc.pid, sig)
        assert proc.stdout is not None
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    out = "".join(seen) + rest
    assert code == 0, out
    for word in ("ERROR", "WARNING", "Traceback", "could not unregister", "unreachable"):
        assert word not in out, out
    # the worker left while Redis answered: it unregistered and said so
    assert "stopped after 0 runs" in out, out
    assert "interrupted" not in out, out
    with pytest.raises(RedisConnectionError):
        Redis.from_url(url, socket_connect_timeout=1).ping()  # the embedded Redis is gone
