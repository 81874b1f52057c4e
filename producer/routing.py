"""The pub/sub hubs' bookkeeping, without I/O: who hears which channel, what to SUBSCRIBE to
and UNSUBSCRIBE from, and what each reply of Redis means for the listeners.

Both hubs keep one `Routes` (producer.hub on a thread, producer.aiohub on an event loop),
handing it the function that writes a command on their one connection, at once and in order:
a channel is subscribed to while at least one listener wants it. Replies come in the order of the
commands (messages come in between), so that a SUBSCRIBE's replies tell which listeners Redis
has confirmed: a new listener is started then (it may read the history: nothing published
after can be missed), and after a new connection every listener is told to RESYNC.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.connection import lasting_refusal
from sessionq.common.errors import CodecError
from sessionq.common.events import decode_event

log = logging.getLogger(__name__)
HEALTH_CHECK_S = 15.0  # a PING after this long without a word from Redis; lost after twice
MAX_BACKLOG_EVENTS = 10_000  # a listener this far behind is told to RESYNC instead
RESYNC = object()  # in a listener's queue: read the history again (Ordering.to_resync)
MAX_PASSED_SESSIONS = 10_000  # sessions with held-back events remembered per listener


class Passed(NamedTuple):
    """In a listener's queue: an event, after events of its session that the hub held back
    because the listener does not want their type - seqs `first` to `last`, all of them."""

    event: dict[str, Any]
    first: int
    last: int


# connection options that say how to behave, not where to connect or as whom (any other
# option that is an object, such as a credential provider, counts by identity)
_BEHAVIOUR_OPTIONS = frozenset(
    {
        "retry", "retry_on_error", "himport_registry", "maint_notifications_pool_handler",
        "maint_notifications_config",
    }
)  # fmt: skip
_PLAIN = (str, bytes, int, float, bool, type(None))
# a refusal that says the channel's slot is served elsewhere now (or soon): reconnect there
_ELSEWHERE = (AskError, ClusterDownError, TryAgainError)


class Verbs(NamedTuple):
    """The pub/sub commands of a hub and the kinds of their replies: plain, or (on a Redis
    Cluster) sharded, where a channel is heard only on the master of its slot."""

    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


PLAIN = Verbs("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED = Verbs("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


class SlotMoved(RedisConnectionError):
    """A sharded subscription's master no longer serves its slot (a failover, a slot
    migrated): the hub connects again, to the master that serves it now."""


def is_master(role: Any) -> bool:
    """Does a ROLE reply say master?"""
    return isinstance(role, list) and bool(role) and role[0] in (b"master", "master")


def identity(pool: Any) -> tuple[Any, ...]:
    """Which hub serves a connection pool: the same server, database, user and TLS
    settings share one; an option that is an object (a credential provider) shares by
    identity."""
    parts: list[tuple[str, Any]] = []
    for name, value in sorted(pool.connection_kwargs.items()):
        if name not in _BEHAVIOUR_OPTIONS:
            parts.append((name, value if isinstance(value, _PLAIN) else id(value)))
    return (pool.connection_class, *parts)


def again(error: BaseException) -> BaseException:
    """A fresh exception like `error`, for one listener to raise (the hub hands the same one
    to every listener)."""
    try:
        return type(error)(*error.args)
    except TypeError:
        return RedisConnectionError(str(error))


def by_server(located: Sequence[tuple[str, Any]]) -> list[tuple[Any, list[str]]]:
    """Channels, each with the pool of the server it is heard on, grouped by server (the
    pool of each group's first channel): a sharded listener subscribes on each."""
    groups: dict[tuple[Any, ...], tuple[Any, list[str]]] = {}
    for channel, pool in located:
        groups.setdefault(identity(pool), (pool, []))[1].append(channel)
    return list(groups.values())


class Flag(Protocol):
    """A threading.Event or an asyncio.Event."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class Member(ABC):
    """A listener as the routes see it: its channels and its queue (each hub's
    Subscription)."""

    def __init__(
        self, channels: Sequence[str], ready: Flag, wants: Callable[[str], bool] | None = None
    ) -> None:
        self.channels = tuple(dict.fromkeys(c.encode() for c in channels))
        self.ready = ready  # Redis confirmed every channel (or `error` is set)
        self.error: BaseException | None = None  # why it could not start
        self.overflowed = False  # the hub stopped filling the queue until RESYNC is taken
        # The event types the listener is woken for (None: all; see Ordering.wants_or_all).
        # The hub holds back the others - no wake-up of the listener for an event it would
        # drop - and tells it, with the next event of the session it passes on, which seqs
        # it held back. (hub side) session -> (first, last) seq held back
        self.wants = wants
        self._passed: dict[str, tuple[int, int]] = {}
        # on a Redis Cluster, a listener whose channels are on several masters: its Part on
        # each master's hub (it is then on no hub itself)
        self.parts: list[Member] = []

    @abstractmethod
    def put(self, item: Any) -> None:
        """Queue one event, RESYNC, or an exception that ends the listener."""

    @abstractmethod
    def backlog(self) -> int:
        """How many items wait in the queue."""

    def taken(self, item: Any) -> Any:
        """What the listener gets for an item off its queue: an event, or RESYNC (the hub
        queues events again from here on); raises the exception that ended it."""
        if item is RESYNC:
            self.overflowed = False
            for part in self.parts:
                part.overflowed = False
        elif isinstance(item, BaseException):
            raise again(item) from item
        return item

    def started(self) -> bool:
        """Whether Redis confirmed every channel once (or the listener failed to start)."""
        return self.ready.is_set()

    def start(self) -> None:
        """Redis confirmed every channel: the listener may read the history."""
        self.ready.set()

    def fail(self, error: BaseException) -> None:
        """End the listener with `error`, at once if it has not started."""
        if self.ready.is_set():
            self.put(error)
        else:
            self.error = error
            self.ready.set()

    def deliver(self, event: dict[str, Any]) -> None:
        """Queue a live event, unless the listener is too far behind or does not want it."""
        if self.overflowed:
            return
        sid, kind = event["session"], event["type"]
        if self.wants is not None and not self.wants(kind):
            seq, held = event["seq"], self._passed.get(sid)
            if held is None or held[1] != seq - 1:
                if len(self._passed) >= MAX_PASSED_SESSIONS:
                    self._passed.clear()  # what it forgets the listener reads from the history
                held = (seq, seq)
            self._passed[sid] = (held[0], seq)
            return
        if self.backlog() >= MAX_BACKLOG_EVENTS:
            log.warning("a listener is %d events behind; it will read them from the history",
                        MAX_BACKLOG_EVENTS)  # fmt: skip
            self.overflowed = True
            self._passed.clear()
            self.put(RESYNC)
            return
        held = self._passed.pop(sid, None) if self._passed else None
        self.put(event if held is None else Passed(event, *held))


class Part(Member):
    """A listener's channels that one master serves (Member.parts): its events go to the
    listener's queue."""

    def __init__(self, owner: Member, channels: Sequence[str], ready: Flag) -> None:
        super().__init__(channels, ready, owner.wants)
        self.owner = owner

    def put(self, item: Any) -> None:
        self.owner.put(item)

    def backlog(self) -> int:
        return self.owner.backlog()


class _Sent:
    """A command sent whose replies are not all in."""

    __slots__ = ("kind", "left", "waiters")

    def __init__(
        self,
        kind: bytes,
        channels: Sequence[bytes],
        waiters: dict[bytes, list[Member]] | None = None,
    ) -> None:
        self.kind = kind  # the kind of its replies: b"subscribe", b"unsubscribe", b"pong"
        self.left = len(channels) or 1  # replies still to come
        # SUBSCRIBE: per channel not yet confirmed, the listeners that wait for it
        self.waiters: dict[bytes, list[Member]] = waiters or {}


class Routes:
    """The listeners of one hub, the channels they want, the commands in flight."""

    def __init__(self, write: Callable[[str, Sequence[bytes]], None], verbs: Verbs = PLAIN) -> None:
        self._write = write  # sends a command and its channels on the hub's connection
        self.verbs = verbs
        self._kinds = frozenset({verbs.subscribed, verbs.unsubscribed, b"pong"})
        self.members: set[Member] = set()
        self.connected = False
        self._receivers: dict[bytes, list[Member]] = {}  # subscribed channels
        self._sent: deque[_Sent] = deque()
        self._subscribing: dict[bytes, _Sent] = {}  # channel -> its SUBSCRIBE on the way
        self._unconfirmed: dict[Member, int] = {}  # channels Redis has not confirmed yet
        self._resync: set[Member] = set()  # to RESYNC once their channels are confirmed

    def add(self, sub: Member) -> None:
        """A new listener: SUBSCRIBE to the channels it is the first to want."""
        self.members.add(sub)
        unconfirmed = 0
        new: dict[bytes, list[Member]] = {}
        for channel in sub.channels:
            receivers = self._receivers.setdefault(channel, [])
            if self.connected:
                if not receivers:
                    new[channel] = [sub]
                    unconfirmed += 1
                elif (sent := self._subscribing.get(channel)) is not None:
                    sent.waiters[channel].append(sub)  # its confirmation is ours too
                    unconfirmed += 1
            receivers.append(sub)
        self._unconfirmed[sub] = unconfirmed
        if new:
            self._subscribe(new)
        elif self.connected and unconfirmed == 0:
            sub.start()
        # else: the SUBSCRIBE replies confirm it, or the next connection subscribes it

    def drop(self, sub: Member, *, unsubscribed: Sequence[bytes] = ()) -> None:
        """Forget `sub`; UNSUBSCRIBE from the channels it leaves with no listener (except
        `unsubscribed`: those Redis refused to subscribe to)."""
        self.members.discard(sub)
        self._unconfirmed.pop(sub, None)
        self._resync.discard(sub)
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
        if left and self.connected:
            for batch in self._batches(left):
                self._send(self.verbs.unsubscribed, self.verbs.unsubscribe, batch)

    def connect(self) -> None:
        """The hub has a new connection: SUBSCRIBE to every channel (a listener already
        started gets RESYNC once Redis confirmed its channels)."""
        self.connected = True
        for sub in self.members:
            self._unconfirmed[sub] = len(sub.channels)
            if sub.started():
                self._resync.add(sub)
        if self._receivers:
            self._subscribing = {}
            self._subscribe({channel: list(subs) for channel, subs in self._receivers.items()})

    def disconnect(self) -> None:
        """The connection is gone, and the replies it owed."""
        self.connected = False
        self._sent.clear()
        self._subscribing.clear()

    def cannot_connect(self, error: Exception) -> None:
        """A connection failed: end the listeners that have not started (all of them for a
        lasting refusal: a wrong password, a bad database number); those left ride it out."""
        lasting = lasting_refusal(error) or isinstance(error, ResponseError)
        for sub in list(self.members):
            if lasting or not sub.started():
                sub.fail(error)
                self.drop(sub)
        # the listeners it ended raise it
        (log.warning if self.members else log.debug)("the pub/sub hub cannot connect (%s)", error)

    def ping(self) -> None:
        self._send(b"pong", "PING", ())

    def reply(self, reply: Any) -> None:
        """One reply from Redis: deliver a message (decoded once), or settle a command."""
        if isinstance(reply, list) and reply:
            kind = reply[0]
        else:
            kind = b"pong" if reply in (b"PONG", "PONG") else None
        if kind == self.verbs.message:
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
        if kind not in self._kinds:
            log.debug("the pub/sub hub ignored %r", reply)
            return
        sent = self._sent[0] if self._sent else None
        if self.verbs is SHARDED and kind == SHARDED.unsubscribed and (
            sent is None or sent.kind != kind
            or (reply[1] in self._receivers and reply[1] not in self._subscribing)
        ):  # fmt: skip
            # not an answer: the master gave up the channel's slot (demoted by a failover,
            # or the slot migrated) and dropped its subscribers
            raise SlotMoved(f"the master stopped serving {reply[1]!r}")
        if sent is None or sent.kind != kind:
            raise RedisConnectionError(f"pub/sub reply out of step: {reply!r:.80}")
        sent.left -= 1
        if not sent.left:
            self._sent.popleft()
        if kind == self.verbs.subscribed:
            channel = reply[1]
            if self._subscribing.get(channel) is sent:
                del self._subscribing[channel]
            for sub in sent.waiters.pop(channel, ()):
                self._confirmed(sub)

    def refused(self, error: BaseException) -> None:
        """Redis refused a command (an ACL user may not subscribe to a channel): end the
        listeners that waited for it."""
        if not self._sent:
            raise RedisConnectionError(f"pub/sub reply out of step: {error}")
        if self.verbs is SHARDED and isinstance(error, _ELSEWHERE):
            raise SlotMoved(f"the master refused a sharded subscription: {error}")
        sent = self._sent.popleft()
        log.debug("Redis refused the pub/sub hub's %s: %s", sent.kind.decode(), error)
        channels = list(sent.waiters)
        for channel in channels:
            if self._subscribing.get(channel) is sent:
                del self._subscribing[channel]
        for sub in {sub for subs in sent.waiters.values() for sub in subs}:
            if sub in self.members:
                sub.fail(error)
                self.drop(sub, unsubscribed=channels)

    def _subscribe(self, waiters: dict[bytes, list[Member]]) -> None:
        """Subscribe to the channels of `waiters` (their listeners wait for the replies)."""
        for batch in self._batches(list(waiters)):
            part = {channel: waiters[channel] for channel in batch}
            sent = self._send(self.verbs.subscribed, self.verbs.subscribe, batch, part)
            self._subscribing.update(dict.fromkeys(batch, sent))

    def _batches(self, channels: list[bytes]) -> list[list[bytes]]:
        """One command for all the channels, or, sharded, one per channel (the channels of
        one command must share a slot)."""
        return [[channel] for channel in channels] if self.verbs is SHARDED else [channels]

    def _send(
        self,
        kind: bytes,
        command: str,
        channels: Sequence[bytes],
        waiters: dict[bytes, list[Member]] | None = None,
    ) -> _Sent:
        sent = _Sent(kind, channels, waiters)
        self._sent.append(sent)
        self._write(command, channels)
        return sent

    def _confirmed(self, sub: Member) -> None:
        if sub not in self.members:
            return
        self._unconfirmed[sub] -= 1
        if self._unconfirmed[sub]:
            return
        if not sub.started():
            sub.start()
        elif sub in self._resync:
            self._resync.discard(sub)
            sub.put(RESYNC)


class Heartbeat:
    """When to PING a connection Redis has been silent on, and when to give up on it."""

    def __init__(self) -> None:
        self._heard = time.monotonic()  # when Redis last sent anything
        self._pinged: float | None = None  # when the PING not yet answered was sent

    def heard(self) -> None:
        self._heard, self._pinged = time.monotonic(), None

    def wait(self) -> tuple[bool, float]:
        """(whether to send a PING now, how long to wait for a reply); raises when a PING
        went unanswered for HEALTH_CHECK_S."""
        now = time.monotonic()
        if self._pinged is not None:
            if now - self._pinged >= HEALTH_CHECK_S:
                raise RedisTimeoutError(f"no reply to PING in {HEALTH_CHECK_S:.0f} s")
            return False, self._pinged + HEALTH_CHECK_S - now
        if now - self._heard >= HEALTH_CHECK_S:
            self._pinged = now
            return True, HEALTH_CHECK_S
        return False, self._heard + HEALTH_CHECK_S - now
