"""`AsyncClient`: the session calls of SPEC §2 as coroutines and `listen` as an async
iterator, for producers that live in an event loop (SPEC §5).

`listen` runs on redis.asyncio (one pub/sub connection, the same ordering as `Client.listen`).
The §2 calls run the synchronous client's code in a worker thread (`asyncio.to_thread`), so
they never block the loop and keep one implementation of each call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from common.connection import POOL_MAX_CONNECTIONS
from common.settings import Settings
from producer.client import Client
from producer.listen import AsyncListener, access_checked_async


class AsyncClient:
    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        user: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.sync = Client(url, prefix=prefix, user=user, settings=settings)
        self.settings = self.sync.settings
        self.keys = self.sync.keys
        self.redis = AsyncRedis.from_url(self.settings.url, max_connections=POOL_MAX_CONNECTIONS)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create(self, name: str, *args: Any, **kwargs: Any) -> list[str]:
        """As Client.create (CANFAR's positional order)."""
        return list(await self._call(self.sync.create, name, *args, **kwargs))

    async def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, Any]]:
        return list(await self._call(self.sync.fetch, kind, status, view))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._call(self.sync.stats))

    async def info(self, ids: str | Sequence[str]) -> list[dict[str, Any]]:
        return list(await self._call(self.sync.info, ids))

    async def logs(self, ids: str | Sequence[str], verbose: bool = False) -> dict[str, str] | None:
        result: dict[str, str] | None = await self._call(self.sync.logs, ids, verbose)
        return result

    async def events(
        self, ids: str | Sequence[str], verbose: bool = False
    ) -> list[dict[str, Any]] | None:
        result: list[dict[str, Any]] | None = await self._call(self.sync.events, ids, verbose)
        return result

    async def destroy(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return dict(await self._call(self.sync.destroy, ids))

    async def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = "Completed"
    ) -> dict[str, bool]:
        return dict(await self._call(self.sync.destroy_with, prefix, kind=kind, status=status))

    async def connect(self, ids: str | Sequence[str]) -> None:
        await self._call(self.sync.connect, ids)

    def listen(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as they happen, no gap and no duplicate per session, on redis.asyncio."""
        listener = AsyncListener(self.redis, self.keys, ids, types=types, after=after,
                                 timeout=timeout)  # fmt: skip
        return access_checked_async(listener.__aiter__(), self.settings.url)

    async def aclose(self) -> None:
        await self.redis.aclose()
        self.sync.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
