"""The CANFAR client's `Session` and `AsyncSession` over sessionq's sessions (SPEC §9, "CANFAR,
unchanged"): a script written for `from canfar.session import Session` ports by changing that
import line to `from sessionq.canfar import Session`.

The calls, their argument orders and their replies are CANFAR's (seed 002): records carry
CANFAR's keys with string values (`requestedRAM` "8G", `startTime` "2025-01-02T03:04:05Z",
"<none>" where sessionq has no such value), `stats()` CANFAR's `cores`/`ram` summary,
`events()` one `{id: text}` per session. Underneath is a `Client` (an `AsyncClient`): the sessions
are the ones `sessionq` shows, found the way `Client` finds Redis, with the same status words;
`Client` keeps its own field names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from sessionq.common.errors import ValidationError, ValidationTypeError
from sessionq.common.vocabulary import Status
from sessionq.producer.aio import AsyncClient
from sessionq.producer.client import Client, format_event

log = logging.getLogger(__name__)

NONE = "<none>"  # CANFAR's own word for a value a session does not have
PACKAGE_LOGGER = "sessionq"  # what `loglevel` sets, as CANFAR's sets its package's logger
# CANFAR constructor options with no meaning here: accepted, and ignored with a debug log
IGNORED_OPTIONS = ("certificate", "token", "server", "version", "registry")
RECORD_KEYS = (
    "id", "userid", "image", "type", "status", "name", "startTime", "expiryTime", "connectURL",
    "requestedRAM", "requestedCPUCores", "requestedGPUCores", "coresInUse", "ramInUse",
)  # fmt: skip

Ids = str | Sequence[str]
T = TypeVar("T")


# -- CANFAR's shapes from Client's ------------------------------------------------------------
def _number(value: float | int) -> float | int:
    """2.0 -> 2 (CANFAR shows whole numbers without a point); 0.5 stays 0.5."""
    return int(value) if float(value).is_integer() else value


def _amount(value: float | int | None, unit: str = "") -> str:
    return NONE if value is None else f"{_number(value)}{unit}"


def _time(iso: str | None) -> str:
    """Client's "2025-01-02T03:04:05.678Z" as CANFAR writes it, "2025-01-02T03:04:05Z"."""
    return f"{iso[:19]}Z" if iso else NONE


def canfar_record(record: dict[str, Any]) -> dict[str, str]:
    """A Client session record with CANFAR's keys and string values. sessionq measures no
    usage (`coresInUse`, `ramInUse`) and keeps sessions until destroyed (`expiryTime`): those
    are "<none>"; `connectURL` is "" (falsy, as CANFAR's connect() tests it) with no dashboard."""
    return {
        "id": record["id"],
        "userid": record["owner"],
        "image": record["image"] or NONE,
        "type": record["kind"],
        "status": record["status"],
        "name": record["name"],
        "startTime": _time(record["started_at"]),
        "expiryTime": NONE,
        "connectURL": record["connect_url"] or "",
        "requestedRAM": _amount(record["ram"], "G"),
        "requestedCPUCores": _amount(record["cores"]),
        "requestedGPUCores": _amount(record["gpu"]),
        "coresInUse": NONE,
        "ramInUse": NONE,
    }


def canfar_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Client.stats() as CANFAR's: cores requested by running sessions and offered by live
    workers, and the largest live worker by cores and by ram."""
    most_cores, most_ram = stats["max_cores"], stats["max_ram"]
    return {
        "cores": {
            "requestedCPUCores": _number(stats["cores"]["requested"]),
            "coresAvailable": _number(stats["cores"]["available"]),
            "maxCores": {
                "cores": _number(most_cores["cores"]),
                "withRam": _amount(most_cores["with_ram"], "Gi"),
            },
        },
        "ram": {
            "maxRAM": {
                "ram": _amount(most_ram["ram"], "Gi"),
                "withCores": _number(most_ram["with_cores"]),
            }
        },
    }


def canfar_events(ids: list[str], events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One {id: the session's events as lines of text} per id that has any, in order."""
    lines: dict[str, list[str]] = {}
    for event in events:
        lines.setdefault(event["session"], []).append(format_event(event))
    return [{sid: "".join(f"{line}\n" for line in lines[sid])} for sid in ids if sid in lines]


def pick_ids(ids: Ids | None, id: Ids | None) -> Ids:
    """`ids`, or `id` as the seed's own examples spell it (`destroy(id="hjko98yghj")`)."""
    if ids is not None and id is not None:
        raise ValidationError("id", "give ids or id, not both")
    chosen = ids if ids is not None else id
    if chosen is None:
        raise ValidationTypeError("ids", "expected an id or a list of ids, got nothing")
    return chosen


# -- constructor options ----------------------------------------------------------------------
def _redis_url(url: str | None) -> str | None:
    """The Redis URL to use: CANFAR's own `url` is its server's https address, which means
    nothing here (then Redis is found as Client finds it)."""
    if url is not None and url.startswith(("http://", "https://")):
        log.debug("url %s is a CANFAR server address: ignored, Redis found as Client finds it", url)
        return None
    return url


def _options(
    timeout: float | None,
    concurrency: int | None,
    loglevel: int | str | None,
    ignored: dict[str, object],
) -> None:
    """Check the options, set the logger's level, log what has no meaning here."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ValidationError("timeout", f"expected seconds > 0, got {timeout!r}")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ValidationError("concurrency", f"expected an int >= 1, got {concurrency!r}")
    if loglevel is not None:
        level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValidationError("loglevel", f"expected a logging level, got {loglevel!r}")
        logging.getLogger(PACKAGE_LOGGER).setLevel(level)
    for name, value in ignored.items():
        if value is not None:
            log.debug("%s has no meaning for sessionq: ignored", name)


def _socket_timeout(redis: Redis | AsyncRedis, timeout: float | None) -> None:
    """`timeout` as the Redis socket timeout of the connections the client has yet to open
    (it opens none before its first call)."""
    if timeout is not None:
        redis.connection_pool.connection_kwargs["socket_timeout"] = timeout


class _Options:
    """CANFAR's constructor keywords, one signature for Session and AsyncSession: checked,
    `loglevel` set, what has no meaning here logged; then the subclass opens its client."""

    def __init__(
        self,
        *,
        timeout: float | None = None,
        concurrency: int | None = None,
        loglevel: int | str | None = None,
        url: str | None = None,
        prefix: str | None = None,
        user: str | None = None,
        certificate: object = None,
        token: object = None,
        server: object = None,
        version: object = None,
        registry: object = None,
    ) -> None:
        ignored = dict(zip(IGNORED_OPTIONS, (certificate, token, server, version, registry),
                           strict=True))  # fmt: skip
        _options(timeout, concurrency, loglevel, ignored)
        self.timeout = timeout
        self.concurrency = concurrency
        self._connect(_redis_url(url), prefix, user)

    def _connect(self, url: str | None, prefix: str | None, user: str | None) -> None:
        """Open `self.client` (Session's a Client, AsyncSession's an AsyncClient)."""
        raise NotImplementedError


# -- the sessions ---------------------------------------------------------------------------
class Session(_Options):
    """CANFAR's Session API on sessionq (seed 002): create, fetch, stats, info, logs, events,
    destroy, destroy_with and connect, with CANFAR's arguments and replies.

    `timeout` is the Redis socket timeout (seconds) and `loglevel` the level of the `sessionq`
    loggers; `concurrency` has no effect on the sync client (as in CANFAR). `url` is a Redis URL
    (a CANFAR https address is ignored); with none, Redis is found as `Client` finds it
    (SESSIONQ_URL, REDIS_URL, then localhost). `certificate`, `token`, `server`, `version` and
    `registry` are accepted and ignored. The `Client` underneath is `self.client`.
    """

    client: Client

    def _connect(self, url: str | None, prefix: str | None, user: str | None) -> None:
        if self.concurrency is not None:
            log.debug("concurrency has no effect on the sync client")
        self.client = Client(url, prefix=prefix, user=user)
        _socket_timeout(self.client.redis, self.timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, str]]:
        """The caller's sessions (everyone's with view="all"), by kind and status."""
        return [canfar_record(r) for r in self.client.fetch(kind, status, view)]

    def stats(self) -> dict[str, Any]:
        """Cores requested and available, and the largest worker by cores and by ram."""
        return canfar_stats(self.client.stats())

    def info(self, ids: Ids | None = None, *, id: Ids | None = None) -> list[dict[str, Any]]:
        """The sessions' records; unknown ids are logged and left out."""
        return [canfar_record(r) for r in self.client.info(pick_ids(ids, id))]

    def logs(
        self, ids: Ids | None = None, verbose: bool = False, *, id: Ids | None = None
    ) -> dict[str, str] | None:
        """id -> the session's output; `verbose` prints them and returns None."""
        return self.client.logs(pick_ids(ids, id), verbose)

    def create(
        self,
        name: str,
        image: str | None = None,
        cores: float | None = None,
        ram: float | None = None,
        kind: str = "headless",
        gpu: float | None = None,
        cmd: str | Sequence[str] | None = None,
        args: str | Sequence[Any] | None = None,
        env: dict[str, Any] | None = None,
        replicas: int = 1,
        *,
        task: str | Callable[..., Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[str]:
        """Launch `replicas` sessions (named name-1 … name-N when more than one); their ids."""
        return self.client.create(
            name, image, cores, ram, kind, gpu, cmd, args, env, replicas,
            task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
        )  # fmt: skip

    def events(
        self, ids: Ids | None = None, verbose: bool = False, *, id: Ids | None = None
    ) -> list[dict[str, str]] | None:
        """[{id: the session's events as text}] for the ids that have any; `verbose` prints
        them and returns None."""
        chosen = pick_ids(ids, id)
        if verbose:
            return self.client.events(chosen, verbose=True)
        id_list = [chosen] if isinstance(chosen, str) else list(chosen)
        return canfar_events(id_list, self.client.events(list(dict.fromkeys(id_list))) or [])

    def destroy(self, ids: Ids | None = None, *, id: Ids | None = None) -> dict[str, bool]:
        """id -> whether its destruction was accepted."""
        return self.client.destroy(pick_ids(ids, id))

    def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = Status.COMPLETED
    ) -> dict[str, bool]:
        """Destroy the sessions whose name starts with `prefix` (a regex when it has regex
        metacharacters; an invalid one is a ValueError)."""
        return self.client.destroy_with(prefix, kind=kind, status=status)

    def connect(self, ids: Ids | None = None, *, id: Ids | None = None) -> None:
        """Open each session's dashboard page; with no dashboard, follow them in the terminal."""
        self.client.connect(pick_ids(ids, id))


class AsyncSession(_Options):
    """CANFAR's AsyncSession: Session's calls as coroutines, on an `AsyncClient`.

    `concurrency` caps the calls in flight at once (as CANFAR's caps its requests); the other
    options are Session's."""

    client: AsyncClient

    def _connect(self, url: str | None, prefix: str | None, user: str | None) -> None:
        self.client = AsyncClient(url, prefix=prefix, user=user)
        _socket_timeout(self.client.redis, self.timeout)
        _socket_timeout(self.client.sync.redis, self.timeout)
        self._slots = asyncio.Semaphore(self.concurrency) if self.concurrency else None

    async def _limited(self, call: Awaitable[T]) -> T:
        """Await one call, at most `concurrency` at once."""
        if self._slots is None:
            return await call
        async with self._slots:
            return await call

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, str]]:
        records = await self._limited(self.client.fetch(kind, status, view))
        return [canfar_record(r) for r in records]

    async def stats(self) -> dict[str, Any]:
        return canfar_stats(await self._limited(self.client.stats()))

    async def info(self, ids: Ids | None = None, *, id: Ids | None = None) -> list[dict[str, Any]]:
        records = await self._limited(self.client.info(pick_ids(ids, id)))
        return [canfar_record(r) for r in records]

    async def logs(
        self, ids: Ids | None = None, verbose: bool = False, *, id: Ids | None = None
    ) -> dict[str, str] | None:
        return await self._limited(self.client.logs(pick_ids(ids, id), verbose))

    async def create(
        self,
        name: str,
        image: str | None = None,
        cores: float | None = None,
        ram: float | None = None,
        kind: str = "headless",
        gpu: float | None = None,
        cmd: str | Sequence[str] | None = None,
        args: str | Sequence[Any] | None = None,
        env: dict[str, Any] | None = None,
        replicas: int = 1,
        *,
        task: str | Callable[..., Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[str]:
        return await self._limited(
            self.client.create(
                name, image, cores, ram, kind, gpu, cmd, args, env, replicas,
                task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
            )
        )  # fmt: skip

    async def events(
        self, ids: Ids | None = None, verbose: bool = False, *, id: Ids | None = None
    ) -> list[dict[str, str]] | None:
        chosen = pick_ids(ids, id)
        if verbose:
            return await self._limited(self.client.events(chosen, verbose=True))
        id_list = [chosen] if isinstance(chosen, str) else list(chosen)
        events = await self._limited(self.client.events(list(dict.fromkeys(id_list))))
        return canfar_events(id_list, events or [])

    async def destroy(self, ids: Ids | None = None, *, id: Ids | None = None) -> dict[str, bool]:
        return await self._limited(self.client.destroy(pick_ids(ids, id)))

    async def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = Status.COMPLETED
    ) -> dict[str, bool]:
        return await self._limited(self.client.destroy_with(prefix, kind=kind, status=status))

    async def connect(self, ids: Ids | None = None, *, id: Ids | None = None) -> None:
        await self._limited(self.client.connect(pick_ids(ids, id)))
