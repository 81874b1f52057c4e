"""`AsyncClient`: the session calls of SPEC §2 and §3 (persistent sessions as `AsyncSession`,
control) as coroutines and `listen` as an async iterator, for producers that live in an event
loop (SPEC §5).

Everything runs on redis.asyncio, in the loop, with no thread: each call carries out the
same plan (producer.plans, .control, .persistent, .session) as `Client`'s call of that name,
with pipelines and EVALSHA on redis.asyncio instead of redis-py. `listen` drives the same
ordering as `Client.listen`. The one exception is the end of `connect`: opening a browser or
following sessions in the terminal blocks by nature, so that part (and only that part) runs
in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool as AsyncConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from sessionq.common.connection import connect_async, redis_says_later
from sessionq.common.errors import ValidationTypeError
from sessionq.common.jobhash import RunSpec
from sessionq.common.scripts import transport
from sessionq.common.scripts.transport import clustered
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status, TaskState
from sessionq.producer import control, persistent, plans
from sessionq.producer.client import Client, mapped_error, open_or_follow
from sessionq.producer.listen import AsyncListener, access_checked_async
from sessionq.producer.plans import Plan, ScriptCall, Step, Transaction
from sessionq.producer.session import AsyncSession

T = TypeVar("T")


class AsyncClient:
    """`Client`'s calls (§2, §3) and `listen`, native on redis.asyncio."""

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
        self._homes: dict[str, AsyncRedis] = {}  # (a Redis Cluster's masters: _home)

    @property
    def user(self) -> str:
        return self.settings.user

    # -- carrying out plans --------------------------------------------------------------------
    async def _run(self, plan: Plan[T]) -> T:
        """Carry out a plan (producer.plans) on redis.asyncio; a lost, refusing or full Redis
        (after the connection's own retries) raises the SessionqError that says so, as for
        Client (client.mapped_error)."""
        reply: Any = None
        error: RedisError | None = None  # (the last step's: raised in the plan)
        try:
            while True:
                try:
                    step = plan.send(reply) if error is None else plan.throw(error)
                except StopIteration as done:
                    result: T = done.value
                    return result
                error = None
                try:
                    reply = await self._execute(step)
                except RedisError as exc:
                    error = exc
        except RedisError as exc:
            memory = None
            if redis_says_later(exc) == "OOM":
                try:
                    memory = await self.redis.info("memory")
                except RedisError:
                    pass
            mapped = mapped_error(self.settings.url, exc, memory)
            if mapped is None:
                raise
            raise mapped from exc

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, ScriptCall):
            return await self.scripts.call_async(self.redis, step.name, step.keys, step.args)
        if isinstance(step, Transaction):
            return await self._transaction(step)
        if clustered(self.redis):
            # redis.asyncio's cluster pipeline refuses multi-key reads (SINTER): one by one
            return [await getattr(self.redis, c.method)(*c.args, **c.kwargs)
                    for c in step.commands]  # fmt: skip
        async with self.redis.pipeline(transaction=False) as pipe:
            return await step.queue_on(pipe).execute()

    async def _transaction(self, step: Transaction) -> list[Any]:
        replies: list[Any] = []
        await self.scripts.ensure_version_async(self.redis)
        home = await self._home(step.route)
        for attempt in range(2):
            async with home.pipeline(transaction=True) as pipe:
                for item in step.items:
                    if isinstance(item, ScriptCall):
                        transport.queue(pipe, self.scripts.script(item.name), item.keys, item.args)
                    else:
                        getattr(pipe, item.method)(*item.args, **item.kwargs)
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(transport.missing(r) for r in replies):
                # first use on this server, or it restarted
                await transport.load_async(self.redis, [
                    self.scripts.script(item.name) for item in step.items
                    if isinstance(item, ScriptCall)])  # fmt: skip
                continue
            break
        wait = self.scripts.durability
        if (
            wait is not None
            and step.has_scripts
            and not any(isinstance(r, Exception) for r in replies)
        ):
            # WAIT counts its own connection's writes: a PUBLISH goes first (ensure_replicated)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.publish(self.keys.replicated(), b"")
                pipe.wait(wait.replicas, wait.timeout_ms)
                wait.check((await pipe.execute())[-1])
        return replies

    # -- SPEC §2 -------------------------------------------------------------------------------
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
        retry_delay: float | None = None,
        backoff: str = "exponential",
    ) -> list[str]:
        """As Client.create (CANFAR's positional order); one script call writes it all (one
        per partition: see Client.create)."""
        written: list[str] = []
        with plans.partly_written(written):
            return await self._run(
                plans.create(
                    self.scripts, name, image, cores, ram, kind, gpu, cmd, args, env, replicas,
                    task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
                    retry_delay=retry_delay, backoff=backoff,
                    written=written,
                )
            )  # fmt: skip

    async def resolve(self, refs: str | Sequence[str]) -> plans.Resolved:
        return await self._run(plans.resolve(self.scripts, refs))

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
        self, prefix: str, *, kind: str = "headless", status: str = Status.COMPLETED
    ) -> dict[str, bool]:
        return await self._run(plans.destroy_with(self.scripts, prefix, kind=kind, status=status))

    async def seqs(self, ids: Sequence[str]) -> list[int]:
        """The last event seq of each session (0 for none), in the order given."""
        return await self._run(plans.seqs(self.scripts, ids))

    async def history_after(self, sid: str, after: int) -> list[dict[str, Any]]:
        return await self._run(plans.history_after(self.scripts, sid, after))

    # -- SPEC §3 -------------------------------------------------------------------------------
    async def session(
        self,
        name: str | None = None,
        *,
        create: bool = True,
        config: SessionConfig | dict[str, Any] | None = None,
    ) -> AsyncSession:
        """As Client.session: an AsyncSession, whose operations are coroutines."""
        if not isinstance(create, bool):
            raise ValidationTypeError("create", f"expected True or False, got {create!r}")
        wanted = SessionConfig.coerce(config) if config is not None else None
        opened = await self._run(persistent.open_session(self.scripts, name, wanted, create))
        return AsyncSession(self, opened)

    async def open_session(
        self, name: str, *, kind: str = "session", config: dict[str, Any] | None = None,
        create: bool = True,
    ) -> str:  # fmt: skip
        wanted = SessionConfig.coerce(config) if config is not None else None
        plan = persistent.open_id(self.scripts, name, wanted, create, kind=kind)
        return (await self._run(plan))[0]

    async def add_runs(
        self, sid: str, specs: Sequence[RunSpec], *, state: str = TaskState.QUEUED
    ) -> list[str]:
        return await self._run(persistent.add_runs(self.scripts, sid, specs, state=state))

    async def pause(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return await self._run(control.pause(self.scripts, ids))

    async def play(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return await self._run(control.play(self.scripts, ids))

    async def step(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return await self._run(control.step(self.scripts, ids))

    async def stop(self, ids: str | Sequence[str]) -> dict[str, bool]:
        return await self._run(control.stop(self.scripts, ids))

    async def restart(
        self, ids: str | Sequence[str], *, failed_only: bool = False
    ) -> dict[str, bool]:
        return await self._run(control.restart(self.scripts, ids, failed_only=failed_only))

    async def tasks(self, sid: str) -> list[dict[str, Any]]:
        return await self._run(control.tasks(self.scripts, sid))

    async def task_records(
        self, sid: str, task_ids: Sequence[str], names: dict[str, str]
    ) -> list[dict[str, Any]]:
        return await self._run(control.task_records(self.scripts, task_ids, names))

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

    async def _home(self, route: str | None) -> Any:
        """Where a transaction goes: the client, or on a Redis Cluster a client of the master
        of the route's slot (as Client's server_of: a MULTI stays on one server, and redis-py
        5.3.0's cluster pipeline refuses transactions), one kept per master."""
        if route is None or not clustered(self.redis):
            return self.redis
        node = await transport.pool_of(self.redis, route)
        home = self._homes.get(node.name)
        if home is None:
            pool = AsyncConnectionPool(connection_class=node.connection_class,
                                       **node.connection_kwargs)  # fmt: skip
            home = self._homes[node.name] = AsyncRedis.from_pool(pool)  # (it closes the pool)
        return home

    async def aclose(self) -> None:
        await self.redis.aclose()
        for home in self._homes.values():
            await home.aclose()
        self.sync.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
