"""The process's pub/sub hub (producer.hub): listeners in one process share one connection
and still each yield every event once, in order (SPEC §5), also across a killed connection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Sequence
from typing import Any, cast

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client, hub, routing
from sessionq.producer.listen import Listener, Ordering
from tests.conftest import wait_for


class Follower:
    """A thread with its own Client and listen(), as an application thread would have; it
    stops at the event whose data says "last" (or after `stop_after` events)."""

    def __init__(
        self, settings: Settings, ids: Any, *, stop_after: int | None = None, **options: Any
    ) -> None:
        self.client = Client(settings=settings)
        self.stream = cast(
            Generator[dict[str, Any], None, None],
            self.client.listen(ids, timeout=30, **options),
        )
        self.stop_after = stop_after
        self.events: list[dict[str, Any]] = []
        self.started = threading.Event()  # it has yielded its first event
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
                self.started.set()
                if event["data"].get("last") or len(self.events) == self.stop_after:
                    break
        finally:
            self.stream.close()
            self.client.close()

    def join(self) -> list[dict[str, Any]]:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.events

    def seqs(self, sid: str) -> list[int]:
        return [e["seq"] for e in self.events if e["session"] == sid]


def progress(client: Client, sid: str, n: int, *, last: bool = True) -> None:
    for i in range(n):
        client.scripts.emit(sid, [("task.progress", None, {"i": i})])
    if last:
        client.scripts.emit(sid, [("task.progress", None, {"last": True})])


def pubsub_ids(redis: Redis) -> set[int]:
    return {int(info["id"]) for info in redis.client_list(_type="pubsub")}


def subscribers(redis: Redis, channel: str) -> int:
    return int(dict(redis.pubsub_numsub(channel)).get(channel.encode(), 0))


def started(followers: Sequence[Follower]) -> None:
    wait_for(lambda: all(f.started.is_set() for f in followers), what="every listener to start")


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hubs left by earlier tests retire first; the ones of these tests soon after their
    last listener (the tests count hubs and connections)."""
    wait_for(lambda: hub.hubs() == 0, what="earlier tests' hubs to retire")
    monkeypatch.setattr(hub, "HUB_LINGER_S", 0.05)


def consecutive(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_listeners_in_one_process_share_one_connection_and_see_the_same_sequence(
    settings: Settings, client: Client, redis: Redis, keys: Keys, two_sessions: tuple[str, str]
) -> None:
    a, b = two_sessions
    on_a = [Follower(settings, a, after=0) for _ in range(20)]
    on_b = [Follower(settings, [b], after=0) for _ in range(5)]
    everywhere = Follower(settings, None, after={a: 0})  # every session, a replayed
    followers = [*on_a, *on_b, everywhere]
    started(followers)
    assert hub.hubs() == 1
    assert len(pubsub_ids(redis)) == 1, "26 listeners, one pub/sub connection"
    for channel in (keys.events_channel(a), keys.events_channel(b), keys.events_all_channel()):
        assert subscribers(redis, channel) == 1
    progress(client, a, 150)
    progress(client, b, 50)
    expected_a = [e["seq"] for e in client.history_after(a, 0)]
    assert expected_a == list(range(1, len(expected_a) + 1))
    for follower in on_a:
        follower.join()
        assert follower.events == client.history_after(a, 0)
    for follower in on_b:
        follower.join()
        assert follower.events == client.history_after(b, 0)
    everywhere.join()  # it stops at the first "last": a's
    assert everywhere.seqs(a) == expected_a
    assert consecutive(everywhere.seqs(b)) or not everywhere.seqs(b)
    # once the last listener has closed (and HUB_LINGER_S passed), the hub and its
    # connection end
    wait_for(lambda: hub.hubs() == 0, what="the hub to retire")
    wait_for(lambda: not pubsub_ids(redis), what="the hub's connection to close")


def test_a_listener_leaving_does_not_disturb_the_others(
    settings: Settings, client: Client, redis: Redis, keys: Keys, two_sessions: tuple[str, str]
) -> None:
    a, b = two_sessions
    stays = [Follower(settings, a, after=0) for _ in range(3)]
    leaves = [Follower(settings, a, after=0, stop_after=40) for _ in range(3)]
    other = Follower(settings, b, after=0, stop_after=1)  # the only listener of b's channel
    started([*stays, *leaves, other])
    other.join()
    wait_for(lambda: subscribers(redis, keys.events_channel(b)) == 0,
             what="the hub to unsubscribe from the channel no listener wants")  # fmt: skip
    progress(client, a, 100, last=False)
    for follower in leaves:
        assert len(follower.join()) == 40
    assert subscribers(redis, keys.events_channel(a)) == 1  # the others still listen
    progress(client, a, 0)  # the "last" one
    for follower in stays:
        assert follower.join() == client.history_after(a, 0)
    wait_for(lambda: hub.hubs() == 0, what="the hub to retire")


def test_a_killed_hub_connection_loses_nothing_for_any_listener(
    settings: Settings, client: Client, redis: Redis, two_sessions: tuple[str, str]
) -> None:
    a, _ = two_sessions
    followers = [Follower(settings, a, after=0) for _ in range(10)]
    everywhere = Follower(settings, None, after={a: 0})
    started([*followers, everywhere])

    def kill_the_hub_connection() -> None:
        [before] = pubsub_ids(redis)
        assert redis.client_kill_filter(_id=str(before)) == 1

    # in the middle of a busy stream: what follows shows each listener the gap
    busy = threading.Thread(target=progress, args=(client, a, 300), kwargs={"last": False})
    busy.start()
    wait_for(lambda: min(len(f.events) for f in followers) > 60, what="the listeners to be busy")
    kill_the_hub_connection()
    busy.join()
    wait_for(lambda: len(pubsub_ids(redis)) == 1, what="the hub to reconnect")
    # and at the end: the last events go out while the hub is away, nothing follows them;
    # only reading the history after the reconnect finds them
    kill_the_hub_connection()
    progress(client, a, 20)
    expected = client.history_after(a, 0)
    assert len(expected) == 2 + 300 + 20 + 1  # created, queued; progress; last
    for follower in followers:
        assert follower.join() == expected, "every event once, in order"
    assert everywhere.join() == expected


def test_what_a_listener_does_to_its_events_no_other_listener_sees(
    settings: Settings, client: Client, two_sessions: tuple[str, str]
) -> None:
    a, _ = two_sessions
    vandal, witness = Follower(settings, a, after=0), Follower(settings, a, after=0)
    started([vandal, witness])
    progress(client, a, 20)
    for event in vandal.join():
        event["type"] = "vandalised"
        event["data"]["i"] = -1
    assert witness.join() == client.history_after(a, 0)


def test_a_listener_far_behind_reads_the_history_instead(
    settings: Settings,
    client: Client,
    two_sessions: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = two_sessions
    monkeypatch.setattr(routing, "MAX_BACKLOG_EVENTS", 5)
    stream = client.listen(a, after=0, timeout=30)
    first = next(stream)  # subscribed; now it reads nothing for a while
    with caplog.at_level(logging.WARNING, logger="sessionq.producer.routing"):
        progress(client, a, 50)
        wait_for(lambda: "events behind" in caplog.text, what="the hub to give up queueing")
    events = [first]
    for event in stream:
        events.append(event)
        if event["data"].get("last"):
            break
    cast(Generator[Any, None, None], stream).close()
    assert events == client.history_after(a, 0)


def test_a_refused_subscription_ends_that_listener_only(acl_server: RedisServer) -> None:
    url = f"redis://alice:alice-pw@127.0.0.1:{acl_server.port}/0"
    mine = Settings.from_env(url, environ={}, user="alice")  # prefix sq:, one per process
    with Client(settings=mine) as client:
        [sid] = client.create("a", task="tests.tasks:noop")
        follower = Follower(mine, sid, after=0)
        started([follower])
        outside = Listener(client.redis, Keys("b:"), [sid], timeout=5)  # b:events:... refused
        with pytest.raises(NoPermissionError):
            next(iter(outside))
        assert hub.hubs() == 1
        progress(client, sid, 10)
        assert follower.join() == client.history_after(sid, 0)


def test_events_a_listener_does_not_want_are_held_back_by_the_hub(
    settings: Settings,
    client: Client,
    two_sessions: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `types`, the hub queues (wakes the listener for) only the events it yields and
    the terminal ones; what it held back it tells the listener, which then reads no history
    to fill the seqs it skipped."""
    a, _ = two_sessions
    queued: list[Any] = []  # what the hub queued for the filtering listener
    reads: list[int] = []  # history reads of either listener: after which seq
    put, history = hub.Subscription.put, Listener._history

    def counted_put(self: hub.Subscription, item: Any) -> None:
        if self.wants is not None:
            queued.append(item)
        put(self, item)

    def counted_history(self: Listener, sid: str, after: int) -> list[dict[str, Any]]:
        reads.append(after)
        return history(self, sid, after)

    monkeypatch.setattr(hub.Subscription, "put", counted_put)
    monkeypatch.setattr(Listener, "_history", counted_history)
    logs = Follower(settings, a, after=0, types=["task.log"])
    everything = Follower(settings, a, after=0)
    client.scripts.emit(a, [("task.log", None, {"hello": True})])
    started([logs, everything])
    queued.clear()
    for burst in range(3):
        progress(client, a, 10, last=False)
        client.scripts.emit(a, [("task.log", None, {"burst": burst})])
    client.scripts.emit(a, [("task.log", None, {"last": True})])  # ends both followers
    expected = client.history_after(a, 0)
    assert everything.join() == expected
    assert logs.join() == [e for e in expected if e["type"] == "task.log"]
    datas = [i.event["data"] if isinstance(i, routing.Passed) else i["data"] for i in queued]
    assert datas == [{"burst": 0}, {"burst": 1}, {"burst": 2}, {"last": True}]
    assert [isinstance(i, routing.Passed) for i in queued] == [True, True, True, False]
    assert reads == [0, 0], "only the baselines: no history read to fill held-back seqs"


def test_held_back_seqs_that_do_not_follow_on_are_read_from_the_history(keys: Keys) -> None:
    order = Ordering(keys, ["s"], types=["task.log"])  # from the live end: seq 2
    order.baseline({"s": (b"2", b"Running")}, {"s": []})
    event = {"session": "s", "seq": 9, "type": "task.log"}
    assert order.live(event, (5, 8)) == ("s", 2), "3 and 4 were not seen: read them"
    assert order.live(event, (3, 8)) == [event]
    assert order.live({"session": "s", "seq": 11, "type": "task.log"}, (9, 9)) == ("s", 9)


def test_a_listener_on_every_session_is_not_woken_by_ends_it_does_not_yield(keys: Keys) -> None:
    """The hub wakes a listener on listed sessions for the events that end them (it ends when
    they all have), even of types it does not yield; one on every session never ends, so an
    end it would drop does not wake it."""
    listed = Ordering(keys, ["s"], types=["task.succeeded"]).wants_or_all()
    every = Ordering(keys, None, types=["task.succeeded"]).wants_or_all()
    assert listed is not None and every is not None
    assert listed("session.completed") and listed("task.succeeded")
    assert not listed("task.started")
    assert every("task.succeeded") and not every("session.completed")
    assert Ordering(keys, None).wants_or_all() is None, "no types: woken for all"


def test_a_listener_opened_soon_after_the_last_one_closed_reuses_the_hub(
    settings: Settings, two_sessions: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer that opens a listener per run finds the hub's thread and connection
    ready; HUB_LINGER_S after the last listener closed, they end."""
    monkeypatch.setattr(hub, "HUB_LINGER_S", 3.0)
    a, _ = two_sessions
    Follower(settings, a, after=0, stop_after=1).join()
    [lingering] = hub._hubs.values()  # no listener left: the hub lingers, connected
    connection = lingering._conn
    assert connection is not None
    Follower(settings, a, after=0, stop_after=1).join()
    assert list(hub._hubs.values()) == [lingering] and lingering._conn is connection
    wait_for(lambda: hub.hubs() == 0, what="the hub to retire")
    wait_for(lambda: lingering._conn is None, what="the hub's connection to close")


def test_a_hub_past_its_linger_waits_for_an_open_subscription_without_spinning(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription the routes dropped (refused on a new connection) but that its listener
    has not closed yet keeps the hub: it then waits for the close, it does not poll in a
    loop."""
    sub = hub.subscribe(redis, ["sq:events:nobody"])
    [lingering] = hub._hubs.values()
    with hub._registry_lock:  # as an open subscription the routes no longer hold
        lingering.attached += 1
    waits: list[float | None] = []
    wait = lingering._wait

    def recorded_wait(timeout: float | None) -> bool:
        waits.append(timeout)
        return wait(timeout)

    monkeypatch.setattr(lingering, "_wait", recorded_wait)
    sub.close()
    # its linger (0.05 s), then a wait for a request or for Redis, not polls of 0 s
    wait_for(lambda: any(t is None or t > 1 for t in waits),
             what="the hub to wait past its linger without polling in a loop")  # fmt: skip
    assert sum(1 for t in waits if not t) <= 1, f"it polled in a loop: {waits[:5]}"
    with hub._registry_lock:
        lingering.attached -= 1
        lingering.post("remove", sub)  # wakes it: no listener, nothing open, it retires
    wait_for(lambda: hub.hubs() == 0, what="the hub to retire")


def test_a_lingering_hub_that_loses_its_connection_says_nothing_and_ends(
    settings: Settings,
    redis: Redis,
    two_sessions: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody listens any more (often Redis is shutting down, as at the end of the demo):
    no warning, no reconnecting; it ends at its linger's end."""
    monkeypatch.setattr(hub, "HUB_LINGER_S", 1.0)
    a, _ = two_sessions
    Follower(settings, a, after=0, stop_after=1).join()
    [lingering] = hub._hubs.values()
    with caplog.at_level(logging.DEBUG, logger="sessionq.producer.hub"):
        host, port = lingering._sock.getsockname()[:2]
        assert redis.client_kill_filter(addr=f"{host}:{port}") == 1
        wait_for(lambda: "idle pub/sub hub lost its connection" in caplog.text,
                 what="the hub to notice")  # fmt: skip
        wait_for(lambda: hub.hubs() == 0, what="the hub to retire")
    assert lingering._conn is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
