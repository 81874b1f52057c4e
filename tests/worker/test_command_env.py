"""A command run's environment (SPEC §9): the run's `env`, REPLICA_* and the SESSIONQ_ ids,
and the worker's environment minus what reaches Redis - SESSIONQ_URL, REDIS_URL,
RQ_KEY_PREFIX, every SESSIONQ_* setting, and any variable holding the Redis password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import ENV_KNOBS, ROOT, ended, wait_for

PASSWORD = "Run-s3cret/pw"  # a '/' that a URL carries encoded
ENCODED = "Run-s3cret%2Fpw"
PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


@pytest.fixture(scope="module")
def acl_url() -> Iterator[str]:
    """Its own server: the ACL user must not outlive the test on a shared one."""
    server = RedisServer().start()
    try:
        admin = Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "runner", "on", f">{PASSWORD}", "~*", "&*",
                              "+@all")  # fmt: skip
        admin.close()
        yield f"redis://runner:{ENCODED}@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def test_a_command_run_sees_no_redis_credentials(acl_url: str) -> None:
    env = {
        **os.environ, **ENV_KNOBS, "PYTHONPATH": str(ROOT),
        "SESSIONQ_URL": acl_url, "REDIS_URL": acl_url,
        "APP_REDIS_PASSWORD": PASSWORD,  # holds the password under another name
        "APP_CACHE": f"redis://runner:{ENCODED}@cache:6379/1",  # holds it, encoded
        "KEPT_VARIABLE": "kept",
    }  # fmt: skip
    env.pop("RQ_KEY_PREFIX", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionq", "worker", "--allow-commands"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        settings = Settings.from_env(acl_url, environ={}, user="tester")
        redis = Redis.from_url(acl_url)
        wait_for(lambda: redis.zcard(Keys(settings.prefix).workers()) == 1, what="the worker")
        redis.close()
        with Client(settings=settings) as client:
            [sid] = client.create(
                "env", cmd=[sys.executable, "-c", PRINT_ENV], env={"GREETING": "hello"}
            )
            wait_for(lambda: ended(client, sid), what="the command run")
            [record] = client.info(sid)
            assert record["status"] == "Completed", record
            output = (client.logs(sid) or {})[sid]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    seen = json.loads(output)
    for name in ("SESSIONQ_URL", "REDIS_URL", "RQ_KEY_PREFIX", "APP_REDIS_PASSWORD", "APP_CACHE",
                 *ENV_KNOBS):  # fmt: skip
        assert name not in seen, name
    assert PASSWORD not in output and ENCODED not in output
    assert seen["KEPT_VARIABLE"] == "kept" and seen["GREETING"] == "hello"
    assert seen["SESSIONQ_SESSION_ID"] == sid and seen["SESSIONQ_TASK_ID"] == f"{sid}-1"
    assert seen["REPLICA_ID"] == "1" and seen["REPLICA_COUNT"] == "1"
    assert "PATH" in seen


def test_the_rule_on_its_own() -> None:
    settings = Settings.from_env(
        "redis://u:p%40ss-word@h:6379/0?sentinel_password=other-pw", environ={}
    )
    assert settings.redis_secrets() >= {"p%40ss-word", "p@ss-word", "other-pw"}
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/u", "SESSIONQ_PREFIX": "a:",
        "SESSIONQ_DASHBOARD_TOKEN": "t", "RQ_KEY_PREFIX": "a:rq", "REDIS_URL": "redis://h",
        "A": "p@ss-word", "B": "x:p%40ss-word@", "C": "other-pw", "D": "u",
    }  # fmt: skip
    assert settings.command_environ(environ) == {"PATH": "/usr/bin", "HOME": "/home/u", "D": "u"}
    # no password: nothing is taken for holding one
    open_url = Settings.from_env("redis://h:6379/0", environ={})
    assert open_url.redis_secrets() == set()
    assert open_url.command_environ({"A": "x", "B": ""}) == {"A": "x", "B": ""}


def test_up_keeps_the_password_off_its_workers_command_line(acl_url: str) -> None:
    env = {**os.environ, "SESSIONQ_URL": acl_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionq", "up", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("sessionq is up")
        group = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgrp(p) == proc.pid]
        assert len(group) >= 3  # up, the supervisor, its worker process
        for member in group:
            cmdline = (member / "cmdline").read_bytes().decode(errors="replace")
            assert PASSWORD not in cmdline and ENCODED not in cmdline, cmdline
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0


def _pgrp(proc_dir: Path) -> int:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:  # gone meanwhile
        return 0
    return int(stat.rsplit(")", 1)[1].split()[2])  # after the name: state, ppid, pgrp
