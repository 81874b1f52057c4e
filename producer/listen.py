"""Listeners: events in seq order with no gap and no duplicate, across reconnects (SPEC §5).

A listener subscribes first, then replays what the history kept after `after`, then goes
live; a live event that skips ahead makes it read the missing range from the history, and a
range the cap already dropped is reported as a `listener.gap` event instead of being hidden.
A live event out of the ordinary - one that skips ahead, one it has seen, a terminal one - is
checked against the history (which every event is written to before it is published): one
the history does not hold (published by hand) is dropped, and a terminal event ends nothing
unless the history holds it. A history that went back (a failover lost writes: what the
listener yielded is no longer what it holds, or no longer there) is said with a
`listener.gap` for the range the listener can no longer vouch for, whatever the `types`
filter, and the listener carries on from what Redis now holds (SPEC §9).
`Ordering` is that logic without I/O; `Listener` drives it on redis-py, sharing the process's
pub/sub connection with every other listener (producer.hub), and `AsyncListener` on
redis.asyncio, sharing its event loop's (producer.aiohub).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.canfarstyle import as_id_list
from sessionq.common.connection import lasting_refusal
from sessionq.common.errors import AccessDenied, CodecError, ConnectionFailed, ValidationError
from sessionq.common.events import (
    TERMINAL_EVENTS,
    EventType,
    check_event_types,
    decode_event,
    matches,
)
from sessionq.common.keys import Keys, RoutedKeys
from sessionq.common.vocabulary import ENDED_STATUSES
from sessionq.producer import aiohub
from sessionq.producer.hub import Subscription, subscribe
from sessionq.producer.routing import RESYNC, Passed

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 5.0
POLL_S = 0.5
_GAP = EventType.LISTENER_GAP.value
# the events of a session a listener remembers handling (their fingerprints), to find where
# a history that went back stops agreeing with what it yielded
RING_SIZE = 32
Print = tuple[Any, ...]


def _print(event: dict[str, Any] | None) -> Print | None:
    """What tells one event from another written at the same seq."""
    if event is None:
        return None
    return (event["seq"], event["type"], event.get("task"), event.get("ts"), event.get("worker"))


LOST = (RedisConnectionError, RedisTimeoutError, OSError)


def all_sessions_channels(keys: Keys) -> list[str]:
    """The channels of every session's events: one, or one per partition (keys.RoutedKeys)."""
    if isinstance(keys, RoutedKeys):
        return keys.all_channels()
    return [keys.events_all_channel()]


class Ordering:
    """What a listener yields, given what it reads; no I/O here."""

    def __init__(
        self,
        keys: Keys,
        ids: str | Sequence[str] | None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.keys = keys
        self.ids = None if ids is None else as_id_list(ids)
        if types is not None and (
            isinstance(types, str) or not all(isinstance(t, str) for t in types)
        ):
            raise ValidationError("types", "expected a list of event type names")
        if types:
            check_event_types(types)
        self.types = frozenset(types) if types else None
        if isinstance(after, bool) or (after is not None and not isinstance(after, (int, dict))):
            raise ValidationError("after", "expected a seq (int) or a dict session -> seq")
        self.after = after
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ValidationError("timeout", "must be a positive number of seconds")
        self.timeout = timeout
        self.last: dict[str, int] = {}  # session -> last seq handled
        self.ring: dict[str, dict[int, Print | None]] = {}  # session -> seq -> fingerprint
        self.open: set[str] = set(self.ids or ())  # listed sessions not yet ended

    def channels(self) -> list[str]:
        if self.ids is None:
            return all_sessions_channels(self.keys)
        return [self.keys.events_channel(sid) for sid in self.ids]

    def start_after(self, sid: str) -> int | None:
        if isinstance(self.after, dict):
            return self.after.get(sid)
        return self.after

    def replay_from(self) -> dict[str, int]:
        """Sessions whose history is replayed first (ids=None: only those `after` names)."""
        if self.ids is None:
            return dict(self.after) if isinstance(self.after, dict) else {}
        return {sid: s for sid in self.ids if (s := self.start_after(sid)) is not None}

    def baseline(
        self, state: dict[str, tuple[Any, Any]], kept: dict[str, list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Given each listed session's (seq, status) and the kept events to replay: where
        each starts, and what to yield first."""
        replay: list[dict[str, Any]] = []
        for sid, start in self.replay_from().items():
            self.last[sid] = start
            seq, status = state.get(sid, (None, None))
            events = kept.get(sid, [])
            upto = int(seq) if seq is not None else (events[-1]["seq"] if events else start)
            replay += self.fill(sid, events, start, upto)
            ended = seq is None or (status is not None and _text(status) in ENDED_STATUSES)
            if (
                self.ids is not None
                and ended
                and not any(e["type"] in TERMINAL_EVENTS for e in events)
            ):
                self.open.discard(sid)  # it ended before `after`: nothing more will come
        for sid in self.ids or ():
            if sid in self.last:
                continue
            seq, status = state[sid]
            if seq is None or (status is not None and _text(status) in ENDED_STATUSES):
                self.open.discard(sid)  # unknown, or already ended: nothing live will come
            self.last[sid] = int(seq or 0)
        return replay

    def fill(
        self, sid: str, kept: list[dict[str, Any]], after: int, upto: int
    ) -> list[dict[str, Any]]:
        """`kept` (seq > after) with a listener.gap in front when the history lost events."""
        first = kept[0]["seq"] if kept else upto + 1
        if first > after + 1 and upto > after:
            return [_gap(sid, after + 1, min(first, upto + 1) - 1), *kept]
        return kept

    def wants_or_all(self) -> Callable[[str], bool] | None:
        """What the hub asks before waking the listener for an event: None when it wants all.
        A listener on listed sessions is woken by the event that ends one (it ends when all
        have), even of a type it does not yield; one on every session never ends."""
        if self.types is None:
            return None
        if self.ids is None:
            return self.wants
        return self._wakes

    def _wakes(self, kind: str) -> bool:
        return kind in TERMINAL_EVENTS or matches(kind, self.types)

    def wants(self, kind: str) -> bool:
        """Whether the `types` filter lets an event of this type through."""
        return matches(kind, self.types)

    def live(
        self, event: dict[str, Any], passed: tuple[int, int] | None = None
    ) -> tuple[str, int] | list[dict[str, Any]]:
        """For one live event: what to yield, or (session, seq after which the history must
        be read first) when it skipped ahead. `passed`: the seqs (first, last) of its
        session's events just before it that the hub held back (types this listener does
        not yield, routing.Passed): handled, when they follow on from what was."""
        sid, seq = event["session"], event["seq"]
        if self.ids is not None and sid not in self.last:
            return []
        last = self.last.get(sid)
        if passed is not None and last is not None and passed[0] <= last + 1 <= passed[1] + 1:
            last = self.last[sid] = max(last, passed[1])
        if last is None:
            self.last[sid] = seq
            return [event]
        if seq == last + 1 and event["type"] not in TERMINAL_EVENTS:
            return [event]
        if seq <= last and (ring := self.ring.get(sid)) and ring.get(seq, ()) == _print(event):
            return []  # one it handled (a replayed event also heard live): no need to ask
        return (sid, min(self.check_after(sid), seq - 1))

    def check_after(self, sid: str) -> int:
        """The history to read (seq > this) to check a session's live event against it: back
        to the oldest event this listener remembers handling."""
        ring, last = self.ring.get(sid), self.last.get(sid, 0)
        return min(min(ring), last + 1) - 1 if ring else last

    def reconcile(
        self, sid: str, event: dict[str, Any] | None, kept: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """What to yield given what the history holds now (`kept`: seq > check_after), for
        a live `event` out of the ordinary (see `live`) or, with None, after a reconnect: a
        listener.gap first if the history went back, then what it holds and the listener
        has not handled - up to the event when the history holds it (else it is dropped:
        not every message on a channel is one of our events)."""
        last = self.last.get(sid, 0)
        held = {e["seq"]: e for e in kept}
        ring = self.ring.get(sid)
        out: list[dict[str, Any]] = []
        if ring and (kept or event is not None) and not _agrees(ring, held):
            agreeing = [n for n in ring if n in held and _print(held[n]) == ring[n]]
            # nothing agrees: from the oldest it remembers, or the event's if older (the
            # history holds an event there, and it may not be the one yielded)
            floor = min(ring) if event is None else min(min(ring), event["seq"])
            start = max(agreeing) + 1 if agreeing else floor
            out.append(_gap(sid, start, last, went_back=True))
            for n in [n for n in ring if n >= start]:
                del ring[n]
            last = self.last[sid] = start - 1
        if event is not None and event["seq"] <= last:
            return out  # one handled already
        if event is not None and _print(held.get(event["seq"])) == _print(event):
            upto = event["seq"]
        else:
            upto = max(held, default=last)
        newer = [e for e in kept if last < e["seq"] <= upto]
        return out + self.fill(sid, newer, last, upto)

    def to_resync(self) -> dict[str, int]:
        """After a reconnect: the sessions whose history to read again, from where."""
        return {s: n for s, n in self.last.items() if self.ids is None or s in self.open}

    def deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record the events as handled; the ones the `types` filter lets through."""
        out = []
        last, types = self.last, self.types  # (each listener runs this for every event)
        for event in events:
            sid, kind = event["session"], event["type"]
            if kind == _GAP:
                out.append(event)
                continue
            seq = event["seq"]
            if seq > last.get(sid, 0):
                last[sid] = seq
            ring = self.ring.get(sid)
            if ring is None:
                ring = self.ring[sid] = {}
            ring[seq] = _print(event)
            if len(ring) > RING_SIZE:
                del ring[next(iter(ring))]
            if matches(kind, types):
                out.append(event)
            if kind in TERMINAL_EVENTS:
                self.open.discard(sid)
        return out

    def wait_s(self, idle_since: float) -> float | None:
        """How long the next wait for an event may last; None once the listener has been
        idle (nothing yielded since `idle_since`, a time.monotonic()) for `timeout`."""
        if self.timeout is None:
            return POLL_S
        left = self.timeout - (time.monotonic() - idle_since)
        return None if left <= 0 else min(POLL_S, self.timeout)

    def done(self) -> bool:
        return self.ids is not None and not self.open


def _agrees(ring: dict[int, Print | None], held: dict[int, dict[str, Any]]) -> bool:
    """Whether the history (`held`, by seq) still holds the last event a listener handled
    (`ring`): the same event at its seq, or a history the cap trimmed past it since."""
    newest = max(ring)
    if newest in held:
        return _print(held[newest]) == ring[newest]
    return bool(held) and min(held) > newest


def _gap(sid: str, from_seq: int, to_seq: int, *, went_back: bool = False) -> dict[str, Any]:
    """A listener.gap event over seqs from_seq..to_seq (`went_back`: the history no longer
    holds what the listener yielded there - a failover lost writes)."""
    data: dict[str, Any] = {"from_seq": from_seq, "to_seq": to_seq}
    if went_back:
        data["reason"] = "the history went back (writes lost); what it holds now follows"
    return {"v": 1, "seq": from_seq - 1, "ts": time.time(), "type": _GAP, "session": sid,
            "task": None, "worker": None, "data": data}  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raws: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for raw in raws:
        try:
            out.append(decode_event(raw))
        except CodecError as exc:
            log.error("skipping an undecodable event: %s", exc)
    return out


def access_checked(events: Iterator[dict[str, Any]], url: str) -> Iterator[dict[str, Any]]:
    """`events`, with Redis's NOPERM (an ACL user outside its prefix) as AccessDenied and what
    the listener does not ride out (a refused password, no Redis at the start) as
    ConnectionFailed, as the other calls raise them."""
    try:
        yield from events
    except NoPermissionError as exc:
        raise AccessDenied(url, str(exc)) from exc
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise ConnectionFailed(url, str(exc)) from exc


async def access_checked_async(
    events: AsyncIterator[dict[str, Any]], url: str
) -> AsyncIterator[dict[str, Any]]:
    """The same for an async iterator."""
    try:
        async for event in events:
            yield event
    except NoPermissionError as exc:
        raise AccessDenied(url, str(exc)) from exc
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise ConnectionFailed(url, str(exc)) from exc


def _own(item: Any) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """A listener's own copy of an event the hub handed to every listener (its own dict and
    its own `data` dict: what deeper in `data` is shared), and the seqs held back before it."""
    passed = None
    if isinstance(item, Passed):
        item, passed = item.event, (item.first, item.last)
    return {**item, "data": dict(item["data"])}, passed


class Listener:
    """Any number of sessions, on the process's shared pub/sub connection (producer.hub)."""

    def __init__(self, redis: Any, keys: Keys, ids: Any, **options: Any) -> None:
        self.redis = redis
        self.order = Ordering(keys, ids, **options)
        self._sub: Subscription | None = None

    def _history(self, sid: str, after: int) -> list[dict[str, Any]]:
        raws = self.redis.zrangebyscore(self.order.keys.history(sid), f"({after}", "+inf")
        return _decode(raws)

    def _resync(self) -> list[dict[str, Any]]:
        """After a reconnect: what the history kept that we have not handled yet."""
        order, out = self.order, []
        for sid in order.to_resync():
            kept = self._history(sid, order.check_after(sid))
            out += order.deliver(order.reconcile(sid, None, kept))
        return out

    def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._run()
        finally:
            self.close()

    def _baseline(self) -> list[dict[str, Any]]:
        order = self.order
        state: dict[str, tuple[Any, Any]] = {}
        if order.ids is not None:
            pipe = self.redis.pipeline(transaction=False)
            for sid in order.ids:
                pipe.hmget(order.keys.session(sid), ["seq", "status"])
            state = {sid: tuple(v) for sid, v in zip(order.ids, pipe.execute(), strict=True)}
        kept = {sid: self._history(sid, n) for sid, n in order.replay_from().items()}
        return order.baseline(state, kept)

    def _run(self) -> Iterator[dict[str, Any]]:
        order = self.order
        self._sub = sub = subscribe(self.redis, order.channels(), order.wants_or_all())
        yield from order.deliver(self._baseline())
        idle_since = time.monotonic()
        backoff = 0.0  # > 0: a history read failed, read it again after this long
        while not order.done():
            wait = order.wait_s(idle_since)
            if wait is None:
                return
            try:
                if backoff:
                    time.sleep(min(backoff, wait))
                    out = self._resync()
                    backoff = 0.0
                else:
                    item = sub.get(wait)
                    if item is None:
                        continue
                    if item is RESYNC:
                        out = self._resync()
                    else:
                        out = self._live(item)
            except LOST as exc:
                if isinstance(exc, RedisConnectionError) and lasting_refusal(exc):
                    raise  # a wrong password, an untrusted certificate: no use trying again
                log.warning("listener could not read the history (%s); trying again", exc)
                backoff = min(max(backoff * 2, 0.05), RECONNECT_MAX_S)
                continue
            yield from out
            if out:
                idle_since = time.monotonic()

    def _live(self, item: Any) -> list[dict[str, Any]]:
        event, passed = _own(item)
        step = self.order.live(event, passed)
        if isinstance(step, tuple):
            step = self.order.reconcile(step[0], event, self._history(*step))
        return self.order.deliver(step)


class AsyncListener:
    """The same on redis.asyncio: an async iterator, sharing the loop's pub/sub connection
    with every other AsyncListener of the loop (producer.aiohub)."""

    def __init__(self, redis: AsyncRedis, keys: Keys, ids: Any, **options: Any) -> None:
        self.redis = redis
        self.order = Ordering(keys, ids, **options)
        self._sub: aiohub.Subscription | None = None

    async def _history(self, sid: str, after: int) -> list[dict[str, Any]]:
        raws = await self.redis.zrangebyscore(self.order.keys.history(sid), f"({after}", "+inf")
        return _decode(raws)

    async def _resync(self) -> list[dict[str, Any]]:
        order, out = self.order, []
        for sid in order.to_resync():
            kept = await self._history(sid, order.check_after(sid))
            out += order.deliver(order.reconcile(sid, None, kept))
        return out

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.close()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._run()  # not `async for ...: yield`: each generator level costs per event

    async def _baseline(self) -> list[dict[str, Any]]:
        order = self.order
        state: dict[str, tuple[Any, Any]] = {}
        if order.ids is not None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in order.ids:
                    pipe.hmget(order.keys.session(sid), ["seq", "status"])
                replies = await pipe.execute()
            state = {sid: tuple(v) for sid, v in zip(order.ids, replies, strict=True)}
        kept = {sid: await self._history(sid, n) for sid, n in order.replay_from().items()}
        return order.baseline(state, kept)

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        try:
            order = self.order
            self._sub = sub = await aiohub.subscribe(self.redis, order.channels(),
                                                     order.wants_or_all())  # fmt: skip
            for event in order.deliver(await self._baseline()):
                yield event
            idle_since = time.monotonic()
            backoff = 0.0  # > 0: a history read failed, read it again after this long
            while not order.done():
                wait = order.wait_s(idle_since)
                if wait is None:
                    return
                try:
                    if backoff:
                        await asyncio.sleep(min(backoff, wait))
                        out = await self._resync()
                        backoff = 0.0
                    else:
                        item = await sub.get(wait)
                        if item is None:
                            continue
                        if item is RESYNC:
                            out = await self._resync()
                        else:
                            out = await self._live(item)
                except LOST as exc:
                    if isinstance(exc, RedisConnectionError) and lasting_refusal(exc):
                        raise  # a wrong password, an untrusted certificate: no use trying again
                    log.warning("listener could not read the history (%s); trying again", exc)
                    backoff = min(max(backoff * 2, 0.05), RECONNECT_MAX_S)
                    continue
                for event in out:
                    yield event
                if out:
                    idle_since = time.monotonic()
        finally:
            await self.close()

    async def _live(self, item: Any) -> list[dict[str, Any]]:
        event, passed = _own(item)
        step = self.order.live(event, passed)
        if isinstance(step, tuple):
            step = self.order.reconcile(step[0], event, await self._history(*step))
        return self.order.deliver(step)
