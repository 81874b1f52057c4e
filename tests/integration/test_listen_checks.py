"""A listener checks the unusual live event against the history (SPEC §9): a terminal event
published by hand ends nothing, and a history that went back - as a failover that lost
writes leaves it - is said with a listener.gap (whatever the types filter), the listener
carrying on from what Redis now holds. Both faults caused for real on the test's Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from redis import Redis

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.keys import Keys
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client
from tests.conftest import WorkerProcs, wait_for


def listening(client: Client, sid: str, **options: Any) -> tuple[threading.Thread, list[Any]]:
    got: list[dict[str, Any]] = []

    def listen() -> None:
        got.extend(client.listen(sid, after=0, timeout=60, **options))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    return thread, got


def listening_async(settings: Settings, sid: str) -> tuple[threading.Thread, list[Any]]:
    got: list[dict[str, Any]] = []

    async def listen() -> None:
        async with AsyncClient(settings=settings) as client:
            async for event in client.listen(sid, after=0, timeout=60):
                got.append(event)

    thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    thread.start()
    return thread, got


def test_a_terminal_event_published_by_hand_ends_no_listener(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    [sid] = client.create("forged", task="tests.tasks:add", args=[1, 2])
    thread, got = listening(client, sid)
    wait_for(lambda: got, what="the replay (the listener has subscribed)")
    forged = {"v": 1, "seq": 999, "ts": time.time(), "type": "session.completed",
              "session": sid, "task": None, "worker": None, "data": {}}  # fmt: skip
    assert sync_reply(redis.publish(keys.events_channel(sid), codec.encode(forged))) >= 1
    workers.start(1)
    thread.join(timeout=60)
    assert not thread.is_alive()
    kept = client.events(sid) or []
    assert [(e["seq"], e["type"]) for e in got] == [(e["seq"], e["type"]) for e in kept]
    assert got[-1]["type"] == "session.completed" and got[-1]["seq"] < 999


def rewind(redis: Redis, keys: Keys, sid: str, seq: int) -> None:
    """What a failover to a replica that was behind leaves: the history and seq of `seq`."""
    redis.zremrangebyscore(keys.history(sid), f"({seq}", "+inf")
    redis.hset(keys.session(sid), "seq", seq)


def test_a_history_that_went_back_is_said_with_a_gap(
    client: Client, workers: WorkerProcs, redis: Redis, keys: Keys, settings: Settings
) -> None:
    [sid] = client.create("back", task="tests.tasks:add", args=[1, 2])
    scripts = Scripts(redis, settings)
    scripts.emit(sid, [("task.progress", None, {"i": i}) for i in range(6)])
    top = int(redis.hget(keys.session(sid), "seq") or 0)
    listeners = {
        "all": listening(client, sid),
        "filtered": listening(client, sid, types=["session.completed"]),
        "async": listening_async(settings, sid),
    }
    for name in ("all", "async"):
        got = listeners[name][1]

        def caught_up(got: list[dict[str, Any]] = got) -> bool:
            return bool(got) and got[-1]["seq"] == top

        wait_for(caught_up, what=f"{name} to catch up")
    rewind(redis, keys, sid, top - 3)  # the last three events were lost
    scripts.emit(sid, [("task.progress", None, {"after": "failover"})])  # seq top - 2 again
    workers.start(1)
    for thread, _ in listeners.values():
        thread.join(timeout=60)
        assert not thread.is_alive()
    kept = client.events(sid) or []
    for name in ("all", "async"):
        got = listeners[name][1]
        [gap] = [e for e in got if e["type"] == "listener.gap"]
        assert (gap["data"]["from_seq"], gap["data"]["to_seq"]) == (top - 2, top), name
        after = got[got.index(gap) + 1 :]
        assert [(e["seq"], e["type"]) for e in after] == [
            (e["seq"], e["type"]) for e in kept if e["seq"] >= top - 2
        ], f"{name}: from the gap on, what the history now holds"
        assert after[0]["data"] == {"after": "failover"}
    filtered = listeners["filtered"][1]
    assert [e["type"] for e in filtered] == ["listener.gap", "session.completed"]
    assert filtered[0]["data"]["from_seq"] == top - 2 and filtered[0]["data"]["to_seq"] >= top
