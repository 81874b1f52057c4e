"""The process's pub/sub hub: one connection and one reader thread shared by every listener.

A listener asks `subscribe(redis, channels)` for a `Subscription`: its own queue of decoded
events. Listeners of one Redis server and user share one `_Hub`, whatever `Client` they come
from; the hub's thread alone touches its connection (redis-py's are not thread-safe). It sends
SUBSCRIBE for a channel when the channel's first listener arrives and UNSUBSCRIBE when its
last one leaves, decodes each message once and puts the event in the queue of every listener
of its channel. `subscribe` returns once Redis has confirmed every channel, so that a history
read after it cannot miss what is published next (the subscribe-then-replay rule of SPEC §5).

On a lost connection the hub reconnects with backoff, subscribes to everything again and, once
Redis has confirmed a listener's channels, puts `RESYNC` in its queue: the listener reads from
the history what it may have missed meanwhile (`Ordering.to_resync`). A listener that falls
more than `MAX_BACKLOG_EVENTS` behind gets `RESYNC` too, and no events until it has taken it,
so that a listener nobody reads does not hoard memory.

The registry of hubs is the one module-level state of the producer: a hub exists only while a
listener of its server is open, and it holds no connection once it has stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.connection import lasting_refusal
from common.errors import CodecError
from common.events import decode_event

log = logging.getLogger(__name__)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 5.0
HEALTH_CHECK_S = 15.0  # a PING after this long without a word from Redis; lost after twice
HUB_STOP_WAIT_S = 2.0  # the longest the last listener's close() waits for the hub to end
MAX_BACKLOG_EVENTS = 10_000  # a listener this far behind is told to RESYNC instead
RESYNC = object()  # in a Subscription's queue: read the history again (see the docstring)
# connection options that say how to behave, not where to connect or as whom (any other
# option that is an object, such as a credential provider, counts by identity)
_BEHAVIOUR_OPTIONS = frozenset(
    {
        "retry", "retry_on_error", "himport_registry", "maint_notifications_pool_handler",
        "maint_notifications_config",
    }
)  # fmt: skip
_PLAIN = (str, bytes, int, float, bool, type(None))
_REPLY_KINDS = frozenset({b"subscribe", b"unsubscribe", b"pong"})

_registry_lock = threading.RLock()  # a listener may be closed by the GC, in any thread
_hubs: dict[tuple[Any, ...], _Hub] = {}


class Subscription:
    """One listener's channels on the hub, and the queue the hub fills for it."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(dict.fromkeys(c.encode() for c in channels))
        self.ready = threading.Event()  # Redis confirmed every channel (or `error` is set)
        self.error: BaseException | None = None  # why it could not start
        self.overflowed = False  # the hub stopped filling the queue until RESYNC is taken
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hub: _Hub | None = None
        # the hub thread's own bookkeeping
        self.unconfirmed = 0  # channels whose SUBSCRIBE Redis has not confirmed yet
        self.resync_when_confirmed = False

    def get(self, timeout: float) -> Any:
        """The next event dict (shared with the other listeners: copy before handing it
        out), RESYNC, or None after `timeout` seconds; raises what ended the subscription."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is RESYNC:
            self.overflowed = False  # events from here on are queued again
        elif isinstance(item, BaseException):
            raise _again(item) from item
        return item

    def put(self, item: Any) -> None:
        """(hub thread) Queue one event, RESYNC, or an exception that ends the listener."""
        self._queue.put(item)

    def deliver(self, event: dict[str, Any]) -> None:
        """(hub thread) Queue a live event, unless the listener is too far behind."""
        if self.overflowed:
            return
        if self._queue.qsize() >= MAX_BACKLOG_EVENTS:
            log.warning("a listener is %d events behind; it will read them from the history",
                        MAX_BACKLOG_EVENTS)  # fmt: skip
            self.overflowed = True
            self._queue.put(RESYNC)
            return
        self._queue.put(event)

    def fail(self, error: BaseException) -> None:
        """(hub thread) End the listener with `error`, at once if it has not started."""
        if self.ready.is_set():
            self._queue.put(error)
        else:
            self.error = error
            self.ready.set()

    def close(self) -> None:
        """Leave the hub (it unsubscribes from channels no other listener wants)."""
        hub, self._hub = self._hub, None
        if hub is not None:
            _detach(hub, self)


def subscribe(redis: Any, channels: Sequence[str]) -> Subscription:
    """A subscription to `channels` on the hub of `redis`'s server, once Redis confirmed it;
    raises the connection error when the hub cannot connect."""
    sub = Subscription(channels)
    key = _identity(redis.connection_pool)
    with _registry_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _Hub(key, redis.connection_pool)
            _hubs[key] = hub
            hub.start()
        hub.attached += 1
        sub._hub = hub
        hub.post("add", sub)
    sub.ready.wait()
    if sub.error is not None:
        sub.close()
        raise _again(sub.error) from sub.error
    return sub


def _again(error: BaseException) -> BaseException:
    """A fresh exception like `error`, for one listener's thread to raise (the hub hands the
    same one to every listener)."""
    try:
        return type(error)(*error.args)
    except TypeError:
        return RedisConnectionError(str(error))


def hubs() -> int:
    """How many hubs this process runs (for tests)."""
    with _registry_lock:
        return len(_hubs)


def _detach(hub: _Hub, sub: Subscription) -> None:
    with _registry_lock:
        hub.attached -= 1
        last = hub.attached == 0 and _hubs.get(hub.key) is hub
        if last:
            del _hubs[hub.key]
        hub.post("stop" if last else "remove", sub)
    if last:  # the connection is closed when the last listener's close() returns
        hub.join(HUB_STOP_WAIT_S)


def _forget_hubs_after_fork() -> None:
    """A forked child has none of its parent's hub threads: it starts its own."""
    global _registry_lock
    _registry_lock = threading.RLock()
    _hubs.clear()


os.register_at_fork(after_in_child=_forget_hubs_after_fork)


def _identity(pool: Any) -> tuple[Any, ...]:
    """Which hub serves a connection pool: the same server, database, user and TLS
    settings share one; an option that is an object (a credential provider) shares by
    identity."""
    parts: list[tuple[str, Any]] = []
    for name, value in sorted(pool.connection_kwargs.items()):
        if name not in _BEHAVIOUR_OPTIONS:
            parts.append((name, value if isinstance(value, _PLAIN) else id(value)))
    return (pool.connection_class, *parts)


class _Sent:
    """A command sent on the hub's connection whose replies are not all in (replies come in
    the order of the commands; messages come in between)."""

    __slots__ = ("kind", "left", "waiters")

    def __init__(
        self,
        kind: bytes,
        channels: Sequence[bytes],
        waiters: dict[bytes, list[Subscription]] | None = None,
    ) -> None:
        self.kind = kind  # the kind of its replies: b"subscribe", b"unsubscribe", b"pong"
        self.left = len(channels) or 1  # replies still to come
        # SUBSCRIBE: per channel not yet confirmed, the subscriptions that wait for it
        self.waiters: dict[bytes, list[Subscription]] = waiters or {}


class _Hub:
    """One pub/sub connection and the thread that reads it, for one server identity."""

    def __init__(self, key: tuple[Any, ...], pool: Any) -> None:
        self.key = key
        # under _registry_lock: subscriptions not yet closed; whether the thread has ended
        self.attached = 0
        self.stopped = False
        # a connection of its own, made as the pool makes them, always with raw replies
        self._options = {**pool.connection_kwargs, "decode_responses": False}
        self._connection_class = pool.connection_class
        self._requests: deque[tuple[str, Subscription]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="sessionq-pubsub-hub", daemon=True)
        # what follows belongs to the hub thread
        self._conn: Any = None
        self._fd: int | None = None  # the connection's socket, as registered with _poll
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._woken = False  # the wake pipe has bytes to drain
        self._subs: set[Subscription] = set()
        self._receivers: dict[bytes, list[Subscription]] = {}  # subscribed channels
        self._sent: deque[_Sent] = deque()
        self._subscribing: dict[bytes, _Sent] = {}  # channel -> its SUBSCRIBE on the way
        self._heard = time.monotonic()  # when Redis last sent anything
        self._pinged: float | None = None  # when the PING not yet answered was sent

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def post(self, what: str, sub: Subscription) -> None:
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
            for sub in [*self._subs, *waiting]:
                sub.fail(RedisConnectionError("the pub/sub hub stopped"))
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _loop(self) -> None:
        backoff = 0.0
        while True:
            try:
                if not self._handle_requests():
                    return
                if self._conn is not None:
                    self._pump()
                elif not self._subs:
                    self._wait(None)
                else:
                    if backoff:
                        self._wait(backoff)  # a listener's request cuts it short
                        if not self._handle_requests():
                            return
                    if self._connect():
                        backoff = 0.0
                    else:
                        backoff = min(max(backoff * 2, RECONNECT_FIRST_S), RECONNECT_MAX_S)
            except LOST as exc:
                log.warning("the pub/sub hub lost its connection (%s); reconnecting", exc)
                self._disconnect()
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

    def _handle_requests(self) -> bool:
        """Apply what listeners asked, in order; False when the hub is to stop."""
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
                self._add(sub)
            elif what == "remove":
                self._drop(sub)
            else:  # "stop": the last listener left
                self._subs.clear()
                return False
        return True

    def _send(
        self,
        kind: bytes,
        command: str,
        channels: Sequence[bytes],
        waiters: dict[bytes, list[Subscription]] | None = None,
    ) -> _Sent:
        sent = _Sent(kind, channels, waiters)
        self._sent.append(sent)
        self._conn.send_command(command, *channels, check_health=False)
        return sent

    def _add(self, sub: Subscription) -> None:
        self._subs.add(sub)
        sub.unconfirmed = 0
        new: dict[bytes, list[Subscription]] = {}
        for channel in sub.channels:
            receivers = self._receivers.setdefault(channel, [])
            if self._conn is not None:
                if not receivers:
                    new[channel] = [sub]
                    sub.unconfirmed += 1
                elif (sent := self._subscribing.get(channel)) is not None:
                    sent.waiters[channel].append(sub)  # its confirmation is ours too
                    sub.unconfirmed += 1
            receivers.append(sub)
        if new:
            sent = self._send(b"subscribe", "SUBSCRIBE", list(new), new)
            self._subscribing.update(dict.fromkeys(new, sent))
        elif self._conn is not None and sub.unconfirmed == 0:
            sub.ready.set()
        # else: the SUBSCRIBE replies confirm it, or the next connection subscribes it

    def _drop(self, sub: Subscription, *, unsubscribed: Sequence[bytes] = ()) -> None:
        """Forget `sub`; UNSUBSCRIBE from the channels it leaves with no listener (except
        `unsubscribed`: those Redis refused to subscribe to)."""
        self._subs.discard(sub)
        left = []
        for channel in sub.channels:
            receivers = self._receivers.get(channel)
            if receivers is None or sub not in receivers:
                continue
            receivers.remove(sub)
            if not receivers:
                del self._receivers[channel]
                self._subscribing.pop(channel, None)
                if channel not in unsubscribed:
                    left.append(channel)
        if left and self._conn is not None:
            self._send(b"unsubscribe", "UNSUBSCRIBE", left)

    def _connect(self) -> bool:
        """Connect and subscribe to every channel a listener wants; on failure, end the
        listeners that have not started (and all of them for a lasting refusal)."""
        conn = self._connection_class(**self._options)
        try:
            conn.connect()
        except (*LOST, ResponseError) as exc:  # ResponseError: a bad database number
            conn.disconnect()
            lasting = lasting_refusal(exc) or isinstance(exc, ResponseError)
            for sub in list(self._subs):
                if lasting or not sub.ready.is_set():
                    sub.fail(exc)
                    self._drop(sub)
            # the listeners it ended raise it; those left ride it out
            (log.warning if self._subs else log.debug)("the pub/sub hub cannot connect (%s)", exc)
            return False
        self._conn = conn
        self._fd = conn._sock.fileno()  # redis-py offers no public way to its socket
        self._poll.register(self._fd, select.POLLIN)
        self._heard, self._pinged = time.monotonic(), None
        for sub in self._subs:
            sub.unconfirmed = len(sub.channels)
            sub.resync_when_confirmed = sub.ready.is_set()
        if self._receivers:
            waiters = {channel: list(subs) for channel, subs in self._receivers.items()}
            sent = self._send(b"subscribe", "SUBSCRIBE", list(waiters), waiters)
            self._subscribing = dict.fromkeys(waiters, sent)
        return True

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._fd is not None:
            self._poll.unregister(self._fd)
            self._fd = None
        conn.disconnect()
        self._sent.clear()
        self._subscribing.clear()

    def _pump(self) -> None:
        """Read and dispatch one reply from Redis; wait for one (or a request) when there is
        none (can_read sees what the parser or TLS holds already, poll what the socket has)."""
        conn = self._conn
        if not conn.can_read(timeout=0):
            now = time.monotonic()
            if self._pinged is not None:
                if now - self._pinged >= HEALTH_CHECK_S:
                    raise RedisTimeoutError(f"no reply to PING in {HEALTH_CHECK_S:.0f} s")
                wait = self._pinged + HEALTH_CHECK_S - now
            elif now - self._heard >= HEALTH_CHECK_S:
                self._send(b"pong", "PING", ())
                self._pinged, wait = now, HEALTH_CHECK_S
            else:
                wait = self._heard + HEALTH_CHECK_S - now
            if not self._wait(wait):
                return
        self._heard, self._pinged = time.monotonic(), None
        try:  # one reply: what else is there, the next call finds
            reply = conn.read_response(disconnect_on_error=False, push_request=True)
        except ResponseError as exc:
            self._refused(exc)
        else:
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
        else:
            kind = b"pong" if reply in (b"PONG", "PONG") else None
        if kind == b"message":
            receivers = self._receivers.get(reply[1])
            if not receivers:
                return
            try:
                event = decode_event(reply[2])
            except CodecError as exc:
                log.error("listeners skipped an undecodable message: %s", exc)
                return
            for sub in receivers:
                sub.deliver(event)
            return
        if kind not in _REPLY_KINDS:
            log.debug("the pub/sub hub ignored %r", reply)
            return
        sent = self._sent[0] if self._sent else None
        if sent is None or sent.kind != kind:
            raise RedisConnectionError(f"pub/sub reply out of step: {reply!r:.80}")
        sent.left -= 1
        if not sent.left:
            self._sent.popleft()
        if kind == b"subscribe":
            channel = reply[1]
            if self._subscribing.get(channel) is sent:
                del self._subscribing[channel]
            for sub in sent.waiters.pop(channel, ()):
                self._confirmed(sub)

    def _refused(self, error: ResponseError) -> None:
        """Redis refused a command (an ACL user may not subscribe to a channel): end the
        listeners that waited for it."""
        if not self._sent:
            raise RedisConnectionError(f"pub/sub reply out of step: {error}")
        sent = self._sent.popleft()
        log.debug("Redis refused the pub/sub hub's %s: %s", sent.kind.decode(), error)
        channels = list(sent.waiters)
        for channel in channels:
            if self._subscribing.get(channel) is sent:
                del self._subscribing[channel]
        for sub in {sub for subs in sent.waiters.values() for sub in subs}:
            if sub in self._subs:
                sub.fail(error)
                self._drop(sub, unsubscribed=channels)

    def _confirmed(self, sub: Subscription) -> None:
        sub.unconfirmed -= 1
        if sub.unconfirmed or sub not in self._subs:
            return
        if not sub.ready.is_set():
            sub.ready.set()
        elif sub.resync_when_confirmed:
            sub.resync_when_confirmed = False
            sub.put(RESYNC)
