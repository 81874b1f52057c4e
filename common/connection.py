"""Redis connections from Settings, with clear errors and retry on a dropped connection."""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from common.errors import ConnectionFailed
from common.settings import Settings

RETRY_ATTEMPTS = 6
# redis-py 8 caps a pool at 100 connections; each listener holds one, so allow many
POOL_MAX_CONNECTIONS = 4096


def _options(
    retry_class: type[Retry] | type[AsyncRetry], kwargs: dict[str, object]
) -> dict[str, Any]:
    """The client options both kinds of client share: retry dropped connections with backoff."""
    options: dict[str, Any] = {
        "retry": retry_class(ExponentialBackoff(cap=2.0, base=0.05), RETRY_ATTEMPTS),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "max_connections": POOL_MAX_CONNECTIONS,
    }
    options.update(kwargs)
    return options


def connect(settings: Settings, *, check: bool = True, **kwargs: object) -> Redis:
    """A client for settings.url that retries dropped connections with backoff; with `check`,
    ConnectionFailed (naming the URL) when Redis cannot be reached."""
    try:
        client = Redis.from_url(settings.url, **_options(Retry, kwargs))
    except ValueError as exc:
        raise ConnectionFailed(settings.url, str(exc)) from exc
    if check:
        ping(client, settings.url)
    return client


def connect_async(settings: Settings, **kwargs: object) -> AsyncRedis:
    """The same client on redis.asyncio; it connects at its first command."""
    try:
        return AsyncRedis.from_url(settings.url, **_options(AsyncRetry, kwargs))
    except ValueError as exc:
        raise ConnectionFailed(settings.url, str(exc)) from exc


def ping(client: Redis, url: str) -> None:
    try:
        client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ConnectionFailed(url, str(exc) or type(exc).__name__) from exc
