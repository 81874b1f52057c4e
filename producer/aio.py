"""`AsyncClient`: the session calls of SPEC §2 as coroutines and `listen` as an async
iterator, for producers that live in an event loop (SPEC §5).

Everything runs on redis.asyncio, in the loop, with no thread: each §2 call carries out the
same plan (producer.plans) as `Client`'s call of that name, with pipelines and EVALSHA on
redis.asyncio instead of redis-py. `listen` drives the same ordering as `Client.listen`. The one
exception is the end of `connect`: opening a browser or following sessions in the terminal
blocks by nature, so that part (and only that part) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError

from sessionq.common.connection import connect_async, redis_says_later
from sessionq.common.settings import Settings
from sessionq.producer import plans
from sessionq.producer.client import Client, mapped_error, open_or_follow
from sessionq.producer.listen import AsyncListener, access_checked_async
from sessionq.producer.plans import Plan, ScriptCall, Step

T = TypeVar("T")


class AsyncClient:
    """`Client`'s §2 calls and `listen`, native on redis.asyncio."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        user: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        # the sync client lends its settings, key names and scripts; it sends nothing
        # except for connect()'s terminal follow, which runs in a thread
        self.sync = Client(url, prefix=prefix, user=user, settings=settings)
        self.settings = self.sync.settings
        self.keys = self.sync.keys
        self.scripts = self.sync.scripts
        self.redis = connect_async(self.settings)

    @property
    def user(self) -> str:
        return self.settings.user

    # -- carrying out plans --------------------------------------------------------------------
    async def _run(self, plan: Plan[T]) -> T:
        """Carry out a plan (producer.plans) on redis.asyncio; a lost, refusing or full Redis
        (after the connection's own retries) raises the SessionqError that says so, as for
        Client (client.mapped_error)."""
        reply: Any = None
        try:
            while True:
                try:
                    step = plan.send(reply)
                except StopIteration as done:
                    result: T = done.value
                    return result
                reply = await self._execute(step)
        except RedisError as exc:
            memory = None
            if redis_says_later(exc) == "OOM":
                try:
                    memory = await self.redis.info("memory")
                except RedisError:
                    pass
            error = mapped_error(self.settings.url, exc, memory)
            if error is None:
                raise
            raise error from exc

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, ScriptCall):
            return await self.scripts.call_async(self.redis, step.name, step.keys, step.args)
        async with self.redis.pipeline(transaction=False) as pipe:
            return await step.queue_on(pipe).execute()

    # -- SPEC §2 -------------------------------------------------------------------------------
    async def create(self, name: str, *args: Any, **kwargs: Any) -> list[str]:
        """As Client.create (CANFAR's positional order); one script call writes it all."""
        return await self._run(plans.create(self.scripts, name, *args, **kwargs))

    async def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._run(plans.fetch(self.scripts, kind, status, view))

    async def stats(self) -> dict[str, Any]:
        return await self._run(plans.stats(self.scripts))

    async def info(self, ids: str | Sequence[str]) -> list[dict[str, Any]]:
        return await self._run(plans.info(self.scripts, ids))

    async def logs(self, ids: str | Sequence[str], verbose: bool = False) -> dict[str, str] | None:
        return await self._run(plans.logs(self.scripts, ids, verbose))

    async def events(
        self, ids: str | Sequence[str], verbose: bool = False
    ) -> list[dict[str, Any]] | None:
        return await self._run(plans.events(self.scripts, ids, verbose))

    async def destroy(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return await self._run(plans.destroy(self.scripts, ids))

    async def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = "Completed"
    ) -> dict[str, bool]:
        return await self._run(plans.destroy_with(self.scripts, prefix, kind=kind, status=status))

    async def connect(self, ids: str | Sequence[str]) -> None:
        """As Client.connect. The records are read here, in the loop; opening the browser and
        following in the terminal block, so that part alone runs in a worker thread."""
        records = await self.info(ids)
        if records:
            await asyncio.to_thread(open_or_follow, self.sync, records)

    # -- SPEC §5 -------------------------------------------------------------------------------
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
