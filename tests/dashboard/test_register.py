"""Registration of the dashboard's URL (connect_url, connect()) and the `dashboard` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import webbrowser
from collections.abc import Callable

import httpx
import pytest
from click.testing import CliRunner
from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.producer.cli import cli
from tests.conftest import ROOT, wait_for
from tests.dashboard.conftest import RunningDashboard


def test_records_carry_connect_url_while_the_dashboard_runs(
    client: Client, redis: Redis, keys: Keys, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    [sid] = client.create("linked", task="tests.tasks:noop")
    assert client.info(sid)[0]["connect_url"] is None
    dashboard = start_dashboard()
    assert redis.get(keys.dashboard()) == dashboard.base.encode()
    assert 0 < sync_reply(redis.pttl(keys.dashboard()))
    url = client.info(sid)[0]["connect_url"]
    assert url == f"{dashboard.base}/sessions/{sid}"
    assert httpx.get(url).status_code == 200
    dashboard.stop()
    assert redis.get(keys.dashboard()) is None
    assert client.info(sid)[0]["connect_url"] is None


def test_registration_is_refreshed_before_its_ttl_runs_out(
    redis: Redis, keys: Keys, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    start_dashboard(announce_ttl_s=1.5)
    first = sync_reply(redis.pttl(keys.dashboard()))
    assert 0 < first <= 1500
    wait_for(lambda: sync_reply(redis.pttl(keys.dashboard())) > first, what="a refresh of the TTL")
    redis.delete(keys.dashboard())  # e.g. lost with a Redis restart: taken back
    wait_for(lambda: redis.exists(keys.dashboard()), what="the registration to come back")


def test_a_stopping_dashboard_leaves_a_newer_ones_registration(
    redis: Redis, keys: Keys, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    older = start_dashboard()
    newer = start_dashboard()
    assert redis.get(keys.dashboard()) == newer.base.encode()
    older.stop()
    assert redis.get(keys.dashboard()) == newer.base.encode()


def test_connect_opens_the_session_page(
    client: Client, dashboard: RunningDashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open_new_tab", opened.append)
    [sid] = client.create("opened", task="tests.tasks:noop")
    client.connect(sid)
    assert opened == [f"{dashboard.base}/sessions/{sid}"]


def test_command_serves_registers_and_cleans_up(settings: Settings, redis: Redis) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "sessionq", "--url", settings.url, "--prefix", settings.prefix,
           "dashboard", "--port", str(port), "--root-path", "/sq"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    key = Keys(settings.prefix).dashboard()
    try:
        wait_for(lambda: redis.exists(key) or proc.poll() is not None, what="registration")
        base = f"http://127.0.0.1:{port}/sq"
        assert redis.get(key) == base.encode()
        assert httpx.get(f"{base}/sessions").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    with proc.stdout:
        assert f"sessionq dashboard on {base}/" in proc.stdout.read()
    assert not redis.exists(key)


def test_command_rejects_a_bad_root_path(settings: Settings) -> None:
    result = CliRunner().invoke(
        cli, ["--url", settings.url, "dashboard", "--root-path", "sq/"], standalone_mode=False
    )
    assert isinstance(result.exception, SystemExit) and result.exception.code == 2
    assert "root_path" in result.output


def test_command_without_the_extra_names_the_install(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "sessionq.producer.dashboard" or name.startswith("sessionq.producer.dashboard."):
            monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n.partition(".")[0] == "starlette"] + ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    result = CliRunner().invoke(cli, ["--url", settings.url, "dashboard"], standalone_mode=False)
    assert isinstance(result.exception, SystemExit) and result.exception.code == 1
    assert result.output.strip().splitlines() == [
        "sessionq: error: the dashboard needs its extra: pip install 'sessionq[dashboard]', "
        "or pip install '.[dashboard]' in a checkout (missing module starlette)"
    ]
