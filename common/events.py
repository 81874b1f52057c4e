"""Event types and the wire schema of SPEC §5: `Event` is the one event format.

Events are built, numbered and packed inside the Lua scripts (common/lua/prelude.lua `emit`
and `flush`), so a state change and its events are one atomic step; Python emits the events
that go with no state change (progress, logs, op.*, state.changed) through the emit script
(Scripts.emit), which runs the same Lua functions. The bytes Lua packs are exactly an
Event's `to_wire()` encoded by common.codec (tests/common/test_event_format.py): a map of
`v`, `seq`, `ts`, `type`, `session`, `task`, `worker`, `data`, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import CodecError, ValidationError

EVENT_SCHEMA_VERSION = 1


class EventType(StrEnum):
    SESSION_CREATED = "session.created"
    SESSION_STARTED = "session.started"
    SESSION_PAUSED = "session.paused"
    SESSION_RESUMED = "session.resumed"
    SESSION_COMPLETED = "session.completed"
    SESSION_FAILED = "session.failed"
    SESSION_STOPPED = "session.stopped"
    SESSION_DESTROYED = "session.destroyed"
    TASK_QUEUED = "task.queued"
    TASK_STARTED = "task.started"
    TASK_PROGRESS = "task.progress"
    TASK_LOG = "task.log"
    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_RETRYING = "task.retrying"
    TASK_CANCELED = "task.canceled"
    STATE_CHANGED = "state.changed"
    WORKER_STARTED = "worker.started"
    WORKER_STOPPED = "worker.stopped"
    LISTENER_GAP = "listener.gap"


# After one of these a session has nothing more to say (until work is added to it again).
TERMINAL_EVENTS = frozenset(
    {
        EventType.SESSION_COMPLETED,
        EventType.SESSION_FAILED,
        EventType.SESSION_STOPPED,
        EventType.SESSION_DESTROYED,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One event as it travels (SPEC §5)."""

    seq: int
    ts: float
    type: str
    session: str
    task: str | None = None
    worker: str | None = None
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return _wire(self.seq, self.ts, self.type, self.session, self.task, self.worker,
                     self.data)  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        """The event that bytes from a channel or the history hold; CodecError if none."""
        wire = decode_event(raw)
        return cls(seq=wire["seq"], ts=wire["ts"], type=wire["type"], session=wire["session"],
                   task=wire["task"], worker=wire["worker"], data=wire["data"])  # fmt: skip


def _wire(
    seq: int, ts: float, type_: str, session: str, task: Any, worker: Any, data: dict[str, Any]
) -> dict[str, Any]:
    """The event dict of SPEC §5, in its field order: the one place that lays it out."""
    return {"v": EVENT_SCHEMA_VERSION, "seq": seq, "ts": ts, "type": type_, "session": session,
            "task": task, "worker": worker, "data": data}  # fmt: skip


def decode_event(raw: bytes) -> dict[str, Any]:
    """The event dict users get from event bytes (an Event's to_wire(), built directly:
    every listener's hub decodes every message); CodecError if they are not one."""
    wire = codec.decode_map(raw, "event")
    try:
        data = wire.get("data") or {}
        return _wire(int(wire["seq"]), float(wire["ts"]), str(wire["type"]),
                     str(wire["session"]), wire.get("task"), wire.get("worker"),
                     data if isinstance(data, dict) else {})  # fmt: skip
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"event: missing or bad field {exc}") from exc


def check_event_types(types: Sequence[str]) -> None:
    """ValidationError naming `types` unless each is an event type of SPEC §5, `op.NAME`, or
    a prefix of them ending in `*` ("task.*")."""
    known = [t.value for t in EventType]
    for value in types:
        stem = value[:-1] if value.endswith("*") else None
        if stem is None and (value in known or (value.startswith("op.") and len(value) > 3)):
            continue
        if stem is not None and (
            any(k.startswith(stem) for k in [*known, "op."]) or stem.startswith("op.")
        ):
            continue
        raise ValidationError(
            "types", f"{value!r} is not an event type ({', '.join(known)}, op.NAME; a "
            "trailing * matches a prefix, e.g. 'task.*')",
        )  # fmt: skip


def matches(event_type: str, patterns: frozenset[str] | None) -> bool:
    """`types` filtering: exact names, or a trailing `*` for a prefix ("task.*")."""
    if not patterns:
        return True
    if event_type in patterns:
        return True
    return any(p.endswith("*") and event_type.startswith(p[:-1]) for p in patterns)
