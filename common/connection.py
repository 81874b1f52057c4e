"""Redis connections from Settings, with clear errors and retry on a dropped connection."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sessionq.common.errors import AccessDenied, ConnectionFailed, ValidationError, redact_url
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings

RETRY_ATTEMPTS = 6
# the longest a call sleeps between two tries: a client may hear of Redis's return this late
RETRY_BACKOFF_CAP_S = 2.0
# redis-py 8 caps a pool at 100 connections; each listener holds one, so allow many
POOL_MAX_CONNECTIONS = 4096
T = TypeVar("T")


class _Refused(Exception):
    def __init__(self, error: RedisConnectionError) -> None:
        self.error = error


def lasting_refusal(error: Exception) -> bool:
    """A refusal that trying again will not change: a wrong password, an untrusted
    certificate (both ConnectionErrors to redis-py)."""
    return isinstance(error, AuthenticationError) or isinstance(
        error.__context__, ssl.SSLCertVerificationError
    )


class _Retry(Retry):
    """redis-py's Retry, except that a lasting refusal is reported at once instead of being
    tried again for seconds."""

    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except RedisConnectionError as exc:
                if lasting_refusal(exc):
                    raise _Refused(exc) from exc
                raise

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


class _AsyncRetry(AsyncRetry):
    """The same on redis.asyncio."""

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any
    ) -> T:
        async def attempt() -> T:
            try:
                return await do()
            except RedisConnectionError as exc:
                if lasting_refusal(exc):
                    raise _Refused(exc) from exc
                raise

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


def _options(
    retry_class: type[Retry] | type[AsyncRetry], kwargs: dict[str, object]
) -> dict[str, Any]:
    """The client options both kinds of client share: retry dropped connections with backoff."""
    options: dict[str, Any] = {
        "retry": retry_class(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=0.05), RETRY_ATTEMPTS
        ),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "max_connections": POOL_MAX_CONNECTIONS,
    }
    options.update(kwargs)
    return options


def connect(settings: Settings, *, check: bool = True, **kwargs: object) -> Redis:
    """A client for settings.url that retries dropped connections with backoff (ValidationError
    naming url when it does not parse); with `check`, ConnectionFailed (naming the URL) when
    Redis cannot be reached, AccessDenied when its ACL user may not touch the prefix's keys."""
    try:
        client = Redis.from_url(settings.url, **_options(_Retry, kwargs))
    except ValueError as exc:
        raise _bad_url(settings.url, exc) from exc
    if check:
        ping(client, settings.url)
        try:
            client.exists(Keys(settings.prefix).workers())
        except NoPermissionError as exc:
            raise AccessDenied(settings.url, str(exc)) from exc
    return client


def connect_async(settings: Settings, **kwargs: object) -> AsyncRedis:
    """The same client on redis.asyncio; it connects at its first command."""
    try:
        return AsyncRedis.from_url(settings.url, **_options(_AsyncRetry, kwargs))
    except ValueError as exc:
        raise _bad_url(settings.url, exc) from exc


def _bad_url(url: str, exc: ValueError) -> ValidationError:
    """An unparsable URL is bad input (naming url), not a Redis that cannot be reached."""
    return ValidationError("url", f"{redact_url(url)!r} is not a Redis URL: {exc}")


def ping(client: Redis, url: str) -> None:
    try:
        client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ConnectionFailed(url, str(exc) or type(exc).__name__) from exc
