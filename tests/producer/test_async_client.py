"""AsyncClient under asyncio: the calls, and listen() with the same guarantees."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import Redis

from common.settings import Settings
from producer import AsyncClient
from tests.conftest import WorkerProcs


def test_calls_and_listen_under_asyncio(
    settings: Settings, workers: WorkerProcs, redis: Redis
) -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncClient(settings=settings) as client:
            ids = await client.create("aio", task="tests.tasks:with_progress", replicas=2)
            seen: list[dict[str, Any]] = []

            async def follow() -> None:
                async for event in client.listen(ids, after=0, timeout=30):
                    seen.append(event)
                    if len(seen) == 3:  # kill the listener's connection mid-run
                        for info in redis.client_list(_type="pubsub"):
                            redis.client_kill_filter(_id=info["id"])

            task = asyncio.create_task(follow())
            await asyncio.to_thread(workers.start, 1)
            await asyncio.wait_for(task, 60)
            records = await client.info(ids)
            history = await client.events(ids) or []
            return seen, records, history

    seen, records, history = asyncio.run(main())
    assert [r["status"] for r in records] == ["Completed", "Completed"]
    assert sorted(seen, key=lambda e: (e["session"], e["seq"])) == sorted(
        history, key=lambda e: (e["session"], e["seq"]))  # fmt: skip
    for sid in {e["session"] for e in seen}:
        seqs = [e["seq"] for e in seen if e["session"] == sid]
        assert seqs == list(range(1, len(seqs) + 1))


def test_validation_errors_raise_from_coroutines(settings: Settings) -> None:
    async def main() -> None:
        async with AsyncClient(settings=settings) as client:
            try:
                await client.create("bad name!", cmd="true")
            except ValueError as exc:
                assert str(exc).startswith("name: ")
            else:
                raise AssertionError("expected a ValueError")
            assert [e async for e in client.listen("nosuch", after=0, timeout=0.5)] == []

    asyncio.run(main())
