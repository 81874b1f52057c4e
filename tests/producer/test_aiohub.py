"""The event loop's pub/sub hub (producer.aiohub): async listeners in one loop share one
connection and still each yield every event once, in order (SPEC §5), also across a killed
connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, cast

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client, aiohub, routing
from sessionq.producer.listen import AsyncListener
from tests.producer.test_hub import consecutive, progress, pubsub_ids, subscribers


class AsyncFollower:
    """A task of the loop with its own AsyncClient and listen(), as an application's task
    would have; it stops at the event whose data says "last" (or after `stop_after`)."""

    def __init__(
        self, settings: Settings, ids: Any, *, stop_after: int | None = None, **options: Any
    ) -> None:
        self.client = AsyncClient(settings=settings)
        self.stream = cast(AsyncGenerator[dict[str, Any], None],
                           self.client.listen(ids, timeout=30, **options))  # fmt: skip
        self.stop_after = stop_after
        self.events: list[dict[str, Any]] = []
        self.started = asyncio.Event()  # it has yielded its first event
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.stream:
                self.events.append(event)
                self.started.set()
                if event["data"].get("last") or len(self.events) == self.stop_after:
                    break
        finally:
            await self.stream.aclose()
            await self.client.aclose()

    async def join(self) -> list[dict[str, Any]]:
        await asyncio.wait_for(self.task, 60)
        return self.events

    def seqs(self, sid: str) -> list[int]:
        return [e["seq"] for e in self.events if e["session"] == sid]


async def until(predicate: Callable[[], Any], *, what: str, timeout: float = 15.0) -> None:
    """Poll `predicate` (letting the loop run) until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


async def started(followers: list[AsyncFollower]) -> None:
    await asyncio.wait_for(asyncio.gather(*(f.started.wait() for f in followers)), 30)


def emitting(client: Client, sid: str, n: int, *, last: bool = True) -> Awaitable[None]:
    """Emit in a thread: the loop goes on delivering meanwhile."""
    return asyncio.to_thread(progress, client, sid, n, last=last)


def test_async_listeners_in_one_loop_share_one_connection_and_see_the_same_sequence(
    settings: Settings, client: Client, redis: Redis, keys: Keys, two_sessions: tuple[str, str]
) -> None:
    a, b = two_sessions

    async def main() -> None:
        on_a = [AsyncFollower(settings, a, after=0) for _ in range(40)]
        on_b = [AsyncFollower(settings, [b], after=0) for _ in range(5)]
        everywhere = AsyncFollower(settings, None, after={a: 0})  # every session, a replayed
        followers = [*on_a, *on_b, everywhere]
        await started(followers)
        assert aiohub.hubs() == 1
        assert len(pubsub_ids(redis)) == 1, "46 listeners, one pub/sub connection"
        for channel in (keys.events_channel(a), keys.events_channel(b), keys.events_all_channel()):
            assert subscribers(redis, channel) == 1
        await emitting(client, a, 150)
        await emitting(client, b, 50)
        expected_a = client.history_after(a, 0)
        assert [e["seq"] for e in expected_a] == list(range(1, len(expected_a) + 1))
        for follower in on_a:
            assert await follower.join() == expected_a
        for follower in on_b:
            assert await follower.join() == client.history_after(b, 0)
        await everywhere.join()  # it stops at the first "last": a's
        assert everywhere.seqs(a) == [e["seq"] for e in expected_a]
        assert consecutive(everywhere.seqs(b)) or not everywhere.seqs(b)
        # the last listener's close() ends the hub and its connection
        assert aiohub.hubs() == 0
        await until(lambda: not pubsub_ids(redis), what="the hub's connection to close")

    asyncio.run(main())


def test_an_async_listener_leaving_does_not_disturb_the_others(
    settings: Settings, client: Client, redis: Redis, keys: Keys, two_sessions: tuple[str, str]
) -> None:
    a, b = two_sessions

    async def main() -> None:
        stays = [AsyncFollower(settings, a, after=0) for _ in range(3)]
        leaves = [AsyncFollower(settings, a, after=0, stop_after=40) for _ in range(3)]
        other = AsyncFollower(settings, b, after=0, stop_after=1)  # b's only listener
        await started([*stays, *leaves, other])
        await other.join()
        await until(lambda: subscribers(redis, keys.events_channel(b)) == 0,
                    what="the hub to unsubscribe from the channel no listener wants")  # fmt: skip
        await emitting(client, a, 100, last=False)
        for follower in leaves:
            assert len(await follower.join()) == 40
        assert subscribers(redis, keys.events_channel(a)) == 1  # the others still listen
        assert len(pubsub_ids(redis)) == 1
        await emitting(client, a, 0)  # the "last" one
        for follower in stays:
            assert await follower.join() == client.history_after(a, 0)
        assert aiohub.hubs() == 0

    asyncio.run(main())


def test_a_killed_async_hub_connection_loses_nothing_for_any_listener(
    settings: Settings, client: Client, redis: Redis, two_sessions: tuple[str, str]
) -> None:
    a, _ = two_sessions

    def kill_the_hub_connection() -> None:
        [before] = pubsub_ids(redis)
        assert redis.client_kill_filter(_id=str(before)) == 1

    async def main() -> None:
        followers = [AsyncFollower(settings, a, after=0) for _ in range(10)]
        everywhere = AsyncFollower(settings, None, after={a: 0})
        await started([*followers, everywhere])
        # in the middle of a busy stream: what follows shows each listener the gap
        busy: asyncio.Task[None] = asyncio.create_task(emitting(client, a, 300, last=False))
        await until(lambda: min(len(f.events) for f in followers) > 60,
                    what="the listeners to be busy")  # fmt: skip
        kill_the_hub_connection()
        await busy
        await until(lambda: len(pubsub_ids(redis)) == 1, what="the hub to reconnect")
        # and at the end: the last events go out while the hub is away, nothing follows
        # them; only reading the history after the reconnect finds them
        kill_the_hub_connection()
        await emitting(client, a, 20)
        expected = client.history_after(a, 0)
        assert len(expected) == 2 + 300 + 20 + 1  # created, queued; progress; last
        for follower in followers:
            assert await follower.join() == expected, "every event once, in order"
        assert await everywhere.join() == expected

    asyncio.run(main())


def test_loops_in_two_threads_each_have_their_own_hub(
    settings: Settings, client: Client, redis: Redis, two_sessions: tuple[str, str]
) -> None:
    a, _ = two_sessions

    async def follow() -> list[dict[str, Any]]:
        follower = AsyncFollower(settings, a, after=0)
        return await follower.join()

    async def main() -> None:
        first = asyncio.create_task(asyncio.to_thread(asyncio.run, follow()))
        second = asyncio.create_task(asyncio.to_thread(asyncio.run, follow()))
        await until(lambda: len(pubsub_ids(redis)) == 2, what="a hub in each loop")
        await emitting(client, a, 10)
        expected = client.history_after(a, 0)
        assert await first == expected
        assert await second == expected

    asyncio.run(main())
    assert aiohub.hubs() == 0


def test_an_async_listener_far_behind_reads_the_history_instead(
    settings: Settings,
    client: Client,
    two_sessions: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = two_sessions
    monkeypatch.setattr(routing, "MAX_BACKLOG_EVENTS", 5)

    async def main() -> list[dict[str, Any]]:
        async with AsyncClient(settings=settings) as aio:
            stream = cast(AsyncGenerator[dict[str, Any], None], aio.listen(a, after=0, timeout=30))
            events = [await anext(stream)]  # subscribed; now it reads nothing for a while
            with caplog.at_level(logging.WARNING, logger="sessionq.producer.routing"):
                await emitting(client, a, 50)
                await until(lambda: "events behind" in caplog.text,
                            what="the hub to give up queueing")  # fmt: skip
            async for event in stream:
                events.append(event)
                if event["data"].get("last"):
                    break
            await stream.aclose()
            return events

    assert asyncio.run(main()) == client.history_after(a, 0)


def test_a_refused_async_subscription_ends_that_listener_only(acl_server: RedisServer) -> None:
    url = f"redis://alice:alice-pw@127.0.0.1:{acl_server.port}/0"
    mine = Settings.from_env(url, environ={}, user="alice")

    async def main(client: Client, sid: str) -> None:
        follower = AsyncFollower(mine, sid, after=0)
        await started([follower])
        async with AsyncClient(settings=mine) as aio:
            outside = AsyncListener(aio.redis, Keys("b:"), [sid], timeout=5)  # b:... refused
            with pytest.raises(NoPermissionError):
                await anext(outside.__aiter__())
        assert aiohub.hubs() == 1
        await emitting(client, sid, 10)
        assert await follower.join() == client.history_after(sid, 0)

    with Client(settings=mine) as client:
        [sid] = client.create("a", task="tests.tasks:noop")
        asyncio.run(main(client, sid))
