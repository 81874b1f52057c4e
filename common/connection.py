"""Redis connections from Settings, with clear errors and retry on a dropped connection or
on a Redis that says "try later"."""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import Redis
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sessionq.common.codec import text
from sessionq.common.errors import AccessDenied, ConnectionFailed
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings

RETRY_ATTEMPTS = 6
# the longest a call sleeps between two tries: a client may hear of Redis's return this late
RETRY_BACKOFF_CAP_S = 2.0
# redis-py 8 caps a pool at 100 connections; each listener holds one, so allow many
POOL_MAX_CONNECTIONS = 4096
T = TypeVar("T")
# the replies a client tries again within its retry budget: they pass by themselves (a slow
# script ends, a dataset loads, a failover elects a master); OOM, MISCONF and NOPERM need
# someone to act, so a producer reports them at once (a worker backs off from all of them)
PASSING = frozenset({"BUSY", "LOADING", "READONLY", "MASTERDOWN"})
# a reply code at the start of an error, or after redis-py's note on a pipeline's command
_LATER_REPLY = re.compile(r"(?:^|of pipeline caused error: )(BUSY|MASTERDOWN|MISCONF|OOM)\b")
# classes some redis-py versions raise for OOM and MASTERDOWN (the message then lacks the code)
_LATER_CLASSES = {
    code: getattr(redis_exceptions, name, ())
    for code, name in (("OOM", "OutOfMemoryError"), ("MASTERDOWN", "MasterDownError"))
}


def redis_says_later(error: BaseException) -> str:
    """The reply code when `error` is Redis saying "not now" rather than "no": BUSY (another
    client's script runs), LOADING, READONLY (a demoted master), MASTERDOWN, MISCONF (it cannot
    persist), NOPERM (an ACL being changed) or OOM (over maxmemory); "" for any other error.
    The command was not carried out: sending it again later is safe."""
    if isinstance(error, BusyLoadingError):
        return "LOADING"
    if isinstance(error, ReadOnlyError):
        return "READONLY"
    if isinstance(error, NoPermissionError):
        return "NOPERM"
    for code, cls in _LATER_CLASSES.items():
        if isinstance(error, cls):
            return code
    if isinstance(error, ResponseError):
        status = getattr(error, "status_code", None)  # redis-py 8 keeps the reply's code
        if status in ("BUSY", "MASTERDOWN", "MISCONF", "OOM"):
            return str(status)
        found = _LATER_REPLY.search(str(error))
        if found:
            return found.group(1)
    return ""


def redis_unavailable(error: BaseException) -> bool:
    """Is `error` Redis out of reach (a lost connection, a timeout) or saying "try later"
    (redis_says_later)? What a long-lived process backs off from, then carries on."""
    lost = (RedisConnectionError, RedisTimeoutError, OSError)
    return isinstance(error, lost) or bool(redis_says_later(error))


class Backoff:
    """Capped exponential waits between tries while Redis is away or says "try later",
    logged once per episode (its first failure, then its end), not once per try."""

    def __init__(
        self, logger: logging.Logger, what: str, *, first_s: float = 0.05, cap_s: float = 2.0
    ) -> None:
        self.log, self.what = logger, what
        self.first_s, self.cap_s = first_s, cap_s
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        """Note a failed try; the seconds to wait before the next one."""
        if not self.failures:
            code = redis_says_later(error)
            self.log.warning("%s: %s; backing off (up to %gs between tries)", self.what,
                             f"Redis says try later ({code}: {error})" if code
                             else f"Redis unreachable ({error})", self.cap_s)  # fmt: skip
        self.failures += 1
        return float(min(self.cap_s, self.first_s * 2 ** min(self.failures - 1, 30)))

    def succeeded(self) -> None:
        """Note a try that went through: ends the episode, if there was one."""
        if self.failures:
            self.log.warning("%s: Redis answers again (after %d failed tries)", self.what,
                             self.failures)  # fmt: skip
            self.failures = 0

    def attempt(self, step: Callable[[], T], failed: T, on_failure: Callable[[], object]) -> T:
        """`step()`; or, when Redis is unavailable (redis_unavailable), `on_failure()`, a
        backoff, and `failed`. Any other error propagates."""
        try:
            value = step()
        except (RedisError, OSError) as exc:
            if not redis_unavailable(exc):
                raise
            on_failure()
            time.sleep(self.failed(exc))
            return failed
        self.succeeded()
        return value


class _Later(RedisConnectionError):
    """A passing "try later" reply, dressed as a lost connection for redis-py's retry."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error


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
    tried again for seconds, and that a passing "try later" reply (PASSING) is tried again
    like a dropped connection."""

    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except RedisConnectionError as exc:
                if lasting_refusal(exc):
                    raise _Refused(exc) from exc
                raise
            except ResponseError as exc:
                if redis_says_later(exc) in PASSING:
                    raise _Later(exc) from exc
                raise

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None
        except _Later as later:
            raise later.error from None


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
            except ResponseError as exc:
                if redis_says_later(exc) in PASSING:
                    raise _Later(exc) from exc
                raise

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None
        except _Later as later:
            raise later.error from None


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
    """A client for settings.url that retries dropped connections with backoff; with `check`,
    ConnectionFailed (naming the URL) when Redis cannot be reached, AccessDenied when its
    ACL user may not touch the prefix's keys."""
    try:
        client = Redis.from_url(settings.url, **_options(_Retry, kwargs))
    except ValueError as exc:
        raise ConnectionFailed(settings.url, str(exc)) from exc
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
        raise ConnectionFailed(settings.url, str(exc)) from exc


def ping(client: Redis, url: str) -> None:
    try:
        client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ConnectionFailed(url, str(exc) or type(exc).__name__) from exc


def check_eviction_policy(client: Redis, log: logging.Logger) -> str:
    """Warn (on `log`) unless Redis's maxmemory-policy is noeviction: any other policy drops
    sessionq's keys in silence when memory runs short. The policy, or "" where the ACL does not
    allow CONFIG GET."""
    try:
        reply: Any = client.config_get("maxmemory-policy")
    except NoPermissionError:
        return ""
    policy = text(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy") or b"")
    if policy and policy != "noeviction":
        log.warning("Redis's maxmemory-policy is %s: when memory runs short Redis will evict "
                    "sessionq's keys in silence (runs, counters, histories); set it to "
                    "noeviction", policy)  # fmt: skip
    return policy
