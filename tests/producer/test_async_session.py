"""AsyncClient's persistent sessions: `await client.session(name)` is an AsyncSession whose
operations are the sync Session's, as coroutines on redis.asyncio (the same plans), and
AsyncClient's control calls answer as Client's."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from sessionq.common.settings import Settings
from sessionq.producer import (
    AsyncClient,
    AsyncSession,
    Client,
    ObjectNotFound,
    Session,
    SessionConfig,
    Task,
    TaskFailed,
)
from tests.conftest import WorkerProcs, wait_for


def test_an_async_session_adds_maps_saves_and_runs(
    settings: Settings, workers: WorkerProcs, client: Client
) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncClient(settings=settings) as aclient:
            s = await aclient.session("aio", config={"autoplay": False})
            assert isinstance(s, AsyncSession)
            first = await s.add(Task("tests.tasks:add", args=[1, 2], name="first"))
            mapped = await s.map("tests.tasks:echo", ["a", "b"])
            starred = await s.starmap("tests.tasks:add", [(2, 3)], flush=False)
            oid = await s.save({"k": [1, 2]}, flush=False)
            await s.flush()
            assert await s.load(oid) == {"k": [1, 2]}
            with pytest.raises(ObjectNotFound, match="nope"):
                await s.load("nope")
            assert await s.list_ids() == [first, *mapped, *starred]
            assert await s.count() == 4 and await s.has(first) and not await s.has("x-9")
            assert (await s.progress())["status"] == "Paused"
            await s.step()
            await asyncio.to_thread(workers.start, 1)
            await s.run(block=True, timeout=60)
            assert await s.wait(0) == "Completed"
            records = await s.records()
            assert (await s.record(first))["result"] == 3
            await s.remove(mapped[0])
            # the sync client sees the same session, opened by name
            sync = client.session("aio")
            return {"records": records, "ids": sync.list_ids(), "progress": sync.progress(),
                    "left": [first, *mapped[1:], *starred]}  # fmt: skip

    got = asyncio.run(main())
    assert [r["result"] for r in got["records"]] == [3, "a", "b", 5]
    assert got["ids"] == got["left"]
    assert got["progress"]["status"] == "Completed"


def test_async_control_and_health_check_answer_as_the_sync_ones(
    settings: Settings, workers: WorkerProcs, client: Client
) -> None:
    async def main() -> None:
        async with AsyncClient(settings=settings) as aclient:
            s = await aclient.session("failing")
            await s.pause()
            assert await aclient.pause([s.id, "no-such"]) == {s.id: True, "no-such": False}
            await s.add(Task("tests.tasks:boom", name="b"))
            assert await aclient.play(s.id) == {s.id: True}
            await asyncio.to_thread(workers.start, 1)
            assert await s.wait(60) == "Failed"
            with pytest.raises(TaskFailed, match="boom"):
                await s.health_check()
            tasks = await aclient.tasks(s.id)
            assert [t["state"] for t in tasks] == ["failed"]
            assert await aclient.restart(s.id, failed_only=True) == {s.id: True}
            await s.destroy()

    asyncio.run(main())
    wait_for(lambda: client.fetch() == [], timeout=60)  # destroyed by a worker


def test_the_async_session_has_every_operation_of_the_sync_one() -> None:
    sync_only = {"state", "listen_to_progress", "handle_events_with_file_logger",
                 "start_loop", "delete", "add_progress_system"}  # fmt: skip
    public = {n for n in dir(Session) if not n.startswith("_")} - sync_only
    missing = public - {n for n in dir(AsyncSession) if not n.startswith("_")}
    assert missing == set()
    for name in public - {"created_at", "workflow_ids", "flush_workflows", "listen"}:
        assert inspect.iscoroutinefunction(getattr(AsyncSession, name)), name


def test_async_create_is_typed_as_the_sync_one() -> None:
    sync = inspect.signature(Client.create)
    native = inspect.signature(AsyncClient.create)
    assert list(native.parameters) == list(sync.parameters)
    for name, param in sync.parameters.items():
        assert native.parameters[name].annotation == param.annotation, name
        assert native.parameters[name].default == param.default, name
        assert native.parameters[name].kind == param.kind, name


def test_a_config_given_to_the_async_open_is_stored(settings: Settings, client: Client) -> None:
    async def main() -> SessionConfig:
        async with AsyncClient(settings=settings) as aclient:
            s = await aclient.session("cfg", config={"max_running": 2})
            return s.config

    assert asyncio.run(main()).max_running == 2
    assert client.session("cfg", create=False).config.max_running == 2
