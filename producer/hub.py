"""The process's pub/sub hub: one connection and one reader thread shared by every listener.

A listener asks `subscribe(redis, channels)` for a `Subscription`: its own queue of decoded
events. Listeners of one Redis server and user share one `_Hub`, whatever `Client` they come
from; the hub's thread alone touches its connection (redis-py's are not thread-safe). It sends
SUBSCRIBE for a channel when the channel's first listener arrives and UNSUBSCRIBE when its
last one leaves, decodes each message once and puts the event in the queue of every listener
of its channel (who hears what, and what each reply means, is producer.routing's, shared
with the event loop's hub, producer.aiohub). `subscribe` returns once Redis has confirmed
every channel, so that a history read after it cannot miss what is published next (the
subscribe-then-replay rule of SPEC §5).

On a lost connection the hub reconnects with backoff, subscribes to everything again and, once
Redis has confirmed a listener's channels, puts `RESYNC` in its queue: the listener reads from
the history what it may have missed meanwhile (`Ordering.to_resync`). With a Sentinel URL the
pool's connection class asks the sentinels for the master at each connect, so that after a
failover the hub reconnects to the new master (each such pool has a hub of its own: its
options hold the pool's Sentinel manager). A listener that falls
more than `routing.MAX_BACKLOG_EVENTS` behind gets `RESYNC` too, and no events until it has
taken it, so that a listener nobody reads does not hoard memory.

The registries of hubs (this one and producer.aiohub's) are the producer's only module-level
state: a hub exists while a listener of its server is open, and for HUB_LINGER_S after the
last one closed - a producer that opens a listener per run finds the thread and connection
ready instead of making them anew (3 of a new listener's 5 ms here) - and it holds no
connection once it has stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.scripts.transport import clustered, relayout, server_of
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
HUB_LINGER_S = 2.0  # how long a hub with no listener left keeps its thread and connection
READ_BYTES = 1 << 16
_INCOMPLETE = object()  # what the reader has when no whole reply is in yet

_registry_lock = threading.RLock()  # a listener may be closed by the GC, in any thread
_hubs: dict[tuple[Any, ...], _Hub] = {}


class Subscription(Member):
    """One listener's channels on the hub, and the queue the hub fills for it."""

    def __init__(self, channels: Sequence[str], wants: Callable[[str], bool] | None = None) -> None:
        self.ready: threading.Event  # (Member's, here a threading.Event: subscribe waits on it)
        super().__init__(channels, threading.Event(), wants)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hubs: list[tuple[_Hub, Member]] = []  # where it listens: itself, or its parts

    def get(self, timeout: float) -> Any:
        """The next event dict (shared with the other listeners: copy before handing it
        out), RESYNC, or None after `timeout` seconds; raises what ended the subscription."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return self.taken(item)

    # (hub thread) what the routes call
    def put(self, item: Any) -> None:
        self._queue.put(item)

    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Leave the hub (it unsubscribes from channels no other listener wants)."""
        hubs, self._hubs = self._hubs, []
        for hub, member in hubs:
            _detach(hub, member)


def subscribe(
    redis: Any, channels: Sequence[str], wants: Callable[[str], bool] | None = None
) -> Subscription:
    """A subscription to `channels` on the hub of `redis`'s server, once Redis confirmed it;
    raises the connection error when the hub cannot connect. On a Redis Cluster the hubs
    subscribe with SSUBSCRIBE, each channel on the master of its slot: a listener whose
    channels several masters serve has a Part on the hub of each."""
    sub = Subscription(channels, wants)
    verbs = SHARDED if clustered(redis) else PLAIN
    if verbs is SHARDED and len(channels) > 1:
        located = [(c, server_of(redis, c).connection_pool) for c in channels]
        groups = by_server(located)
    else:
        groups = [(server_of(redis, channels[0] if channels else None).connection_pool,
                   list(channels))]  # fmt: skip
    if len(groups) > 1:
        sub.parts = [Part(sub, chans, threading.Event()) for _, chans in groups]
    members: list[Any] = sub.parts or [sub]  # (their ready: threading.Events)
    for (pool, chans), member in zip(groups, members, strict=True):
        key = (*identity(pool), verbs)
        with _registry_lock:
            hub = _hubs.get(key)
            if hub is None:
                hub = _Hub(key, pool, _locator(redis, chans[0] if chans else None), verbs)
                _hubs[key] = hub
                hub.start()
            hub.attached += 1
            sub._hubs.append((hub, member))
            hub.post("add", member)
    for member in members:
        member.ready.wait()
    error = next((member.error for member in members if member.error is not None), None)
    if error is not None:
        sub.close()
        raise again(error) from error
    return sub


def _locator(redis: Any, route: str | None) -> Callable[[], Any] | None:
    """On a Redis Cluster: what finds the pool of the master now serving the hub's slot (the
    cluster client relearns the slots first), for a hub whose master went away."""
    if not clustered(redis):
        return None

    def locate() -> Any:
        relayout(redis)
        return server_of(redis, route).connection_pool

    return locate


def hubs() -> int:
    """How many hubs this process runs (for tests)."""
    with _registry_lock:
        return len(_hubs)


def _detach(hub: _Hub, sub: Member) -> None:
    with _registry_lock:
        hub.attached -= 1
        hub.post("remove", sub)


def _forget_hubs_after_fork() -> None:
    """A forked child has none of its parent's hub threads: it starts its own."""
    global _registry_lock
    _registry_lock = threading.RLock()
    _hubs.clear()


os.register_at_fork(after_in_child=_forget_hubs_after_fork)


class _Hub:
    """One pub/sub connection and the thread that reads it, for one server identity."""

    def __init__(
        self,
        key: tuple[Any, ...],
        pool: Any,
        locate: Callable[[], Any] | None = None,
        verbs: Verbs = PLAIN,
    ) -> None:
        self.key = key
        self._locate = locate  # (a cluster's: see _locator)
        # under _registry_lock: subscriptions not yet closed; whether the thread has ended
        self.attached = 0
        self.stopped = False
        # a connection of its own, made as the pool makes them, always with raw replies
        self._options = {**pool.connection_kwargs, "decode_responses": False}
        self._connection_class = pool.connection_class
        self._requests: deque[tuple[str, Member]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="sessionq-pubsub-hub", daemon=True)
        # what follows belongs to the hub thread
        self._conn: Any = None
        self._sock: Any = None  # the connection's socket: the hub reads it itself
        self._reader: Any = None  # hiredis.Reader of what the socket sent
        self._fd: int | None = None  # the connection's socket, as registered with _poll
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._woken = False  # the wake pipe has bytes to drain
        self._routes = Routes(self._write, verbs)
        self._heartbeat = Heartbeat()
        self._idle_since: float | None = None  # when the last listener left

    def start(self) -> None:
        self._thread.start()

    def post(self, what: str, sub: Member) -> None:
        """(under _registry_lock) Hand a request to the hub thread and wake it."""
        if self.stopped:
            return
        self._requests.append((what, sub))
        os.write(self._wake_w, b"\0")

    # -- the hub thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._disconnect()
            with _registry_lock:
                self.stopped = True
                if _hubs.get(self.key) is self:  # the loop broke: the next listener makes anew
                    del _hubs[self.key]
            # only if the loop broke: end who is still listening, or waiting to
            waiting = [sub for what, sub in self._requests if what == "add"]
            for sub in [*self._routes.members, *waiting]:
                sub.fail(RedisConnectionError("the pub/sub hub stopped"))
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _loop(self) -> None:
        backoff = 0.0
        while True:
            try:
                self._handle_requests()
                linger = self._linger_left()
                if linger is not None and linger <= 0:
                    if self._retire():
                        return
                    linger = None  # a subscription is still open: wait for its close()
                if self._conn is not None:
                    self._pump(linger)
                elif not self._routes.members:
                    self._wait(linger)
                else:
                    if backoff:
                        self._wait(backoff)  # a listener's request cuts it short
                        self._handle_requests()
                    if self._connect():
                        backoff = 0.0
                    else:
                        backoff = min(max(backoff * 2, RECONNECT_FIRST_S), RECONNECT_MAX_S)
            except LOST as exc:
                if self._routes.members:
                    log.warning("the pub/sub hub lost its connection (%s); reconnecting", exc)
                else:  # lingering: nobody to tell (often Redis is just shutting down)
                    log.debug("the idle pub/sub hub lost its connection (%s)", exc)
                self._disconnect()
                if isinstance(exc, SlotMoved):
                    self._relocate()
                backoff = RECONNECT_FIRST_S

    def _wait(self, timeout: float | None) -> bool:
        """Until a request is posted, Redis sends something, or `timeout` seconds; whether
        Redis did."""
        heard = False
        for fd, _ in self._poll.poll(None if timeout is None else timeout * 1000):
            if fd == self._wake_r:
                self._woken = True
            else:
                heard = True
        return heard

    def _linger_left(self) -> float | None:
        """With no listener: how long the hub may still wait for one (None: it has some)."""
        if self._routes.members:
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        return self._idle_since + HUB_LINGER_S - time.monotonic()

    def _retire(self) -> bool:
        """Leave the registry if still no listener is on its way (one that is will get this
        hub: subscribe counts it under the lock); whether it did."""
        with _registry_lock:
            if self.attached or self._requests:
                return False
            if _hubs.get(self.key) is self:
                del _hubs[self.key]
            self.stopped = True
        return True

    def _handle_requests(self) -> None:
        """Apply what listeners asked, in order."""
        if self._woken:
            self._woken = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        while self._requests:
            what, sub = self._requests.popleft()
            if what == "add":
                self._routes.add(sub)
            else:  # "remove"
                self._routes.drop(sub)

    def _write(self, command: str, channels: Sequence[bytes]) -> None:
        self._conn.send_command(command, *channels, check_health=False)

    def _connect(self) -> bool:
        """Connect and subscribe to every channel a listener wants; on failure, end the
        listeners that have not started (and all of them for a lasting refusal)."""
        conn = self._connection_class(**self._options)
        try:
            conn.connect()
        except (*LOST, ResponseError) as exc:  # ResponseError: a bad database number
            conn.disconnect()
            self._routes.cannot_connect(exc)
            self._relocate()
            return False
        if self._locate is not None and not self._on_master(conn):
            return False
        self._conn = conn
        # Replies are read here, not by redis-py's read_response: one recv takes whatever
        # Redis sent (often several messages) and hiredis splits it, where can_read and
        # read_response made several system calls - and GIL hand-overs - per message.
        self._sock = conn._sock  # redis-py offers no public way to its socket
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error,
            notEnoughData=_INCOMPLETE,
        )  # fmt: skip
        self._fd = self._sock.fileno()
        self._poll.register(self._fd, select.POLLIN)
        self._heartbeat.heard()
        self._routes.connect()
        return True

    def _on_master(self, conn: Any) -> bool:
        """On a cluster: is `conn` to a master? A replica takes sharded subscriptions for its
        master's slots too, so a hub sent back to a master just demoted (the cluster
        client's layout not yet told of a failover) would stay there, heard by none of the
        master's counts: it looks again (after its backoff)."""
        try:
            conn.send_command("ROLE", check_health=False)
            if is_master(conn.read_response()):
                return True
            log.info("the pub/sub hub reached a replica; looking for the master again")
        except (*LOST, ResponseError) as exc:
            log.info("the pub/sub hub could not ask its node's role (%s)", exc)
        conn.disconnect()
        self._relocate()
        return False

    def _relocate(self) -> None:
        """On a cluster, after a failed connect: the next one goes to the master now serving
        the slot (a replica promoted in the old one's place)."""
        if self._locate is None:
            return
        try:
            pool = self._locate()
        except (*LOST, RedisError, RedisClusterException):
            return  # no node answers yet: tried again at the next connect
        self._options = {**pool.connection_kwargs, "decode_responses": False}
        self._connection_class = pool.connection_class

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._sock = self._reader = None
        self._routes.disconnect()
        if conn is None:
            return
        if self._fd is not None:
            self._poll.unregister(self._fd)
            self._fd = None
        conn.disconnect()

    def _pump(self, linger: float | None = None) -> None:
        """Dispatch the replies Redis has sent; when none is complete, wait for more (or a
        request, or at most `linger` seconds) and read what came."""
        reply = self._reader.gets()
        if reply is _INCOMPLETE:
            tls_pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()
            if not tls_pending:
                ping, wait = self._heartbeat.wait()
                if ping:
                    self._routes.ping()
                if not self._wait(wait if linger is None else max(0.0, min(wait, linger))):
                    return
            data = self._sock.recv(READ_BYTES)
            if not data:
                raise RedisConnectionError("Redis closed the pub/sub connection")
            self._heartbeat.heard()
            self._reader.feed(data)
            reply = self._reader.gets()
        while reply is not _INCOMPLETE:
            if isinstance(reply, ResponseError):
                self._routes.refused(reply)
            else:
                self._routes.reply(reply)
            reply = self._reader.gets()
