"""Clients from URLs (SPEC §9): Sentinel URLs parsed, passwords redacted, the retry budget a
setting; a call outlasts an outage shorter than the budget."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from redis import Redis
from redis.sentinel import SentinelConnectionPool

from sessionq.common.connection import connect, connect_async, parse_sentinel_url
from sessionq.common.errors import ConfigError, ConnectionFailed, ValidationError, redact_url
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from tests.conftest import wait_for


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    url = (
        "redis+sentinel://alice:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:26381/cache/3"
        "?socket_timeout=1.5&sentinel_password=s3&sentinel_username=watch&client_name=x"
    )
    target = parse_sentinel_url(url)
    assert target is not None
    assert target.sentinels == [("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381)]
    assert target.service == "cache"
    assert target.master == {"db": 3, "username": "alice", "password": "p@ss",
                             "socket_timeout": 1.5, "client_name": "x"}  # fmt: skip
    assert target.sentinel == {"socket_timeout": 1.5, "password": "s3", "username": "watch"}


def test_rediss_sentinel_is_tls_to_sentinels_and_master_and_db_defaults() -> None:
    target = parse_sentinel_url("rediss+sentinel://h:1/mymaster")
    assert target is not None
    assert target.master == {"ssl": True} and target.sentinel == {"ssl": True}
    assert parse_sentinel_url("redis://h:1/0") is None
    assert parse_sentinel_url("unix:///tmp/r.sock") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:1", "/SERVICE"),
        ("redis+sentinel://h:1/a/0/extra", "/SERVICE"),
        ("redis+sentinel://h:1/a/zero", "db"),
        ("redis+sentinel://h:x/a", "port of sentinel 'h:x'"),
        ("redis+sentinel://:5/a", "host:port"),
        ("redis+sentinel://h:1/a?socket_timeout=soon", "socket_timeout"),
    ],
)
def test_a_bad_sentinel_url_is_a_validation_error_saying_what(url: str, says: str) -> None:
    settings = Settings.from_env(url, environ={})
    with pytest.raises(ValidationError, match="is not a Redis URL") as caught:
        connect(settings, check=False)
    assert caught.value.field == "url" and says in str(caught.value)
    with pytest.raises(ValidationError):
        connect_async(settings)


def test_a_sentinel_url_makes_a_client_of_the_master_it_elects() -> None:
    url = "redis+sentinel://127.0.0.1:1/cache/2?socket_timeout=3&sentinel_password=spw"
    client = connect(Settings.from_env(url, environ={}), check=False)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["socket_timeout"] == 3
    manager = pool.sentinel_manager
    reach = manager.sentinels[0].connection_pool.connection_kwargs
    # the sentinels: the URL's socket options, a connect timeout as the master's, their password
    assert (reach["socket_timeout"], reach["socket_connect_timeout"]) == (3, 5)
    assert reach["password"] == "spw" and "password" not in pool.connection_kwargs
    client.close()


def test_passwords_are_redacted_wherever_the_url_holds_them() -> None:
    url = "redis+sentinel://u:pw@h1:1,h2:2/svc/0?socket_timeout=1&sentinel_password=spw"
    assert redact_url(url) == (
        "redis+sentinel://u:***@h1:1,h2:2/svc/0?socket_timeout=1&sentinel_password=***"
    )
    assert redact_url("redis://h:1/0?password=pw&db=1") == "redis://h:1/0?password=***&db=1"
    assert redact_url("unix:///tmp/r.sock?db=0") == "unix:///tmp/r.sock?db=0"
    assert redact_url("rediss://:pw@h/0") == "rediss://:***@h/0"
    error = ConnectionFailed(url, "no master")
    assert "pw" not in str(error).replace("sentinel_password", "")


def test_the_retry_budget_is_a_setting() -> None:
    assert Settings().retry_budget_s > 35, "longer than a failover with Sentinel's defaults"
    settings = Settings.from_env(environ={"SESSIONQ_RETRY_BUDGET_S": "7.5"})
    assert settings.retry_budget_s == 7.5
    with pytest.raises(ConfigError, match="SESSIONQ_RETRY_BUDGET_S"):
        Settings.from_env(environ={"SESSIONQ_RETRY_BUDGET_S": "soon"})
    with pytest.raises(ConfigError, match="retry_budget_s"):
        Settings(retry_budget_s=0)


@pytest.mark.timeout(60)
def test_a_call_outlasts_an_outage_longer_than_the_old_fixed_budget() -> None:
    """Before, a call gave up after ~5 s whatever the deployment; now it keeps trying for
    SESSIONQ_RETRY_BUDGET_S."""
    server = RedisServer().start()
    try:
        client = connect(Settings.from_env(server.url, environ={}, retry_budget_s=30.0))
        client.set("k", 1)
        server.shutdown()
        down = time.monotonic()
        done: list[object] = []
        caller = threading.Thread(target=lambda: done.append(client.incr("k")), daemon=True)
        caller.start()
        # the fault: Redis stays down for longer than the old fixed ~5 s of retries
        wait_for(lambda: time.monotonic() - down > 7.0 or done, timeout=20,
                 what="7 s of outage")  # fmt: skip
        assert not done and caller.is_alive(), "the call is still trying"
        server.start()
        caller.join(timeout=30)
        assert done == [1], "the call went through once Redis was back (a fresh, empty one)"
        client.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_call_waiting_out_a_failover_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """A failover refuses writes (READONLY) for seconds while the connections come and go:
    the client says once that its call waits, not at every try (nor per connection)."""
    server = RedisServer().start()
    try:
        admin = Redis(port=server.port)
        admin.replicaof("127.0.0.1", "1")  # a replica of nothing: writes refused, READONLY
        client = connect(Settings.from_env(server.url, environ={}, retry_budget_s=30.0))
        promote = threading.Timer(4.0, lambda: admin.replicaof("NO", "ONE"))
        promote.start()
        with caplog.at_level(logging.WARNING, logger="sessionq.common.connection"):
            client.set("k", 1)  # tried again (reconnecting between tries) until promoted
            assert client.get("k") == b"1"
        promote.join()
        said = [r for r in caplog.records if "trying again for up to 30s" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert "READONLY" in said[0].getMessage()
        client.close()
        admin.close()
    finally:
        server.stop()
