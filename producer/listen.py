"""`Listener`: events in seq order with no gap and no duplicate, across reconnects (SPEC §5).

It subscribes first, then replays what the history kept after `after`, then goes live; a live
event that skips ahead makes it read the missing range from the history, and a range the cap
already dropped is reported as a `listener.gap` event instead of being hidden.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from redis.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import CodecError, ValidationError
from common.events import TERMINAL_EVENTS, EventType, decode_event, matches
from common.models import ENDED_STATUSES, as_id_list

if TYPE_CHECKING:
    from producer.client import Client

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 5.0
POLL_S = 0.5


class Listener:
    """One pub/sub connection for any number of sessions."""

    def __init__(
        self,
        client: Client,
        ids: str | Sequence[str] | None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.ids = None if ids is None else as_id_list(ids)
        if types is not None and (
            isinstance(types, str) or not all(isinstance(t, str) for t in types)
        ):
            raise ValidationError("types", "expected a list of event type names")
        self.types = frozenset(types) if types else None
        if after is not None and not isinstance(after, (int, dict)) or isinstance(after, bool):
            raise ValidationError("after", "expected a seq (int) or a dict session -> seq")
        self.after = after
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ValidationError("timeout", "must be a positive number of seconds")
        self.timeout = timeout
        self.last: dict[str, int] = {}  # session -> last seq handled
        self.open: set[str] = set(self.ids or ())  # listed sessions not yet ended
        self._pubsub: PubSub | None = None

    # -- connection ----------------------------------------------------------------------
    def _channels(self) -> list[str]:
        k = self.client.keys
        if self.ids is None:
            return [k.events_all_channel()]
        return [k.events_channel(sid) for sid in self.ids]

    def _subscribe(self) -> PubSub:
        pubsub = self.client.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(*self._channels())
        return pubsub

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (RedisConnectionError, OSError):
                pass
            self._pubsub = None

    # -- ordering ------------------------------------------------------------------------
    def _start_after(self, sid: str) -> int | None:
        if isinstance(self.after, dict):
            return self.after.get(sid)
        return self.after

    def _baseline(self) -> list[dict[str, Any]]:
        """Where each listed session starts, and the kept events to replay first."""
        replay: list[dict[str, Any]] = []
        if self.ids is None:
            if isinstance(self.after, dict):
                for sid, seq in self.after.items():
                    self.last[sid] = seq
                    replay += self.client.history_after(sid, seq)
            return replay
        k = self.client.keys
        pipe = self.client.redis.pipeline(transaction=False)
        for sid in self.ids:
            pipe.hmget(k.session(sid), "seq", "status")
        for sid, (seq, status) in zip(self.ids, pipe.execute(), strict=True):
            start = self._start_after(sid)
            ended = seq is None or (status is not None and status.decode() in ENDED_STATUSES)
            if start is not None:
                self.last[sid] = start
                kept = self.client.history_after(sid, start)
                replay += self._fill(sid, kept, start, int(seq or 0))
                if ended and not any(e["type"] in TERMINAL_EVENTS for e in kept):
                    self.open.discard(sid)  # it ended before `after`: nothing more will come
                continue
            if ended:
                # unknown, or already ended: nothing live will come
                self.open.discard(sid)
            self.last[sid] = int(seq or 0)
        return replay

    def _fill(
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

    def _accept(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """What to yield for one event received live: nothing (a duplicate), the missing kept
        events and it (a skip ahead), or it."""
        sid, seq = event["session"], event["seq"]
        if self.ids is not None and sid not in self.last:
            return []
        last = self.last.get(sid)
        if last is None:
            self.last[sid] = seq
            return [event]
        if seq <= last:
            return []
        out = [event]
        if seq > last + 1:
            kept = [e for e in self.client.history_after(sid, last) if e["seq"] < seq]
            out = self._fill(sid, kept, last, seq - 1) + out
        self.last[sid] = seq
        return out

    def _deliver(self, events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            if event["type"] != EventType.LISTENER_GAP:
                self.last[event["session"]] = max(self.last.get(event["session"], 0), event["seq"])
            if matches(event["type"], self.types) or event["type"] == EventType.LISTENER_GAP:
                yield event
            if event["type"] in TERMINAL_EVENTS:
                self.open.discard(event["session"])

    def _done(self) -> bool:
        return self.ids is not None and not self.open

    # -- the loop ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._run()
        finally:
            self.close()

    def _run(self) -> Iterator[dict[str, Any]]:
        self._pubsub = self._subscribe()
        yield from self._deliver(self._baseline())
        idle_since = time.monotonic()
        backoff = 0.05
        while not self._done():
            if self.timeout is not None and time.monotonic() - idle_since >= self.timeout:
                return
            wait = POLL_S if self.timeout is None else min(POLL_S, self.timeout)
            try:
                if self._pubsub is None:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    yield from self._resubscribe()
                    backoff = 0.05
                    continue
                message = self._pubsub.get_message(timeout=wait)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("listener lost its connection (%s); reconnecting", exc)
                self.close()
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                event = decode_event(message["data"])
            except CodecError as exc:
                log.error("listener skipped an undecodable message: %s", exc)
                continue
            delivered = False
            for out in self._deliver(self._accept(event)):
                delivered = True
                yield out
            if delivered:
                idle_since = time.monotonic()

    def _resubscribe(self) -> Iterator[dict[str, Any]]:
        """Subscribe again, then read from the history what went by while away."""
        self._pubsub = self._subscribe()
        for sid in list(self.last):
            if self.ids is not None and sid not in self.open:
                continue
            kept = self.client.history_after(sid, self.last[sid])
            upto = kept[-1]["seq"] if kept else self.last[sid]
            yield from self._deliver(self._fill(sid, kept, self.last[sid], upto))
