"""One session's events as server-sent events, fed by the async listener (SPEC §5, §8).

Each SSE message carries one event as JSON with `id:` set to its `seq`, so a browser that
reconnects sends `Last-Event-ID` and the stream resumes with `after=` that seq: no gap, no
duplicate. Between events the stream sends `record` messages (the session's status, counts and
progress, read from Redis at most every SNAPSHOT_EVERY_S while events arrive), `: ping`
comments while idle, and one `end` message once the session has ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from sessionq.common.errors import SessionqError
from sessionq.common.events import EventType
from sessionq.producer.aio import AsyncClient

log = logging.getLogger(__name__)
SNAPSHOT_EVERY_S = 0.25
PING_EVERY_S = 15.0
RETRY_MS = 2000
QUEUE_MAX_EVENTS = 1000
RECORD_FIELDS = ("status", "progress", "tasks", "started_at", "finished_at")


def start_after(request: Request) -> int:
    """Where the stream starts: the browser's Last-Event-ID, else `?after=`, else 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    try:
        after = int(raw)
    except ValueError:
        raise HTTPException(400, f"after / Last-Event-ID must be a seq, got {raw!r}") from None
    if after < 0:
        raise HTTPException(400, f"after / Last-Event-ID must be >= 0, got {after}")
    return after


def sse(data: Any, *, event: str | None = None, event_id: int | None = None) -> str:
    """One SSE message; `data` as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    head += f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def event_id(event: dict[str, Any]) -> int:
    """The seq a browser resumes after: a gap's lost range counts as delivered."""
    if event["type"] == EventType.LISTENER_GAP:
        return int(event["data"]["to_seq"])
    return int(event["seq"])


async def record_message(client: AsyncClient, sid: str) -> str:
    try:
        records = await client.info(sid)
    except SessionqError as exc:
        log.warning("session %s: no record for the stream: %s", sid, exc)
        records = []
    if not records:
        return sse({"gone": True}, event="record")
    return sse({k: records[0][k] for k in RECORD_FIELDS}, event="record")


async def session_events(
    client: AsyncClient, closing: threading.Event, sid: str, after: int
) -> AsyncIterator[str]:
    """The SSE body for one session, from the event after `after` on, until it ends or
    `closing` is set (the server shuts down)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX_EVENTS)
    ended = asyncio.Event()

    async def pump() -> None:
        try:
            async for event in client.listen(sid, after=after):
                await queue.put(event)
        except (RedisError, OSError) as exc:
            log.warning("session %s: event stream stopped: %s", sid, exc)
        finally:
            ended.set()

    task = asyncio.create_task(pump(), name=f"sse-{sid}")
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield await record_message(client, sid)
        dirty = False
        snapshot_at = sent_at = time.monotonic()
        while not closing.is_set():
            try:
                event: dict[str, Any] | None = await asyncio.wait_for(queue.get(), SNAPSHOT_EVERY_S)
            except TimeoutError:
                event = None
            now = time.monotonic()
            if event is not None:
                yield sse(event, event_id=event_id(event))
                dirty, sent_at = True, now
            finished = ended.is_set() and queue.empty()
            if dirty and (event is None or finished or now - snapshot_at >= SNAPSHOT_EVERY_S):
                yield await record_message(client, sid)
                dirty, snapshot_at = False, now
            if finished:
                yield sse({"session": sid}, event="end")
                return
            if now - sent_at >= PING_EVERY_S:
                yield ": ping\n\n"
                sent_at = now
    finally:
        task.cancel()
