"""Redis connections from Settings, with clear errors and retry on a dropped connection or
on a Redis that says "try later"."""

from __future__ import annotations

import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from redis import Redis
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.asyncio.sentinel import (
    SentinelManagedSSLConnection as AsyncSentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from sessionq.common.codec import text
from sessionq.common.errors import (
    AccessDenied,
    ConnectionFailed,
    NotReplicated,
    ValidationError,
    redact_url,
)
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings

log = logging.getLogger(__name__)
# a call sleeps 0.1, 0.2, 0.4 ... s between tries, at most this long: a client may hear of
# Redis's return this late
RETRY_BACKOFF_CAP_S = 2.0
RETRY_BACKOFF_BASE_S = 0.05
# a client says its calls wait for Redis at their first failure, then at most this often
WAITING_SAID_EVERY_S = 30.0
# redis-py 8 caps a pool at 100 connections; each listener holds one, so allow many
POOL_MAX_CONNECTIONS = 4096
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
REDIS_PORT = 6379
# query parameters of a Sentinel URL that are for the sentinels, not the master
SENTINEL_QUERY = {"sentinel_username": "username", "sentinel_password": "password"}
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
    """Is `error` Redis out of reach (a lost connection, a timeout), saying "try later"
    (redis_says_later), or not yet replicating a write (NotReplicated: SESSIONQ_WAIT_REPLICAS)?
    What a long-lived process backs off from, then carries on."""
    lost = (RedisConnectionError, RedisTimeoutError, OSError, NotReplicated)
    return isinstance(error, lost) or bool(redis_says_later(error))


def why_waiting(error: BaseException) -> str:
    """What a retry waits out, in words: Redis's "try later" reply (its code), too few
    replicas, or Redis out of reach."""
    code = redis_says_later(error)
    return (f"Redis says try later ({code}: {error})" if code
            else str(error) if isinstance(error, NotReplicated)
            else f"Redis unreachable ({error})")  # fmt: skip


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
            self.log.warning("%s: %s; backing off (up to %gs between tries)", self.what,
                             why_waiting(error), self.cap_s)  # fmt: skip
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
        except (RedisError, OSError, NotReplicated) as exc:
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


class _Final(Exception):
    """An error not to try again: a lasting refusal, or one at the end of the budget."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def lasting_refusal(error: Exception) -> bool:
    """A refusal that trying again will not change: a wrong password, an untrusted
    certificate (both ConnectionErrors to redis-py)."""
    return isinstance(error, AuthenticationError) or isinstance(
        error.__context__, ssl.SSLCertVerificationError
    )


class _Said:
    """When a client last said that its calls wait for Redis: one object for all of the
    client's connections (redis-py copies the Retry into each; copies of this are itself)."""

    def __init__(self) -> None:
        self.at = -math.inf

    def __copy__(self) -> _Said:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Said:
        return self


def _waiting(retry: _Retry | _AsyncRetry, error: BaseException) -> None:
    """A call failed and is tried again: said at once (a wrong host or a Redis away is not a
    silent wait), then at most once per WAITING_SAID_EVERY_S per client - a failover makes
    every call of every connection fail for seconds."""
    now = time.monotonic()
    if now - retry.said.at >= WAITING_SAID_EVERY_S:
        retry.said.at = now
        log.warning("%s: trying again for up to %gs (SESSIONQ_RETRY_BUDGET_S)",
                    why_waiting(error), retry.budget_s)  # fmt: skip


class _Retry(Retry):
    """redis-py's Retry, with backoff, for at most `budget_s` seconds a call (a Sentinel
    failover takes tens of seconds), except that a lasting refusal is reported at once
    instead of being tried again."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S), -1)
        self.budget_s = budget_s
        self.said = _Said()  # (see _waiting)

    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.budget_s

        def attempt() -> T:
            try:
                return do()
            except ResponseError as exc:
                if redis_says_later(exc) not in PASSING:
                    raise
                if time.monotonic() >= deadline:
                    raise _Final(exc) from exc
                _waiting(self, exc)
                raise _Later(exc) from exc  # tried again, as a lost connection is
            except self._supported_errors as exc:
                if lasting_refusal(exc) or time.monotonic() >= deadline:
                    raise _Final(exc) from exc
                _waiting(self, exc)
                raise

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Final as final:
            raise final.error from None
        except _Later as later:
            raise later.error from None


class _AsyncRetry(AsyncRetry):
    """The same on redis.asyncio."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S), -1)
        self.budget_s = budget_s
        self.said = _Said()  # (see _waiting)

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any
    ) -> T:
        deadline = time.monotonic() + self.budget_s

        async def attempt() -> T:
            try:
                return await do()
            except ResponseError as exc:
                if redis_says_later(exc) not in PASSING:
                    raise
                if time.monotonic() >= deadline:
                    raise _Final(exc) from exc
                _waiting(self, exc)
                raise _Later(exc) from exc
            except self._supported_errors as exc:
                if lasting_refusal(exc) or time.monotonic() >= deadline:
                    raise _Final(exc) from exc
                _waiting(self, exc)
                raise

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Final as final:
            raise final.error from None
        except _Later as later:
            raise later.error from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SentinelURL:
    """What a `redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB]` URL says
    (`rediss+sentinel://`: TLS to the sentinels and the master)."""

    sentinels: list[tuple[str, int]]
    service: str
    # connection options of the master: db, its user and password, query parameters
    master: dict[str, Any] = field(default_factory=dict)
    # connection options of the sentinels: sentinel_username/_password, TLS and socket_*
    sentinel: dict[str, Any] = field(default_factory=dict)


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The parts of a Sentinel URL; None for any other URL (redis-py parses those);
    ValueError saying what is wrong with a Sentinel URL that does not parse."""
    split = _split_hosts(url, SENTINEL_SCHEMES, "sentinel", SENTINEL_PORT)
    if split is None:
        return None
    scheme, parts, sentinels = split
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("a Sentinel URL ends in /SERVICE or /SERVICE/DB (the master's name)")
    master: dict[str, Any] = {}
    sentinel: dict[str, Any] = {}
    if len(path) == 2:
        master["db"] = _number(int, "db", path[1])
    master |= _credentials(parts, scheme)
    if scheme == "rediss+sentinel":
        sentinel["ssl"] = True
    for name, value in parse_qsl(parts.query):
        if name in SENTINEL_QUERY:
            sentinel[SENTINEL_QUERY[name]] = value
            continue
        parser = cast("Callable[[str], Any] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))
        master[name] = value if parser is None else _number(parser, name, value)
        if name.startswith(("socket_", "ssl_")):
            sentinel[name] = master[name]  # the sentinels are reached the same way
    return SentinelURL(sentinels=sentinels, service=path[0], master=master, sentinel=sentinel)


def _split_hosts(
    url: str, schemes: tuple[str, str], what: str, default_port: int
) -> tuple[str, SplitResult, list[tuple[str, int]]] | None:
    """A URL of one of `schemes` (lower-cased), its parts and its list of hosts; None for a
    URL of another scheme."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        return None
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return scheme.lower(), parts, [_host_port(h, what, default_port) for h in hosts.split(",")]


def _credentials(parts: SplitResult, scheme: str) -> dict[str, Any]:
    """The user, password and TLS (an `rediss+` scheme) a URL gives its Redis servers."""
    found: dict[str, Any] = {"ssl": True} if scheme.startswith("rediss+") else {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    return found


def _host_port(item: str, what: str, default_port: int) -> tuple[str, int]:
    host, port = item, ""
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host:
        raise ValueError(f"{what} {item!r}: host:port expected")
    number = _number(int, f"port of {what} {item!r}", port) if port else default_port
    return unquote(host), number


def _number(parser: Callable[[str], Any], name: str, value: str) -> Any:
    try:
        return parser(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: invalid value {value!r} in the URL") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterURL:
    """What a `redis+cluster://[user:pass@]host:port[,host:port...][?option=...]` URL says
    (`rediss+cluster://`: TLS): the nodes to start from (the others are found) and the
    options of every node's connections."""

    nodes: list[tuple[str, int]]
    options: dict[str, Any] = field(default_factory=dict)


def parse_cluster_url(url: str) -> ClusterURL | None:
    """The parts of a Redis Cluster URL; None for any other URL; ValueError saying what is
    wrong with a cluster URL that does not parse (a cluster has one database: no /DB)."""
    split = _split_hosts(url, CLUSTER_SCHEMES, "node", REDIS_PORT)
    if split is None:
        return None
    scheme, parts, nodes = split
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has one database (0): no /DB in a cluster URL")
    options = _credentials(parts, scheme)
    for name, value in parse_qsl(parts.query):
        parser = cast("Callable[[str], Any] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))
        options[name] = value if parser is None else _number(parser, name, value)
    return ClusterURL(nodes=nodes, options=options)


class _MasterConnection(SentinelManagedConnection):
    """redis-py's connection to a Sentinel-elected master, except that every socket it opens
    goes to the master the sentinels name then: redis-py's asks them only when the pool
    connects it, and a reconnect within a call's retries (or the fast lane's, or the
    pub/sub hub's) went back to the address it had - a dead or demoted master - for the
    whole retry budget (redis-py 8; a pool's connect now asks twice, a cheap price)."""

    def _connect(self) -> Any:
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()  # type: ignore[no-untyped-call]  # redis-py's, unannotated


class _MasterSSLConnection(_MasterConnection, SentinelManagedSSLConnection):
    """The same over TLS."""


class _AsyncMasterConnection(AsyncSentinelManagedConnection):
    """The same on redis.asyncio."""

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]  # redis-py's, unannotated


class _AsyncMasterSSLConnection(_AsyncMasterConnection, AsyncSentinelManagedSSLConnection):
    """The same over TLS."""


class _SentinelRedis(Redis):
    """A client of the master a set of sentinels elected; close() closes their
    connections too."""

    elected_by: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.elected_by is not None:  # (redis-py 5 has no Sentinel.close)
            for sentinel in self.elected_by.sentinels:
                sentinel.close()


class _AsyncSentinelRedis(AsyncRedis):
    """The same on redis.asyncio."""

    elected_by: AsyncSentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.elected_by is not None:
            for sentinel in self.elected_by.sentinels:
                await sentinel.aclose()


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    """The client options a RedisCluster takes: its retry covers the whole cluster's answer
    (a lost node, a MOVED, a failover's CLUSTERDOWN), its nodes' clients do not retry by
    themselves (redis-py's rule). redis-py's cluster client counts attempts itself, so the
    retry budget becomes a count of capped backoffs."""
    budget = options["retry"]
    tries = int(budget.budget_s / RETRY_BACKOFF_CAP_S) + 6  # the first few waits are short
    kind = AsyncRetry if isinstance(budget, _AsyncRetry) else Retry
    retry = kind(ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S), tries)
    kept = {k: v for k, v in options.items() if k not in ("retry", "retry_on_error")}
    return {**kept, "retry": retry}


def _sentinel_options(target: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    """How to reach the sentinels: the socket options of the master (as redis-py's Sentinel
    takes them when given none), then the URL's for the sentinels."""
    return {k: v for k, v in options.items() if k.startswith("socket_")} | target.sentinel


def client_from_url(url: str, options: dict[str, Any]) -> Redis:
    """A client for `url` with `options` (the URL's own query parameters win, as in
    redis-py's from_url): redis-py's for its URLs, the master elected by the sentinels for
    a Sentinel URL, a RedisCluster for a cluster URL; ValueError saying what is wrong with
    the URL. (A RedisCluster has Redis's command methods - both take them from
    redis.commands - and is typed as a Redis here; what needs one server's connections asks
    scripts.transport.server_of.)"""
    cluster = parse_cluster_url(url)
    if cluster is not None:
        nodes = [ClusterNode(host, port) for host, port in cluster.nodes]  # type: ignore[no-untyped-call]  # redis-py's ClusterNode is unannotated
        try:  # (it connects at once, to learn the slots)
            return cast("Redis", RedisCluster(
                startup_nodes=nodes, **_cluster_options(options), **cluster.options))  # fmt: skip
        except RedisClusterException as exc:  # no node answers, or not a cluster's
            if "not enabled" in str(exc):
                raise ValidationError("url", f"{redact_url(url)!r} names a Redis not in "
                                      "cluster mode: use redis://host:port") from exc  # fmt: skip
            raise ConnectionFailed(url, str(exc)) from exc
    target = parse_sentinel_url(url)
    if target is None:
        _check_database(url)
        return Redis.from_url(url, **options)
    # (untyped before redis-py 8)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_options(target, options))  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
    kind = _MasterSSLConnection if target.master.get("ssl") else _MasterConnection
    client: _SentinelRedis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
        target.service, redis_class=_SentinelRedis, connection_class=kind,
        **{**options, **target.master},
    )  # fmt: skip
    client.elected_by = sentinel
    return client


def _check_database(url: str) -> None:
    """ValueError unless a plain redis:// or rediss:// URL's path is empty or a database
    number, or its query gives db= (redis-py would take `/abc` as database 0)."""
    if url.partition("://")[0].lower() not in ("redis", "rediss"):
        return
    parts = urlsplit(url)
    if any(name == "db" for name, _ in parse_qsl(parts.query)):
        return  # (redis-py reads the query's db, not the path)
    path = unquote(parts.path).strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError("its path must be a database number (/0, /1 ...) or nothing")


def async_client_from_url(url: str, options: dict[str, Any]) -> AsyncRedis:
    """The same on redis.asyncio."""
    cluster = parse_cluster_url(url)
    if cluster is not None:
        return cast("AsyncRedis", AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(host, port) for host, port in cluster.nodes],
            **_cluster_options(options), **cluster.options,
        ))  # fmt: skip
    target = parse_sentinel_url(url)
    if target is None:
        _check_database(url)
        plain: AsyncRedis = AsyncRedis.from_url(url, **options)  # (untyped in redis-py 5.3)
        return plain
    # (untyped before redis-py 8)
    sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=_sentinel_options(target, options))  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
    kind = _AsyncMasterSSLConnection if target.master.get("ssl") else _AsyncMasterConnection
    client: _AsyncSentinelRedis = sentinel.master_for(
        target.service, redis_class=_AsyncSentinelRedis, connection_class=kind,
        **{**options, **target.master},
    )  # fmt: skip
    client.elected_by = sentinel
    return client


def _options(
    retry_class: type[_Retry] | type[_AsyncRetry], settings: Settings, kwargs: dict[str, object]
) -> dict[str, Any]:
    """The client options both kinds of client share: retry dropped connections with backoff
    for settings.retry_budget_s."""
    options: dict[str, Any] = {
        "retry": retry_class(settings.retry_budget_s),
        # (and a refused or reset connect: redis-py 5.3 tries it again only with these)
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionError],
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
        client = client_from_url(settings.url, _options(_Retry, settings, kwargs))
    except ValidationError:  # (already naming url)
        raise
    except ValueError as exc:
        raise _bad_url(settings.url, exc) from exc
    if check:
        ping(client, settings.url)
        try:
            client.exists(Keys(settings.prefix).workers())
        except NoPermissionError as exc:
            raise AccessDenied(settings.url, str(exc)) from exc
        except ResponseError as exc:
            raise cluster_node_error(settings.url, exc) or exc from exc
    return client


def sync_reply(value: Awaitable[T] | T) -> T:
    """A sync client's reply, typed as what it is: redis-py 5.3 types each command's reply as
    `Awaitable[X] | X` (or `Awaitable[Any] | Any`) for both clients; 8.x has sync overloads."""
    return cast(T, value)


def connect_async(settings: Settings, **kwargs: object) -> AsyncRedis:
    """The same client on redis.asyncio; it connects at its first command."""
    try:
        return async_client_from_url(settings.url, _options(_AsyncRetry, settings, kwargs))
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
    except ResponseError as exc:
        raise bad_database(url, exc) or exc from exc


CLUSTER_NODE = (
    "names a node of a Redis Cluster (it answered MOVED or CROSSSLOT): use "
    "redis+cluster://host:port"
)


def is_cluster_refusal(exc: BaseException) -> bool:
    """A MOVED or CROSSSLOT reply (redis-py before 6 raises a pipeline's as a plain
    ResponseError naming it)."""
    if isinstance(exc, (MovedError, ClusterCrossSlotError)):
        return True
    return isinstance(exc, ResponseError) and any(
        word in str(exc) for word in ("MOVED ", "CROSSSLOT "))  # fmt: skip


def cluster_node_error(url: str, exc: BaseException) -> ValidationError | None:
    """A MOVED or CROSSSLOT from the Redis of a plain URL: it is a node of a Redis Cluster,
    which takes a redis+cluster:// URL - bad input naming url. None for any other error."""
    plain = not url.startswith(("redis+cluster", "rediss+cluster"))
    if not (plain and is_cluster_refusal(exc)):
        return None
    return ValidationError("url", f"{redact_url(url)!r} {CLUSTER_NODE}")


def bad_database(url: str, exc: RedisError) -> ValidationError | None:
    """The URL's database number is one the server does not have (SELECT refused as the
    connection opened): bad input naming url. None for any other error."""
    if not (isinstance(exc, ResponseError) and str(exc).startswith("DB index is out of range")):
        return None
    return ValidationError("url", f"{redact_url(url)!r}: this Redis has no database "
                                  f"{_database_of(url)} (its `databases` setting)")  # fmt: skip


def _database_of(url: str) -> int | str:
    """The database number a URL names (a Sentinel URL's master's), as redis-py reads it."""
    try:
        target = parse_sentinel_url(url)
        if target is not None:
            return int(target.master.get("db", 0))
        return int(parse_url(url).get("db", 0))  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
    except ValueError:
        return "?"


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
