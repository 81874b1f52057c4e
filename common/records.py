"""The public record shapes: a session's static record (`SessionRecord`, its wire form), the
session record of SPEC §2 and the task record of SPEC §3, built here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.times import iso_from_ms, iso_from_rq_time
from sessionq.common.vocabulary import ENDED_TASK_STATES, Status, TaskState

SCHEMA_VERSION = 1  # the "v" of every record and of a job hash's `sq` field


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """What never changes about a session: the static part of the index entry."""

    id: str
    name: str
    kind: str
    owner: str
    created_at_ms: int
    image: str | None = None
    cores: float | None = None
    ram: float | None = None
    gpu: float | None = None
    replica_id: int = 1
    replica_count: int = 1
    persistent: bool = False
    config: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "owner": self.owner,
            "created_at": self.created_at_ms,
            "replica_id": self.replica_id,
            "replica_count": self.replica_count,
        }
        for key in ("image", "cores", "ram", "gpu", "config"):
            if getattr(self, key) is not None:
                wire[key] = getattr(self, key)
        if self.persistent:
            wire["persistent"] = True
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> SessionRecord:
        """CodecError unless `wire` is a session record of our schema version."""
        if wire.get("v") != SCHEMA_VERSION:
            raise CodecError(f"session record: unknown schema version {wire.get('v')!r}")
        if not all(isinstance(wire.get(k), str) for k in ("id", "name", "kind", "owner")):
            raise CodecError("session record: id, name, kind and owner must be strings")
        try:
            return cls(
                id=wire["id"],
                name=wire["name"],
                kind=wire["kind"],
                owner=wire["owner"],
                created_at_ms=int(wire["created_at"]),
                image=wire.get("image"),
                cores=wire.get("cores"),
                ram=wire.get("ram"),
                gpu=wire.get("gpu"),
                replica_id=int(wire.get("replica_id", 1)),
                replica_count=int(wire.get("replica_count", 1)),
                persistent=bool(wire.get("persistent", False)),
                config=wire.get("config"),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"session record: missing or bad field {exc}") from exc


def parse_record(raw: object, sid: str) -> SessionRecord:
    """A session's record as the index holds it; CodecError naming the session if broken."""
    try:
        return SessionRecord.from_wire(codec.decode_map(raw, "record"))
    except CodecError as exc:
        raise CodecError(f"session {sid}: {exc}") from exc


def _int(raw: Any) -> int:
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


_TASK_STATES = tuple(s.value for s in TaskState)  # (an enum's .value is a slow lookup)


def session_dict(
    record: SessionRecord,
    state: Mapping[bytes | str, Any],
    *,
    result: Any = None,
    error: str | None = None,
    connect_url: str | None = None,
) -> dict[str, Any]:
    """The public session record (SPEC §2): built here and nowhere else."""
    st = {k.decode() if isinstance(k, bytes) else k: v for k, v in state.items()}
    tasks = {state: _int(st.get(state)) for state in _TASK_STATES}
    total = sum(tasks.values())
    done = sum(tasks[state] for state in ENDED_TASK_STATES)
    status = st.get("status", Status.PENDING)
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "kind": record.kind,
        "status": status.decode() if isinstance(status, bytes) else str(status),
        "owner": record.owner,
        "created_at": iso_from_ms(record.created_at_ms),
        "started_at": iso_from_ms(st.get("started_at")),
        "finished_at": iso_from_ms(st.get("finished_at")),
        "image": record.image,
        "cores": record.cores,
        "ram": record.ram,
        "gpu": record.gpu,
        "replica_id": record.replica_id,
        "replica_count": record.replica_count,
        "tasks": tasks,
        "progress": (done / total) if total else 0.0,
        "connect_url": connect_url,
    }
    if not record.persistent:
        out["result"] = result
        out["error"] = error
    return out


TASK_FIELDS = ("state", "attempts", "result", "error", "worker_name", "started_at", "ended_at",
               "origin", "deps", "run_if", "due")  # fmt: skip


def task_dict(task_id: str, name: str, row: Sequence[Any]) -> dict[str, Any]:
    """The public task record (SPEC §3) from a job hash's TASK_FIELDS values."""
    state, attempts, result, error, worker, started, ended, origin, deps, run_if, due = row
    out: dict[str, Any] = {
        "id": task_id,
        "name": name,
        "state": codec.text(state) if state else None,
        "attempts": _int(attempts),
        "result": decode_result(result),
        "error": decode_error(error),
        "worker": codec.text(worker) if worker else None,
        "started_at": iso_from_rq_time(started),
        "finished_at": iso_from_rq_time(ended),
        "queue": codec.text(origin) if origin else None,
        "depends_on": [],
        "run_if": codec.text(run_if) if run_if else None,
        "due_at": iso_from_ms(due),
    }
    if deps:
        try:
            out["depends_on"] = [str(d) for d in codec.decode(deps)]
        except CodecError:
            out["depends_on"] = None
    return out


def decode_result(raw: bytes | None) -> Any:
    """A run's stored result (msgpack); undecodable bytes are reported, not raised."""
    if not raw:
        return None
    try:
        return codec.decode(raw)
    except CodecError as exc:
        return f"<undecodable result: {exc}>"


def decode_error(raw: bytes | None) -> str | None:
    """A run's stored error (msgpack string)."""
    if not raw:
        return None
    value = decode_result(raw)
    return value if isinstance(value, str) else repr(value)
