"""An idle worker's wait on a Redis Cluster (SPEC §9): woken by sharded pub/sub.

A worker of a partitioned namespace serves every partition, and an enqueue wakes it through
its partition's wake lists; a BLPOP takes the keys of one slot, so on a cluster it could wait
on one partition at a time. There a script also SPUBLISHes each wake on the shard channel of
the wake list's name (prelude.lua `wake_list`), and an idle worker waits on all of them at
once: one connection of its own to each master, subscribed to the channels of the partitions
that master serves, polled together.

Only an idle worker listens: it subscribes as its claims start to come back empty, before it
asks the other partitions (worker.partitioned), and unsubscribes as it takes work (a busy
worker would otherwise be sent every wake of the namespace, and Redis would buffer them for
it). After that sweep a wake names its partition, and only the partitions woken are asked -
every idle worker hears each wake, so each asks (one claim; the first takes the runs). With no
wake for IDLE_WAIT_S every partition is asked, as without this: the fallback for a message
lost with a master (a failover) or a slot that moved (Redis drops its shard subscribers);
the subscriptions are then made again on the masters that serve the slots now. A refusal to
subscribe (an ACL without the channels) leaves the worker on that fallback, said once.
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any

from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sessionq.common.scripts.transport import relayout, server_of

log = logging.getLogger(__name__)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
REARM_MIN_S = 0.1  # after trouble, subscriptions are made again at most this often
_MESSAGE = b"smessage"
_SUBSCRIBED = b"ssubscribe"
_UNSUBSCRIBED = b"sunsubscribe"
Where = tuple[Any, ...]  # a master: (host, port, unix path)


class _Master:
    """One connection of the waker's own to a master (the socket polled by Waker.wait)."""

    def __init__(self, pool: Any) -> None:
        # made as the pool makes them, raw replies in RESP2 (plain arrays, no push handler),
        # one try to connect: a master that does not answer is polled instead, for now
        options = {**pool.connection_kwargs, "decode_responses": False, "protocol": 2,
                   "retry": Retry(NoBackoff(), 0)}  # fmt: skip
        self.conn: Any = pool.connection_class(**options)
        self.conn.connect()
        self.fd: int = self.conn._sock.fileno()  # (redis-py offers no public way to it)

    def close(self) -> None:
        self.conn.disconnect()


class Waker:
    """The sharded wake channels of one worker: `channels` maps each channel (a wake list's
    name, keys.wake) to its partition."""

    def __init__(self, cluster: Any, channels: dict[str, int]) -> None:
        self.cluster = cluster
        self.partition_of = {channel.encode(): n for channel, n in channels.items()}
        self.channels = channels
        self.masters: dict[Where, _Master] = {}
        self.armed = False  # subscribed (where `partial` is not)
        self.partial = False  # some master is left out: its partitions are only polled
        self.refused = False  # Redis refused a subscription: polling only, for good
        self.armed_at = float("-inf")
        self._poll = select.poll()

    # -- subscribing ---------------------------------------------------------------------
    def arm(self) -> None:
        """Subscribe on every master to the channels of the partitions it serves, and wait
        until each has confirmed: a wake published from then on is heard (what came before
        is not: the caller asks every partition after). A master that cannot be reached or
        no longer serves a slot is left out (`partial`): tried again after IDLE_WAIT_S."""
        if self.refused:
            return
        if self.partial:  # (trouble last time: not again at once)
            time.sleep(max(0.0, self.armed_at + REARM_MIN_S - time.monotonic()))
        self.armed, self.partial, self.armed_at = True, False, time.monotonic()
        wanted = self._wanted()
        if wanted is None:
            self.partial = True
            return
        for where in [w for w in self.masters if w not in wanted]:
            self._drop(where)
        sent: list[tuple[Where, int]] = []
        for where, (pool, by_partition) in wanted.items():
            try:
                master = self.masters.get(where)
                if master is None:
                    master = self.masters[where] = _Master(pool)
                    self._poll.register(master.fd, select.POLLIN)
                for channels in by_partition.values():
                    master.conn.send_command("SSUBSCRIBE", *channels, check_health=False)
                sent.append((where, sum(len(c) for c in by_partition.values())))
            except (*LOST, RedisError) as exc:
                self._lose(where, exc)
        for where, expected in sent:
            self._confirm(where, expected)

    def _wanted(self) -> dict[Where, tuple[Any, dict[int, list[str]]]] | None:
        """The masters that serve the channels' slots now (the cluster client's view), each
        with its pool and its channels by partition (one SSUBSCRIBE each: they share a
        slot); None when the layout cannot be read."""
        wanted: dict[Where, tuple[Any, dict[int, list[str]]]] = {}
        try:
            for channel, n in self.channels.items():
                pool = server_of(self.cluster, channel).connection_pool
                kw = pool.connection_kwargs
                where = (kw.get("host"), kw.get("port"), kw.get("path"))
                wanted.setdefault(where, (pool, {}))[1].setdefault(n, []).append(channel)
        except (*LOST, RedisError, RedisClusterException) as exc:
            log.info("shard wake: the cluster's layout is not known (%s); polling", exc)
            self.close()
            return None
        return wanted

    def _confirm(self, where: Where, expected: int) -> None:
        """Read `where`'s replies up to its `expected` SSUBSCRIBE confirmations (what comes
        before them - wakes heard before the last disarm, its SUNSUBSCRIBE's replies - is
        dropped: every partition is asked after an arm)."""
        master = self.masters.get(where)
        if master is None:  # (closed: a refusal on another master)
            return
        try:
            while expected > 0:
                reply = master.conn.read_response()
                if isinstance(reply, list) and reply and reply[0] == _SUBSCRIBED:
                    expected -= 1
        except (MovedError, AskError) as exc:  # the slot is served elsewhere now
            self._relayout()
            self._lose(where, exc)
        except RedisError as exc:  # refused (NOPERM: an ACL without the channels), or lost
            if not isinstance(exc, LOST):
                log.warning(
                    "shard wake: Redis refused the wake channels (%s); idle workers "
                    "ask every partition about once a second instead",
                    exc,
                )
                self.refused = True
                self.close()
                return
            self._lose(where, exc)
        except OSError as exc:
            self._lose(where, exc)

    def disarm(self) -> None:
        """Unsubscribe everywhere, as the worker takes work (the replies are read, and
        dropped, at the next arm)."""
        self.armed = False
        for where, master in list(self.masters.items()):
            try:
                master.conn.send_command("SUNSUBSCRIBE", check_health=False)
            except LOST as exc:
                self._lose(where, exc)

    # -- waiting -------------------------------------------------------------------------
    def wait(self, timeout: float) -> list[int] | None:
        """Wait up to `timeout` s for wakes: the partitions woken, in the order heard; [] when
        every partition is to be asked (subscribed just now: `arm` when not subscribed, or
        when some master was left out `timeout` s ago or more; a master's connection lost,
        or our subscriptions there dropped: a slot moved); None when none came."""
        if self.refused:
            time.sleep(timeout)
            return None
        if not self.armed or (self.partial and time.monotonic() >= self.armed_at + timeout):
            self.arm()
            return []
        deadline = time.monotonic() + timeout
        while True:
            woke = self._read()
            if woke is not None:
                return woke
            left = deadline - time.monotonic()
            if left <= 0:
                if self._moved():
                    self.armed = False  # subscribed again at the next wait
                return None
            if not self.masters:
                time.sleep(left)
                return None
            self._poll.poll(left * 1000)

    def _read(self) -> list[int] | None:
        """What the masters have sent: the partitions of the wakes among it, in order; []
        for a loss; None when no wake came."""
        woke: list[int] = []
        for where, master in list(self.masters.items()):
            try:
                while master.conn.can_read(timeout=0):
                    reply = master.conn.read_response()
                    if not isinstance(reply, list) or not reply:
                        continue
                    if reply[0] == _MESSAGE:
                        n = self.partition_of.get(reply[1])
                        if n is not None and n not in woke:
                            woke.append(n)
                    elif reply[0] == _UNSUBSCRIBED:
                        # unasked (we read none of ours while armed): Redis dropped our
                        # subscriptions there, as a master does when a slot leaves it
                        self._relayout()
                        self._lose(where, "a slot moved")
                        return []
            except (*LOST, RedisError) as exc:
                self._lose(where, exc)
                return []
        return woke or None

    def _moved(self) -> bool:
        """Does another master serve some channel's slot now than the one we subscribed on
        (the cluster client learned of a failover)? Asked when a wait times out."""
        wanted = self._wanted()
        return wanted is None or set(wanted) != set(self.masters)

    # -- losing --------------------------------------------------------------------------
    def _relayout(self) -> None:
        try:
            relayout(self.cluster)
        except (*LOST, RedisError, RedisClusterException) as exc:
            log.info("shard wake: the cluster's layout could not be read (%s)", exc)

    def _lose(self, where: Where, why: object) -> None:
        """A master's connection ended: forget it; its partitions are polled until the
        subscriptions are made again (on the master that serves those slots then)."""
        log.info("shard wake: the connection to %s:%s ended (%s)", where[0], where[1], why)
        self._drop(where)
        self.partial = True

    def _drop(self, where: Where) -> None:
        master = self.masters.pop(where, None)
        if master is not None:
            self._poll.unregister(master.fd)
            master.close()

    def close(self) -> None:
        for where in list(self.masters):
            self._drop(where)
        self.armed = False
