"""AsyncClient under asyncio: every §2 call native on redis.asyncio (no thread), answering as
the sync Client does, and listen() with the same guarantees."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import webbrowser
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client, ConnectionFailed, ValidationError
from tests.conftest import WorkerProcs, ended, home, wait_for


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
            with pytest.raises(ValidationError, match="^types: 'task.done' is not an event"):
                client.listen("nosuch", types=["task.done"])

    asyncio.run(main())


def test_listen_refuses_an_unknown_event_type_as_the_cli_does(client: Client) -> None:
    with pytest.raises(ValidationError, match="^types: 'bogus' is not an event type"):
        client.listen(None, types=["bogus"])
    for fine in (["task.*"], ["op.pause"], ["session.completed", "listener.gap"]):
        assert list(client.listen(None, types=fine, timeout=0.1)) == []


@contextlib.contextmanager
def in_the_loop_only(client: AsyncClient) -> Iterator[None]:
    """Fail if anything in the block hops to a thread (asyncio.to_thread, run_in_executor, a
    new Thread) or sends through the redis-py client the AsyncClient keeps for connect()."""
    loop = asyncio.get_running_loop()
    threads = threading.active_count()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"not in the event loop: {args[:2]!r}")

    pool = home(client.sync.redis, client.keys.sessions()).connection_pool
    with pytest.MonkeyPatch.context() as stand_in:
        stand_in.setattr(loop, "run_in_executor", refuse)
        stand_in.setattr(pool, "get_connection", refuse)
        yield
    assert threading.active_count() <= threads, "a thread was started"


def test_the_guard_catches_a_thread_hop(settings: Settings) -> None:
    async def main() -> None:
        async with AsyncClient(settings=settings) as client:
            with pytest.raises(AssertionError, match="not in the event loop"):
                with in_the_loop_only(client):
                    await asyncio.to_thread(client.sync.info, "nosuch")
            with pytest.raises(AssertionError, match="not in the event loop"):
                with in_the_loop_only(client):
                    client.sync.info("nosuch")

    asyncio.run(main())


def log_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name.startswith("sessionq.producer")
    ]
    caplog.clear()
    return lines


def test_every_call_runs_in_the_loop_and_answers_as_the_sync_client(
    settings: Settings,
    client: Client,
    workers: WorkerProcs,
    redis: Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    workers.start(1)
    with Client(settings=Settings.from_env(settings.url, environ={}, user="mallory")) as other:
        [theirs] = other.create("theirs", task="tests.tasks:noop")
    # the first call meets "Function not found" (EVALSHA: NOSCRIPT) and loads its script
    redis.function_flush()
    redis.script_flush()

    async def create() -> tuple[list[str], str, str]:
        async with AsyncClient(settings=settings) as aio:
            await aio.redis.ping()  # the loop resolves and connects before the guard
            with in_the_loop_only(aio):
                ok = await aio.create("aio", task="tests.tasks:with_progress", replicas=2)
                [bad] = await aio.create("bad", task="tests.tasks:boom", args=["no luck"])
                [parked] = await aio.create(  # CANFAR's positional order; no worker serves it
                    "parked", "img:2", 2, 3, "batch", None, None, None, None, 1,
                    task="tests.tasks:noop", queue="nobody",
                )  # fmt: skip
        return ok, bad, parked

    ok, bad, parked = asyncio.run(create())
    ids = [*ok, bad, parked, theirs, "nosuch"]
    wait_for(lambda: all(ended(client, sid) for sid in [*ok, bad, theirs]), what="runs to end")

    sync_views: dict[str, Any] = {
        "fetch": client.fetch(),
        "fetch_all": client.fetch(view="all"),
        "fetch_failed": client.fetch(kind="headless", status="Failed"),
        "fetch_batch": client.fetch(kind="batch"),
        "stats": client.stats(),
        "info": client.info(ids),
        "logs": client.logs(ids),
        "events": client.events(ids),
        "destroy_not_mine": client.destroy([theirs, "nosuch"]),
    }
    sync_logged = log_lines(caplog)
    client.logs(ids, verbose=True)
    client.events(ids, verbose=True)
    sync_printed = capsys.readouterr().out
    caplog.clear()

    async def read() -> tuple[dict[str, Any], str]:
        async with AsyncClient(settings=settings) as aio:
            await aio.redis.ping()
            with in_the_loop_only(aio):
                views: dict[str, Any] = {
                    "fetch": await aio.fetch(),
                    "fetch_all": await aio.fetch(view="all"),
                    "fetch_failed": await aio.fetch(kind="headless", status="Failed"),
                    "fetch_batch": await aio.fetch(kind="batch"),
                    "stats": await aio.stats(),
                    "info": await aio.info(ids),
                    "logs": await aio.logs(ids),
                    "events": await aio.events(ids),
                    "destroy_not_mine": await aio.destroy([theirs, "nosuch"]),
                }
                views["logged"] = log_lines(caplog)
                assert await aio.logs(ids, verbose=True) is None
                assert await aio.events(ids, verbose=True) is None
                await aio.connect(["nosuch"])
        return views, capsys.readouterr().out

    async_views, async_printed = asyncio.run(read())
    assert async_views.pop("logged") == sync_logged
    assert async_views == sync_views
    assert async_printed == sync_printed
    # the data is what it should be, so that the equality above says something
    info = {r["id"]: r for r in sync_views["info"]}
    assert [info[s]["status"] for s in ok] == ["Completed", "Completed"]
    assert [info[s]["result"] for s in ok] == ["done", "done"]
    assert info[bad]["status"] == "Failed" and "no luck" in info[bad]["error"]
    assert info[parked]["status"] == "Pending" and info[parked]["image"] == "img:2"
    assert (info[parked]["kind"], info[parked]["cores"], info[parked]["ram"]) == ("batch", 2, 3)
    assert "nosuch" not in info and theirs in info
    assert {r["id"] for r in sync_views["fetch"]} == {*ok, bad, parked}
    assert {r["id"] for r in sync_views["fetch_all"]} == {*ok, bad, parked, theirs}
    assert [r["id"] for r in sync_views["fetch_failed"]] == [bad]
    assert sync_views["stats"]["queues"]["nobody"] == 1
    assert sync_views["stats"]["workers"] == {"count": 1, "busy": 0}
    assert sync_views["logs"][ok[0]] == "all steps done\n" and "nosuch" not in sync_views["logs"]
    assert sync_views["destroy_not_mine"] == {theirs: False, "nosuch": False}
    assert ("WARNING", "no such session: nosuch") in sync_logged
    assert ("WARNING", f"destroy: session {theirs} belongs to mallory, not tester") in sync_logged
    assert "all steps done" in sync_printed and "task.succeeded" in sync_printed

    [running] = client.create("long", task="tests.tasks:stubborn_sleeper", args=[60])
    wait_for(lambda: client.info(running)[0]["status"] == "Running", what="the run to start")

    async def destroy() -> list[dict[str, bool]]:
        async with AsyncClient(settings=settings) as aio:
            await aio.redis.ping()
            with in_the_loop_only(aio):
                return [
                    await aio.destroy([running, parked]),
                    await aio.destroy_with("aio"),
                    await aio.destroy_with("^ba.$", status="Failed"),
                ]

    assert asyncio.run(destroy()) == [
        {running: True, parked: True},
        {ok[0]: True, ok[1]: True},
        {bad: True},
    ]
    # the running one too: the stop-job command reached its worker
    wait_for(lambda: client.fetch() == [], timeout=10, what="the destroyed sessions to go")
    assert [e["type"] for e in client.events(running) or []][-2:] == [
        "task.canceled", "session.destroyed"
    ]  # fmt: skip


def test_errors_are_raised_before_anything_is_written(settings: Settings, redis: Redis) -> None:
    async def main() -> None:
        async with AsyncClient(settings=settings) as aio:
            await aio.redis.ping()
            with in_the_loop_only(aio):
                for bad in (dict(replicas=0), dict(cores=0), dict(env={"1x": "y"})):
                    with pytest.raises(ValueError):
                        await aio.create("ok", cmd="true", **bad)
                with pytest.raises(TypeError):
                    await aio.create("ok", task="tests.tasks:add", args=[object()])
                with pytest.raises(ValueError, match="image"):
                    await aio.create("ok", image=3, cmd="true")
                with pytest.raises(ValidationError, match="view"):
                    await aio.fetch(view="mine")
                with pytest.raises(ValidationError, match="status"):
                    await aio.fetch(status="Done")
                with pytest.raises(ValueError, match="invalid regex"):
                    await aio.destroy_with("(unclosed")

    asyncio.run(main())
    assert redis.dbsize() == 0


def test_unreachable_redis_is_connection_failed_naming_the_url() -> None:
    url = "redis://127.0.0.1:1/0"
    settings = Settings.from_env(url, environ={}, user="tester", retry_budget_s=1.0)

    async def main() -> None:
        async with AsyncClient(settings=settings) as aio:
            with pytest.raises(ConnectionFailed, match=re.escape(url)):
                await aio.info("anything")

    asyncio.run(main())


def test_connect_opens_dashboard_pages(
    settings: Settings, client: Client, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    [sid] = client.create("shown", task="tests.tasks:noop")
    redis.set(keys.dashboard(), "http://dash.example/base/")
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open_new_tab", opened.append)
    client.connect([sid, "nosuch"])

    async def main() -> None:
        async with AsyncClient(settings=settings) as aio:
            await aio.connect([sid, "nosuch"])

    asyncio.run(main())
    assert opened == [f"http://dash.example/base/sessions/{sid}"] * 2
