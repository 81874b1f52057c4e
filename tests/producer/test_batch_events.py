"""A batch publishes its events live to whoever listens, by channel or by pattern, though
scripts skip publishing on channels nobody listens to."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis import Redis

from sessionq.common import codec
from sessionq.common.jobhash import build_run
from sessionq.common.keys import Keys
from sessionq.producer import Client

RUNS = 20  # more events than a script publishes without asking who listens
WAIT_S = 10.0


def subscribed(redis: Redis, *, channels: Sequence[str] = (), patterns: Sequence[str] = ()) -> Any:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    if channels:
        pubsub.subscribe(*channels)
    if patterns:
        pubsub.psubscribe(*patterns)
    for _ in range(len(channels) + len(patterns)):  # the confirmations: subscribed from here
        assert pubsub.parse_response(timeout=WAIT_S) is not None
    return pubsub


def received(pubsub: Any, count: int) -> list[tuple[str, dict[str, Any]]]:
    """(channel, event) of `count` messages, waiting at most WAIT_S for them."""
    out: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + WAIT_S
    while len(out) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            out.append((message["channel"].decode(), codec.decode(message["data"])))
    return out


def batch(n: int) -> list[Any]:
    return [build_run(name=f"r{i}", task="tests.tasks:add", args=[i, 1]) for i in range(n)]


def test_a_batch_is_published_on_both_channels(client: Client, redis: Redis, keys: Keys) -> None:
    sid = client.open_session("big")
    pubsub = subscribed(redis, channels=[keys.events_channel(sid), keys.events_all_channel()])
    ids = client.add_runs(sid, batch(RUNS))
    got = received(pubsub, 2 * RUNS)
    pubsub.close()
    for channel in (keys.events_channel(sid), keys.events_all_channel()):
        events = [e for c, e in got if c == channel]
        assert [e["task"] for e in events] == ids
        assert {e["type"] for e in events} == {"task.queued"}


def test_a_batch_reaches_a_pattern_subscriber(client: Client, redis: Redis, keys: Keys) -> None:
    sid = client.open_session("big")
    pubsub = subscribed(redis, patterns=[keys.events_channel("*")])
    ids = client.add_runs(sid, batch(RUNS))
    assert [e["task"] for _, e in received(pubsub, RUNS)] == ids
    pubsub.close()


def test_a_batch_nobody_hears_is_kept(client: Client, keys: Keys) -> None:
    sid = client.open_session("big")
    ids = client.add_runs(sid, batch(RUNS))
    kept = [e for e in client.events(sid) or [] if e["type"] == "task.queued"]
    assert [e["task"] for e in kept] == ids
    assert [e["seq"] for e in kept] == list(range(kept[0]["seq"], kept[0]["seq"] + RUNS))
