"""Events on a Redis Cluster go out on sharded pub/sub (issue 19): scripts SPUBLISH, which the
cluster bus carries to no other master, and listeners SSUBSCRIBE on the master of each
channel's slot - whichever node the client first connected to."""

from __future__ import annotations

import threading
from typing import Any

from redis import Redis
from redis.cluster import RedisCluster

from sessionq.common.scripts.transport import server_of
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import FAST, WorkerProcs, subscribers, wait_for


def calls(master: Redis, command: str) -> int:
    stats = master.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_events_are_spublished_and_heard_on_another_master(
    settings: Settings, redis: Redis
) -> None:
    cluster: Any = redis  # (a RedisCluster here)
    assert isinstance(cluster, RedisCluster)
    first = settings.url.removeprefix("redis+cluster://").split(",")[0]
    port = int(first.rsplit(":", 1)[1])
    # a client that knows one node only: the one it connects to first
    one = Settings.from_env(f"redis+cluster://{first}", environ={}, user="tester", **FAST)
    client = Client(settings=one)
    workers = WorkerProcs(one, redis)
    try:
        ids = client.create("shard", task="tests.tasks:noop", replicas=12)
        homes = {sid: server_of(redis, client.keys.session(sid)) for sid in ids}
        sid = next(s for s in ids
                   if homes[s].connection_pool.connection_kwargs["port"] != port)  # fmt: skip
        before = max(e["seq"] for e in client.events(sid) or [])
        masters = [cluster.get_redis_connection(n) for n in cluster.get_primaries()]
        for master in masters:
            master.config_resetstat()
        heard: list[dict[str, Any]] = []
        listening = threading.Thread(
            target=lambda: heard.extend(client.listen(sid, timeout=60)), daemon=True
        )
        listening.start()
        channel = client.keys.events_channel(sid)
        wait_for(lambda: subscribers(redis, channel) == 1, what="the listener to subscribe")
        workers.start(1)
        listening.join(timeout=90)
        assert not listening.is_alive()
        wait_for(lambda: all(r["status"] == "Completed" for r in client.info(ids)),
                 what="every session to complete")  # fmt: skip
        history = [e["seq"] for e in client.events(sid) or [] if e["seq"] > before]
        assert [e["seq"] for e in heard] == history
        assert heard[-1]["type"] == "session.completed"
        assert sum(calls(m, "publish") for m in masters) == 0
        assert sum(calls(m, "spublish") for m in masters) >= len(history)
    finally:
        workers.stop_all()
        client.close()
