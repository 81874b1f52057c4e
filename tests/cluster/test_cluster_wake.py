"""An idle worker on a Redis Cluster is woken through sharded pub/sub (worker.shardwake): a
script SPUBLISHes each wake on the shard channel of the wake list's name, and a worker listens
to every partition's channels while it waits idle - and to none while it works."""

from __future__ import annotations

from typing import Any

from redis import Redis

from sessionq.common.keys import Layout
from sessionq.common.scripts.transport import server_of
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.shardwake import Waker
from tests.conftest import WorkerProcs, subscribers, wait_for

QUEUE = "default"


def wake_channels(settings: Settings) -> list[str]:
    return [part.wake(QUEUE) for part in Layout.of(settings).parts()]


def listened(redis: Redis, settings: Settings) -> list[int]:
    return [subscribers(redis, channel) for channel in wake_channels(settings)]


def test_an_enqueue_spublishes_its_wake_on_the_shard_channel_of_its_partition(
    settings: Settings, client: Client, redis: Redis
) -> None:
    channels = wake_channels(settings)
    # one pub/sub connection per master, subscribed there to its partitions' channels
    by_master: dict[int, tuple[Any, list[str]]] = {}
    for channel in channels:
        master = server_of(redis, channel)
        port = master.connection_pool.connection_kwargs["port"]
        by_master.setdefault(port, (master, []))[1].append(channel)
    pubsubs = []
    for master, mine in by_master.values():
        pubsub = master.pubsub(ignore_subscribe_messages=True)
        for channel in mine:
            pubsub.ssubscribe(channel)
        pubsubs.append(pubsub)
    try:
        wait_for(lambda: all(n == 1 for n in listened(redis, settings)), what="subscriptions")
        (sid,) = client.create("woken", task="tests.tasks:noop")
        theirs = Layout.of(settings).of_session(sid).wake(QUEUE)
        heard: list[Any] = []

        def hear() -> bool:
            for pubsub in pubsubs:
                message = pubsub.get_sharded_message(timeout=0.05)
                if message is not None:
                    heard.append((message["channel"].decode(), message["data"]))
            return bool(heard)

        wait_for(hear, what="a wake message")
        assert heard == [(theirs, b"1")]
    finally:
        for pubsub in pubsubs:
            pubsub.close()


def test_an_idle_worker_listens_on_every_partition_and_not_while_it_works(
    settings: Settings, client: Client, workers: WorkerProcs, redis: Redis
) -> None:
    parts = Layout.of(settings).count
    assert parts > 1
    workers.start(1)
    wait_for(lambda: listened(redis, settings) == [1] * parts,
             what="the idle worker to listen on every partition's wake channel")  # fmt: skip
    (sid,) = client.create("busy", task="tests.tasks:until_stopped", args=[60])
    wait_for(lambda: client.info([sid])[0]["status"] == "Running", what="the run to start")
    wait_for(lambda: listened(redis, settings) == [0] * parts,
             what="the busy worker to stop listening")  # fmt: skip
    client.stop(sid)
    wait_for(lambda: client.info([sid])[0]["status"] in ("Stopped", "Completed"),
             what="the run to end")  # fmt: skip
    wait_for(lambda: listened(redis, settings) == [1] * parts,
             what="the worker, idle again, to listen again")  # fmt: skip
    # runs queued in every partition while it waits are taken
    ids = client.create("after", task="tests.tasks:noop", replicas=40)
    wait_for(lambda: all(r["status"] == "Completed" for r in client.info(ids)),
             what="every session to complete")  # fmt: skip


def test_wakes_heard_together_name_every_partition_woken(settings: Settings, redis: Redis) -> None:
    """Two partitions woken at once (two enqueues while a worker waits): the wait names both,
    so its claims ask both (not the first only, the second left to the fallback)."""
    channels = {channel: n for n, channel in enumerate(wake_channels(settings))}
    waker = Waker(redis, channels)
    try:
        waker.arm()
        assert waker.armed and not waker.partial
        first, second = wake_channels(settings)[3], wake_channels(settings)[7]
        for channel in (first, second):
            server_of(redis, channel).execute_command("SPUBLISH", channel, "1")
        heard: list[int] = []

        def both() -> bool:
            heard.extend(waker.wait(0.5) or [])
            return set(heard) == {3, 7}

        wait_for(both, what="both wakes")
        assert heard == [3, 7]
        waker.disarm()
        wait_for(lambda: listened(redis, settings) == [0] * len(channels), what="unsubscribed")
    finally:
        waker.close()
