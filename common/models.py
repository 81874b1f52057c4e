"""Wire records - sessions, runs, tasks - with their validation (SPEC §2) and conversions."""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from sessionq.common import codec
from sessionq.common.errors import CodecError, ValidationError, ValidationTypeError
from sessionq.common.keys import COMMANDS_SUFFIX, CONTROL_QUEUE
from sessionq.common.settings import MAX_PAYLOAD_BYTES

SCHEMA_VERSION = 1
COMMAND_FUNC = "@command"  # the func name a command run carries in RQ's job data
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FUNC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_REPLICAS = 10_000
BACKOFFS = ("exponential", "fixed")
MAX_TIMEOUT_S = 2**31 - 1  # about 68 years: what RQ's job hash and timers can hold


class Status(StrEnum):
    """Session status (SPEC §2)."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    TERMINATING = "Terminating"
    STOPPED = "Stopped"
    COMPLETED = "Completed"
    FAILED = "Failed"


ENDED_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED})


class TaskState(StrEnum):
    """Task-run state (SPEC §2)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    HELD = "held"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Outcome(StrEnum):
    """How a run ended, as its worker reports it to run.lua's finish (Lua: OUTCOME)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # never began: unregistered function, missing command, bad job
    CANCELED = "canceled"
    REQUEUE = "requeue"  # given back unrun (the worker shut down)


class StepResult(StrEnum):
    """What run.lua's finish made of an outcome (Lua: STEP_RESULT)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"  # failed, and queued again for its next attempt
    REQUEUED = "requeued"
    CANCELED = "canceled"
    STALE = "stale"  # recovered, canceled or destroyed while it ran: not recorded


# -- time ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def iso_from_ms(ms: int | str | bytes | None) -> str | None:
    """ISO 8601 UTC string for epoch milliseconds (what records show); None stays None.
    Cached: a listing formats many equal times (sessions made by one create share theirs)."""
    if ms in (None, b"", ""):
        return None
    stamp = dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=16)
def rq_time(epoch_s: float) -> str:
    """RQ's own timestamp format for the fields of its job hash (cached: a batch of runs
    shares one time, and strftime was a tenth of adding a run)."""
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- validation ------------------------------------------------------------------------------
def _type_error(name: str, want: str, value: object) -> ValidationTypeError:
    return ValidationTypeError(name, f"expected {want}, got {type(value).__name__}")


def check_name(value: object, field_name: str = "name") -> str:
    if not isinstance(value, str):
        raise _type_error(field_name, "a string", value)
    if not NAME_RE.fullmatch(value):
        raise ValidationError(
            field_name,
            f"{value!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return value


def check_kind(value: object) -> str:
    if not isinstance(value, str):
        raise _type_error("kind", "a string", value)
    if not KIND_RE.fullmatch(value):
        raise ValidationError("kind", f"{value!r} must be a lowercase word (a-z, 0-9, '-')")
    return value


def check_queue(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error("queue", "a string", value)
    if not QUEUE_RE.fullmatch(value) or value.endswith(COMMANDS_SUFFIX) or value == CONTROL_QUEUE:
        raise ValidationError("queue", f"{value!r} is not a valid queue name")
    return value


def check_positive(
    value: object, field_name: str, *, integer: bool = False, maximum: float | None = None
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(field_name, "a number", value)
    if integer and not isinstance(value, int):
        raise _type_error(field_name, "an integer", value)
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(field_name, f"must be positive, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValidationError(field_name, f"must be at most {maximum:g}, got {value!r}")
    return value


def check_int_range(value: object, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(field_name, "an integer", value)
    if not low <= value <= high:
        raise ValidationError(field_name, f"must be {low}-{high}, got {value}")
    return value


def check_env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _type_error("env", "a mapping", value)
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_RE.fullmatch(key):
            raise ValidationError("env", f"{key!r} is not a valid environment variable name")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise _type_error(f"env[{key}]", "a string or number", val)
        out[key] = str(val)
    return out


def check_encodable(value: object, field_name: str) -> bytes:
    try:
        return codec.encode(value)
    except CodecError as exc:
        raise ValidationTypeError(field_name, f"not msgpack-serialisable: {exc}") from exc


def split_args(value: object, field_name: str = "args") -> list[Any]:
    """`args`: a string split as a shell would, or a list/tuple; None is no arguments."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValidationError(field_name, f"cannot split {value!r}: {exc}") from exc
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _type_error(field_name, "a string or a list", value)


def func_name_of(task: object) -> str:
    """The dotted name `"pkg.mod:func"` of a registered function (or that name given)."""
    if isinstance(task, str):
        if not FUNC_RE.fullmatch(task):
            raise ValidationError("task", f"{task!r} must look like 'package.module:function'")
        return task
    name = getattr(task, "__sessionq_name__", None)
    if isinstance(name, str):
        return name
    module, qual = getattr(task, "__module__", None), getattr(task, "__qualname__", None)
    if callable(task) and module and qual and "<" not in qual:
        return f"{module}:{qual}"
    raise _type_error("task", "a 'module:function' string or a module-level function", task)


# -- runs ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """One task run, validated: a registered function or a command, with its environment."""

    name: str
    func: str | None = None
    argv: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    replica_id: int = 1
    replica_count: int = 1
    queue: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float | None = None  # seconds before the first retry (then backoff)
    backoff: str = "exponential"
    cores: float | None = None
    ram: float | None = None
    gpu: float | None = None
    prerun_fatal: bool = False  # a failure before the body runs stops the session (SPEC §3)
    # RQ's job `data`, encoded once as the spec is made: that checks the arguments, and a
    # batch of runs then encodes each payload once (replace() makes it anew)
    data: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        payload: list[Any]
        if self.func is None:
            payload = [COMMAND_FUNC, None, self.argv, {}]
        else:
            payload = [self.func, None, self.args, self.kwargs]
        try:
            data = codec.encode(payload)
        except CodecError as exc:
            check_encodable(self.args, "args")  # raises, naming the argument at fault
            check_encodable(self.kwargs, "kwargs")
            raise ValidationTypeError("args", f"not msgpack-serialisable: {exc}") from exc
        object.__setattr__(self, "data", data)  # frozen: set once, here

    @property
    def is_command(self) -> bool:
        return self.func is None

    def meta(self, name: str | None = None, prerun_fatal: bool | None = None) -> bytes:
        """Our part of the job hash (`sq` field): what RQ's fields do not say; `name` and
        `prerun_fatal` given replace the spec's own (a session names its runs as it adds
        them: no new spec, so the payload is not encoded again)."""
        replica = (self.replica_id, self.replica_count) if self.replica_count != 1 else None
        env = tuple(self.env.items()) if self.env else ()
        return _meta(
            self.name if name is None else name, env, replica, self.cores, self.ram, self.gpu,
            self.prerun_fatal if prerun_fatal is None else prerun_fatal,
        )  # fmt: skip

    def with_args(self, args: list[Any], field_name: str) -> bytes:
        """RQ's job `data` of this function run with other positional `args` (a fan-out's
        one item): encoded, not validated again; ValidationTypeError naming `field_name`."""
        try:
            return codec.encode([self.func, None, args, self.kwargs])
        except CodecError as exc:
            raise ValidationTypeError(field_name, f"not msgpack-serialisable: {exc}") from exc

    def _too_big(self, total: int) -> ValidationError:
        """The run's payload is over MAX_PAYLOAD_BYTES: the error names the biggest of env,
        args and kwargs."""
        sizes = {
            "env": len(codec.encode(self.env or {})),
            "args": len(codec.encode(self.argv if self.is_command else self.args)),
            "kwargs": len(codec.encode(self.kwargs)),
        }
        big = max(sizes, key=lambda name: sizes[name])
        return ValidationError(
            big, f"{sizes[big]} bytes; one run's payload is {total} bytes, at most "
            f"{MAX_PAYLOAD_BYTES // 1024} KiB",
        )  # fmt: skip

    def job_fields(
        self, queue: str, now_s: float, extra: dict[str, Any] | None = None
    ) -> JobFields:
        """The job hash as RQ's readers expect it (only the fields that carry something),
        with `extra` fields of ours beyond RQ's."""
        meta = self.meta()
        self.check_size(meta)
        return JobFields(self.data, meta, self.shared_fields(queue, now_s), extra or None)

    def check_size(self, meta: bytes) -> None:
        """ValidationError (naming the biggest of env, args and kwargs) unless RQ's data and
        `meta` fit in MAX_PAYLOAD_BYTES."""
        if len(self.data) + len(meta) > MAX_PAYLOAD_BYTES:
            raise self._too_big(len(self.data) + len(meta))

    def shared_fields(self, queue: str, now_s: float) -> Mapping[str, Any]:
        """The job fields this run shares with runs alike queued at `now_s` (one object)."""
        return shared_job_fields(queue, now_s, self.timeout, self.retries, self.retry_delay,
                                 self.backoff)  # fmt: skip


def check_payload(data: bytes, meta: bytes, field_name: str) -> None:
    """One run's payload (RQ's data and our meta) fits MAX_PAYLOAD_BYTES; the error names
    `field_name` (a fan-out's item)."""
    if len(data) + len(meta) > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            field_name, f"one run's payload is {len(data) + len(meta)} bytes, at most "
            f"{MAX_PAYLOAD_BYTES // 1024} KiB",
        )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _meta(
    name: str,
    env: tuple[tuple[str, str], ...],
    replica: tuple[int, int] | None,
    cores: float | None,
    ram: float | None,
    gpu: float | None,
    prerun_fatal: bool,
) -> bytes:
    """RunSpec.meta's bytes, cached: the runs of a batch mostly share theirs."""
    wire: dict[str, Any] = {"v": SCHEMA_VERSION, "name": name}
    if env:
        wire["env"] = dict(env)
    if replica is not None:
        wire["replica_id"], wire["replica_count"] = replica
    for key, value in (("cores", cores), ("ram", ram), ("gpu", gpu)):
        if value is not None:
            wire[key] = value
    if prerun_fatal:
        wire["prerun_fatal"] = True
    return codec.encode(wire)


class JobFields(NamedTuple):
    """A run's job hash: RQ's `data` and our `sq`, the fields runs of a batch share (one
    object for them all, sent once), and extra fields of the run's own."""

    data: bytes
    sq: bytes
    shared: Mapping[str, Any]
    extra: dict[str, Any] | None = None


@functools.lru_cache(maxsize=64)
def shared_job_fields(
    queue: str, now_s: float, timeout: float | None, retries: int,
    retry_delay: float | None = None, backoff: str = "exponential",
) -> Mapping[str, Any]:  # fmt: skip
    """The job fields of a queued run that runs alike in these share: one read-only object
    for them all (cached), so that a batch sends it once."""
    fields: dict[str, Any] = {
        "origin": queue,
        "status": "queued",
        "state": TaskState.QUEUED.value,
        "enqueued_at": rq_time(now_s),
    }
    if timeout is not None:
        fields["timeout"] = int(math.ceil(timeout))
    if retries:
        fields["retries_left"] = retries
        fields["retries"] = retries  # what a restart gives back
        if retry_delay:  # a retry waits in the schedule (prelude.lua fail_or_retry)
            fields["retry_delay_ms"] = int(retry_delay * 1000)
            fields["backoff"] = backoff
    return MappingProxyType(fields)


def build_run(
    *,
    name: str,
    cmd: object = None,
    task: object = None,
    args: object = None,
    kwargs: object = None,
    env: object = None,
    queue: object = None,
    timeout: object = None,
    retries: object = 0,
    retry_delay: object = None,
    backoff: object = "exponential",
    cores: object = None,
    ram: object = None,
    gpu: object = None,
    replica_id: int = 1,
    replica_count: int = 1,
) -> RunSpec:
    """Validate one run's arguments; every error names its field."""
    if (cmd is None) == (task is None):
        raise ValidationError("cmd", "give exactly one of cmd (a command) or task (a function)")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise _type_error("kwargs", "a mapping", kwargs)
    retries_n = check_int_range(retries, "retries", 0, 1000)
    if backoff not in BACKOFFS:
        raise ValidationError("backoff", f"{backoff!r} is not one of {BACKOFFS}")
    spec_args = split_args(args)
    common_fields: dict[str, Any] = {
        "name": name,
        "env": check_env(env),
        "queue": check_queue(queue),
        "timeout": check_positive(timeout, "timeout", maximum=MAX_TIMEOUT_S),
        "retries": retries_n,
        "retry_delay": check_positive(retry_delay, "retry_delay", maximum=MAX_TIMEOUT_S),
        "backoff": backoff,
        "cores": check_positive(cores, "cores"),
        "ram": check_positive(ram, "ram"),
        "gpu": check_positive(gpu, "gpu"),
        "replica_id": replica_id,
        "replica_count": replica_count,
    }
    if cmd is not None:
        if kwargs:
            raise ValidationError("kwargs", "a command takes no kwargs")
        argv = split_args(cmd, "cmd") + spec_args
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise ValidationError("cmd", "must name a program; every argument a string")
        return RunSpec(argv=argv, **common_fields)
    kw = dict(kwargs or {})
    if not all(isinstance(k, str) for k in kw):
        raise ValidationTypeError("kwargs", "keys must be strings")
    return RunSpec(func=func_name_of(task), args=spec_args, kwargs=kw, **common_fields)


def parse_meta(raw: object) -> dict[str, Any]:
    """The `sq` field of a job hash; CodecError names the field when it is broken."""
    if not raw:
        raise CodecError("job field 'sq' is missing")
    meta = codec.decode_map(raw, "job field 'sq'")
    if meta.get("v") != SCHEMA_VERSION:
        raise CodecError(f"job field 'sq': unknown schema version {meta.get('v')!r}")
    return meta


def parse_job_data(raw: object) -> tuple[str, list[Any], dict[str, Any]]:
    """RQ's `data` field: (func name, args, kwargs); CodecError says what is wrong."""
    if not raw:
        raise CodecError("job field 'data' is missing")
    if isinstance(raw, bytes) and raw[:1] == b"\x78":  # zlib's header, never msgpack's array
        import zlib

        try:
            raw = zlib.decompress(raw)  # as RQ saves it (Job.save: `rq requeue`, Job.requeue)
        except zlib.error:
            pass
    try:
        value = codec.decode(raw)
    except CodecError as exc:
        raise CodecError(f"job field 'data': {exc}") from exc
    if not isinstance(value, list) or len(value) != 4:
        raise CodecError("job field 'data': expected [func, instance, args, kwargs]")
    func, _instance, args, kwargs = value
    if not isinstance(func, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        raise CodecError("job field 'data': func must be a string, args a list, kwargs a map")
    return func, args, kwargs


# -- sessions --------------------------------------------------------------------------------
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
    done = tasks["succeeded"] + tasks["failed"] + tasks["canceled"]
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


def _rq_time_ms(raw: bytes | str | None) -> str | None:
    """One of RQ's job times (microseconds) as records show times: ISO 8601, milliseconds."""
    if not raw:
        return None
    text = codec.text(raw)
    head, dot, tail = text.partition(".")
    if not dot or not tail.endswith("Z"):
        return text
    return f"{head}.{tail[:-1][:3].ljust(3, '0')}Z"


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
        "started_at": _rq_time_ms(started),
        "finished_at": _rq_time_ms(ended),
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


def names_for_replicas(name: str, replicas: int) -> list[str]:
    """CANFAR's naming: `name` for one replica, `name-1 ... name-N` for several."""
    if replicas == 1:
        return [name]
    return [f"{name}-{i}" for i in range(1, replicas + 1)]


def as_id_list(ids: str | Sequence[str], field_name: str = "ids") -> list[str]:
    """One id or a list of them, as CANFAR's calls take."""
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, Sequence) and all(isinstance(i, str) for i in ids):
        return list(ids)
    raise _type_error(field_name, "an id or a list of ids", ids)
