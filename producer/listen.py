"""Listeners: events in seq order with no gap and no duplicate, across reconnects (SPEC §5).

A listener subscribes first, then replays what the history kept after `after`, then goes
live; a live event that skips ahead makes it read the missing range from the history, and a
range the cap already dropped is reported as a `listener.gap` event instead of being hidden.
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

from sessionq.common.connection import lasting_refusal
from sessionq.common.errors import AccessDenied, CodecError, ConnectionFailed, ValidationError
from sessionq.common.events import TERMINAL_EVENTS, EventType, decode_event, matches
from sessionq.common.keys import Keys
from sessionq.common.models import ENDED_STATUSES, as_id_list
from sessionq.producer import aiohub
from sessionq.producer.hub import Subscription, subscribe
from sessionq.producer.routing import RESYNC, Passed

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 5.0
POLL_S = 0.5
_GAP = EventType.LISTENER_GAP.value
LOST = (RedisConnectionError, RedisTimeoutError, OSError)


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
        self.types = frozenset(types) if types else None
        if isinstance(after, bool) or (after is not None and not isinstance(after, (int, dict))):
            raise ValidationError("after", "expected a seq (int) or a dict session -> seq")
        self.after = after
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ValidationError("timeout", "must be a positive number of seconds")
        self.timeout = timeout
        self.last: dict[str, int] = {}  # session -> last seq handled
        self.open: set[str] = set(self.ids or ())  # listed sessions not yet ended

    def channels(self) -> list[str]:
        if self.ids is None:
            return [self.keys.events_all_channel()]
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
            gap = {
                "v": 1, "seq": after, "ts": time.time(), "type": EventType.LISTENER_GAP.value,
                "session": sid, "task": None, "worker": None,
                "data": {"from_seq": after + 1, "to_seq": min(first, upto + 1) - 1},
            }  # fmt: skip
            return [gap, *kept]
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
        if seq <= last:
            return []
        if seq > last + 1:
            return (sid, last)
        return [event]

    def skipped(
        self, event: dict[str, Any], kept: list[dict[str, Any]], last: int
    ) -> list[dict[str, Any]]:
        """The events to yield for a live event that skipped ahead of `last`."""
        missing = [e for e in kept if e["seq"] < event["seq"]]
        return self.fill(event["session"], missing, last, event["seq"] - 1) + [event]

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
            if event["seq"] > last.get(sid, 0):
                last[sid] = event["seq"]
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
        for sid, last in order.to_resync().items():
            kept = self._history(sid, last)
            upto = kept[-1]["seq"] if kept else last
            out += order.deliver(order.fill(sid, kept, last, upto))
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
                pipe.hmget(order.keys.session(sid), "seq", "status")
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
            step = self.order.skipped(event, self._history(*step), step[1])
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
        for sid, last in order.to_resync().items():
            kept = await self._history(sid, last)
            upto = kept[-1]["seq"] if kept else last
            out += order.deliver(order.fill(sid, kept, last, upto))
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
                    pipe.hmget(order.keys.session(sid), "seq", "status")
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
            step = self.order.skipped(event, await self._history(*step), step[1])
        return self.order.deliver(step)
