"""An idle worker's wait on a Redis Cluster (SPEC §9): woken by sharded pub/sub.

A worker of a partitioned namespace serves every partition, and an enqueue wakes it through
its partition's wake lists; a BLPOP takes the keys of one slot, so on a cluster it could wait
on one partition at a time. There a script also SPUBLISHes each wake on the shard channel of
the wake list's name (prelude.lua `wake_list`), and an idle worker waits on all of them at
once: one connection of its own to each master, subscribed to the channels of the partitions
that master serves, polled together.

Only an idle worker listens: it subscribes as it goes idle and unsubscribes as it takes work
(a busy worker would otherwise be sent every wake of the namespace, and Redis would buffer them
for it). What was enqueued before its subscriptions took is found by a claim in every
partition right after them; after that a wake names its partition, and only that one is asked
(every idle worker hears each wake: one claim each). Without a wake the worker asks every
partition after IDLE_WAIT_S, as it did before: the fallback for a message lost with a master
(a failover) or a slot that moved (Redis drops its shard subscribers), after which the
subscriptions are made again on the masters that serve the slots then.
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.scripts.transport import relayout, server_of

log = logging.getLogger(__name__)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
ALL = -1  # what wait() returns when every partition must be asked (see Waker.wait)
_MESSAGE = b"smessage"
_SUBSCRIBED = b"ssubscribe"
_UNSUBSCRIBED = b"sunsubscribe"


class _Master:
    """One connection of the waker's own to a master, and the channels it subscribes there,
    by partition (one SSUBSCRIBE per partition: its channels share a slot)."""

    def __init__(self, pool: Any) -> None:
        # made as the pool makes them, raw replies in RESP2 (plain arrays, no push handler)
        options = {**pool.connection_kwargs, "decode_responses": False, "protocol": 2}
        self.conn: Any = pool.connection_class(**options)
        self.conn.connect()
        self.by_partition: dict[int, list[str]] = {}

    def sock(self) -> Any:
        return self.conn._sock  # (redis-py offers no public way to its socket)

    def close(self) -> None:
        self.conn.disconnect()


class Waker:
    """The sharded wake channels of one worker: `channels` maps each channel (a wake list's
    name, keys.wake) to its partition."""

    def __init__(self, cluster: Any, channels: dict[str, int]) -> None:
        self.cluster = cluster
        self.partition_of = {channel.encode(): n for channel, n in channels.items()}
        self.channels = channels
        self.masters: dict[tuple[Any, ...], _Master] = {}
        self.armed = False  # subscribed (where `partial` is not)
        self.partial = False  # some master is left out: its partitions are only polled
        self.armed_at = 0.0

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for a wake: its partition; ALL when every partition is to
        be asked (just subscribed; a master's connection lost, or our subscriptions there
        dropped: a slot moved); None when none came. Subscribes when not subscribed, and
        again when some master was left out and `timeout` has passed since."""
        if not self.armed or (self.partial and time.monotonic() >= self.armed_at + timeout):
            self._arm()
            return ALL
        deadline = time.monotonic() + timeout
        while True:
            woke = self._read()
            if woke is not None:
                return woke
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self.masters:
                time.sleep(left)
                return None
            try:
                select.select([m.sock() for m in self.masters.values()], [], [], left)
            except (OSError, ValueError) as exc:  # a socket closed meanwhile
                self.close()
                log.info("shard wake: lost its connections (%s)", exc)
                return ALL

    def _arm(self) -> None:
        """Subscribe on every master to the channels of the partitions it serves, and wait
        until each has confirmed: a wake published from then on is heard (what came before
        is not: every partition is to be asked once after). A master that cannot be reached,
        refuses, or no longer serves a slot is left out (`partial`)."""
        self.armed, self.partial, self.armed_at = True, False, time.monotonic()
        wanted: dict[tuple[Any, ...], tuple[Any, dict[int, list[str]]]] = {}
        try:
            for channel, n in self.channels.items():
                pool = server_of(self.cluster, channel).connection_pool
                kw = pool.connection_kwargs
                where = (kw.get("host"), kw.get("port"), kw.get("path"))
                wanted.setdefault(where, (pool, {}))[1].setdefault(n, []).append(channel)
        except (*LOST, RedisError, RedisClusterException) as exc:
            log.info("shard wake: the cluster's layout is not known (%s); polling", exc)
            self.partial = True
            return
        for where in [w for w in self.masters if w not in wanted]:
            self.masters.pop(where).close()
        sent: list[tuple[tuple[Any, ...], int]] = []
        for where, (pool, by_partition) in wanted.items():
            try:
                master = self.masters.get(where) or _Master(pool)
                self.masters[where] = master
                master.by_partition = by_partition
                for channels in by_partition.values():
                    master.conn.send_command("SSUBSCRIBE", *channels, check_health=False)
                sent.append((where, sum(len(c) for c in by_partition.values())))
            except LOST as exc:
                self._drop(where, exc)
        for where, expected in sent:
            self._confirm(where, expected)

    def _confirm(self, where: tuple[Any, ...], expected: int) -> None:
        """Read `where`'s replies up to its `expected` SSUBSCRIBE confirmations (what comes
        before them - wakes heard before the last disarm, its SUNSUBSCRIBE's replies - is
        dropped: every partition is asked after an arm)."""
        master = self.masters.get(where)
        if master is None:
            return
        try:
            while expected > 0:
                reply = master.conn.read_response()
                if isinstance(reply, list) and reply and reply[0] == _SUBSCRIBED:
                    expected -= 1
        except ResponseError as exc:  # MOVED: the slot is served elsewhere now
            relayout(self.cluster)
            self._drop(where, exc)
        except LOST as exc:
            self._drop(where, exc)

    def disarm(self) -> None:
        """Unsubscribe everywhere, as the worker takes work (the replies are read, and
        dropped, at the next arm)."""
        self.armed = False
        for where, master in list(self.masters.items()):
            try:
                master.conn.send_command("SUNSUBSCRIBE", check_health=False)
            except LOST as exc:
                self._drop(where, exc)

    def _read(self) -> int | None:
        """What the masters have sent: the first wake's partition (the rest dropped: the
        claim that follows asks that partition), ALL for a loss, else None."""
        woke: int | None = None
        for where, master in list(self.masters.items()):
            try:
                while master.conn.can_read(timeout=0):
                    reply = master.conn.read_response()
                    if not isinstance(reply, list) or not reply:
                        continue
                    if reply[0] == _MESSAGE and woke is None:
                        woke = self.partition_of.get(reply[1], ALL)
                    elif reply[0] == _UNSUBSCRIBED and self.armed:
                        # Redis dropped our subscription: the slot moved to another master
                        relayout(self.cluster)
                        self._drop(where, "a slot moved")
                        return ALL
            except (*LOST, ResponseError) as exc:
                self._drop(where, exc)
                return ALL
        return woke

    def _drop(self, where: tuple[Any, ...], why: object) -> None:
        """Forget a master's connection: the next arm connects again (to the master that
        serves those slots then)."""
        log.info("shard wake: the connection to %s:%s ended (%s)", where[0], where[1], why)
        master = self.masters.pop(where, None)
        if master is not None:
            master.close()
        self.partial = True

    def close(self) -> None:
        for master in self.masters.values():
            master.close()
        self.masters.clear()
        self.armed = False
