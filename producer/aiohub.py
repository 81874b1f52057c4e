"""The event loop's pub/sub hub: one redis.asyncio connection and one reader task shared by
every AsyncListener of the loop.

The asyncio twin of producer.hub, with the same bookkeeping (producer.routing) and the same
guarantees: `await subscribe(redis, channels)` gives a `Subscription`, its own queue of
decoded events, once Redis has confirmed every channel (so that a history read after it cannot
miss what is published next). Listeners in one loop of one Redis server and user share one
`_Hub`. Its reader task decodes each message once and puts the event in the queue of every
listener of its channel; SUBSCRIBE and UNSUBSCRIBE are written by whoever adds or removes a
listener, at once, in the loop (no thread, no lock: no await stands between the routes
recording a command and the command being written).

On a lost connection the reader reconnects with backoff, subscribes to everything again and,
once Redis has confirmed a listener's channels, puts RESYNC in its queue: the listener reads
from the history what it may have missed. With a Sentinel URL it reconnects to the master the
sentinels name then, as producer.hub does. The last listener to leave stops the task and closes
the connection.

Each event wakes every listener of its channel, so that a wake-up is the cost that counts: a
Subscription's queue is a deque and one future to wake, and its `get` timeout is checked by
the hub's one ticker (every TICK_S) rather than by a timer per wait: handing an event to 100
waiting tasks cost about 12 us of CPU per delivery through an asyncio.Queue read under
asyncio.timeout, about 4 us this way (the queues alone, measured without Redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.scripts.transport import clustered, pool_of
from sessionq.producer.routing import (
    PLAIN,
    SHARDED,
    Heartbeat,
    Member,
    Part,
    Routes,
    SlotMoved,
    Verbs,
    again,
    by_server,
    identity,
    is_master,
)

log = logging.getLogger(__name__)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 5.0
TICK_S = 0.05  # how often the hub ends the waits of listeners whose `get` timed out

_Slot = tuple[asyncio.AbstractEventLoop, tuple[Any, ...]]
_hubs: dict[_Slot, _Hub] = {}


class Subscription(Member):
    """One listener's channels on the loop's hub, and the queue the hub fills for it."""

    def __init__(self, channels: Sequence[str], wants: Callable[[str], bool] | None = None) -> None:
        self.ready: asyncio.Event  # (Member's, here an asyncio.Event: subscribe awaits it)
        super().__init__(channels, asyncio.Event(), wants)
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None  # a get() waits on it
        self._deadline = 0.0  # (loop time) when that get() times out
        self._hubs: list[tuple[_Hub, _Listening]] = []  # where it listens: itself, or its parts

    async def get(self, timeout: float) -> Any:
        """The next event dict (shared with the other listeners: copy before handing it
        out), RESYNC, or None after about `timeout` seconds; raises what ended the
        subscription."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._deadline = loop.time() + timeout
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._items:
                return None
        return self.taken(self._items.popleft())

    # what the routes call
    def put(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def backlog(self) -> int:
        return len(self._items)

    def expire(self, now: float) -> None:
        """(the hub's ticker) End a wait whose time is up."""
        if now >= self._deadline:
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def close(self) -> None:
        """Leave the hub (it unsubscribes from channels no other listener wants)."""
        hubs, self._hubs = self._hubs, []
        for hub, member in hubs:
            await hub.detach(member)


class _Part(Part):
    """A Subscription's channels on one master's hub (routing.Part)."""

    owner: Subscription

    def expire(self, now: float) -> None:
        self.owner.expire(now)


_Listening = Subscription | _Part  # what a hub holds


async def subscribe(
    redis: Any, channels: Sequence[str], wants: Callable[[str], bool] | None = None
) -> Subscription:
    """A subscription to `channels` on this loop's hub of `redis`'s server, once Redis
    confirmed it; raises the connection error when the hub cannot connect. On a Redis
    Cluster, sharded, as producer.hub's: a Part on the hub of each master of its channels."""
    sub = Subscription(channels, wants)
    verbs = SHARDED if clustered(redis) else PLAIN
    if verbs is SHARDED and len(channels) > 1:
        groups = by_server([(c, await pool_of(redis, c)) for c in channels])
    else:
        route = channels[0] if channels else ""
        groups = [(await pool_of(redis, route), list(channels))]
    if len(groups) > 1:
        sub.parts = [_Part(sub, chans, asyncio.Event()) for _, chans in groups]
    members: list[Any] = sub.parts or [sub]
    loop = asyncio.get_running_loop()
    for (pool, chans), member in zip(groups, members, strict=True):
        slot = (loop, (*identity(pool), verbs))
        hub = _hubs.get(slot)
        if hub is None:
            hub = _hubs[slot] = _Hub(slot, pool, _locator(redis, chans[0] if chans else ""), verbs)
        sub._hubs.append((hub, member))
        hub.attach(member)
    try:
        for member in members:
            await member.ready.wait()
    except BaseException:  # cancelled while waiting for Redis
        await sub.close()
        raise
    error = next((member.error for member in members if member.error is not None), None)
    if error is not None:
        await sub.close()
        raise again(error) from error
    return sub


def _locator(redis: Any, route: str) -> Callable[[], Awaitable[Any]] | None:
    """On a Redis Cluster: what finds the node now serving the hub's slot (the cluster
    client relearns the slots first), for a hub whose master went away."""
    if not clustered(redis):
        return None

    async def locate() -> Any:
        await redis.nodes_manager.initialize()
        return await pool_of(redis, route)

    return locate


def hubs() -> int:
    """How many hubs run in this process, in every loop (for tests)."""
    return len(_hubs)


os.register_at_fork(after_in_child=_hubs.clear)


class _Hub:
    """One pub/sub connection and the task that reads it, for one loop and server identity."""

    def __init__(
        self,
        slot: _Slot,
        pool: Any,
        locate: Callable[[], Awaitable[Any]] | None = None,
        verbs: Verbs = PLAIN,
    ) -> None:
        self.slot = slot
        self._locate = locate  # (a cluster's: see _locator)
        self._attached: set[_Listening] = set()  # subscriptions not yet closed
        # a connection of its own, made as the pool makes them, always with raw replies
        self._options = {**pool.connection_kwargs, "decode_responses": False}
        self._connection_class = pool.connection_class
        self._conn: Any = None
        self._routes = Routes(self._write, verbs)
        self._heartbeat = Heartbeat()
        self._wake = asyncio.Event()  # a listener arrived: cut a reconnect backoff short
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="sessionq-pubsub-hub")
        self._ticker = loop.call_later(TICK_S, self._tick)

    def attach(self, sub: _Listening) -> None:
        if self._task.done():  # it broke: nothing will confirm the subscription
            sub.fail(RedisConnectionError("the pub/sub hub stopped"))
            return
        self._attached.add(sub)
        self._routes.add(sub)
        self._wake.set()

    async def detach(self, sub: _Listening) -> None:
        self._attached.discard(sub)
        self._routes.drop(sub)
        if self._attached or _hubs.get(self.slot) is not self:
            return
        del _hubs[self.slot]  # the last listener left: the next one makes a new hub
        self._task.cancel()
        await asyncio.wait([self._task])  # the connection is closed when close() returns

    def _write(self, command: str, channels: Sequence[bytes]) -> None:
        # redis-py's send_command is a coroutine, which may reconnect by itself: writing the
        # packed command to the stream keeps the commands in the order the routes recorded
        # them, with no await in between; a dead connection is the reader's to find
        self._conn._writer.writelines(self._conn.pack_command(command, *channels))

    def _tick(self) -> None:
        loop = self._task.get_loop()
        now = loop.time()
        for sub in self._attached:
            sub.expire(now)
        self._ticker = loop.call_later(TICK_S, self._tick)

    # -- the reader task -----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            self._ticker.cancel()
            await self._disconnect()
            if _hubs.get(self.slot) is self:  # the loop broke: the next listener makes anew
                del _hubs[self.slot]
            for sub in list(self._routes.members):  # only if the loop broke
                sub.fail(RedisConnectionError("the pub/sub hub stopped"))

    async def _loop(self) -> None:
        backoff = 0.0
        while True:
            try:
                if self._conn is not None:
                    await self._pump()
                elif not self._routes.members:
                    self._wake.clear()
                    await self._wake.wait()
                else:
                    if backoff:
                        self._wake.clear()
                        try:  # a new listener cuts it short
                            async with asyncio.timeout(backoff):
                                await self._wake.wait()
                        except TimeoutError:
                            pass
                    if await self._connect():
                        backoff = 0.0
                    else:
                        backoff = min(max(backoff * 2, RECONNECT_FIRST_S), RECONNECT_MAX_S)
            except LOST as exc:
                log.warning("the pub/sub hub lost its connection (%s); reconnecting", exc)
                await self._disconnect()
                if isinstance(exc, SlotMoved):
                    await self._relocate()
                backoff = RECONNECT_FIRST_S

    async def _connect(self) -> bool:
        """Connect and subscribe to every channel a listener wants; on failure, end the
        listeners that have not started (and all of them for a lasting refusal)."""
        conn = self._connection_class(**self._options)
        try:
            await conn.connect()
        except (*LOST, ResponseError) as exc:  # ResponseError: a bad database number
            await _close(conn)
            self._routes.cannot_connect(exc)
            await self._relocate()
            return False
        if self._locate is not None and not await self._on_master(conn):
            return False
        self._conn = conn
        self._heartbeat.heard()
        self._routes.connect()
        return True

    async def _on_master(self, conn: Any) -> bool:
        """As hub._Hub._on_master."""
        try:
            await conn.send_command("ROLE", check_health=False)
            if is_master(await conn.read_response()):
                return True
            log.info("the pub/sub hub reached a replica; looking for the master again")
        except (*LOST, ResponseError) as exc:
            log.info("the pub/sub hub could not ask its node's role (%s)", exc)
        await _close(conn)
        await self._relocate()
        return False

    async def _relocate(self) -> None:
        """On a cluster, after a failed connect: the next one goes to the node now serving
        the slot (a replica promoted in the old master's place)."""
        if self._locate is None:
            return
        try:
            pool = await self._locate()
        except (*LOST, RedisError, RedisClusterException):
            return  # no node answers yet: tried again at the next connect
        self._options = {**pool.connection_kwargs, "decode_responses": False}
        self._connection_class = pool.connection_class

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._routes.disconnect()  # before any await: no listener writes to it any more
        if conn is not None:
            await _close(conn)

    async def _pump(self) -> None:
        """Wait for one reply from Redis and dispatch it (a PING when Redis is silent)."""
        ping, wait = self._heartbeat.wait()
        if ping:
            self._routes.ping()
        try:
            reply = await self._conn.read_response(
                timeout=wait, disconnect_on_error=False, push_request=True
            )
        except ResponseError as exc:
            self._heartbeat.heard()
            self._routes.refused(exc)
            return
        if reply is None:  # `wait` passed in silence
            return
        self._heartbeat.heard()
        self._routes.reply(reply)


async def _close(conn: Any) -> None:
    try:
        await conn.disconnect(nowait=True)
    except LOST:
        pass
