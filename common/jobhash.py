"""RQ's job-hash layout of a run: `RunSpec` (validated by `build_run`), the job fields it
writes, our `sq` meta field, and reading `data` and `sq` back."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from sessionq.common import codec
from sessionq.common.errors import CodecError, ValidationError, ValidationTypeError
from sessionq.common.records import SCHEMA_VERSION
from sessionq.common.settings import MAX_PAYLOAD_BYTES
from sessionq.common.times import rq_time
from sessionq.common.validation import (
    BACKOFFS,
    MAX_TIMEOUT_S,
    check_encodable,
    check_env,
    check_int_range,
    check_positive,
    check_queue,
    func_name_of,
    split_args,
    type_error,
)
from sessionq.common.vocabulary import RQ_STATUS, TaskState

COMMAND_FUNC = "@command"  # the func name a command run carries in RQ's job data
_QUEUED, _QUEUED_STATUS = TaskState.QUEUED.value, RQ_STATUS[TaskState.QUEUED]


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
    # the longest name (characters) a run of it surely takes without packing its meta
    # (surely_fits), -1 when its meta must be packed to say (an env, or huge numbers)
    name_room: int = field(init=False, repr=False, compare=False)

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
        numbers = (self.cores or 0, self.ram or 0, self.gpu or 0, self.replica_count)
        if self.env or max(numbers) >= 2**64:  # (one that msgpack refuses: meta raises)
            room = -1
        else:  # (the meta of an empty name is at most _META_ROOM bytes: see surely_fits)
            room = max(-1, (MAX_PAYLOAD_BYTES - len(data) - _META_ROOM - 4) // 4)
        object.__setattr__(self, "name_room", room)

    @property
    def is_command(self) -> bool:
        return self.func is None

    def meta(self, name: str | None = None, prerun_fatal: bool | None = None) -> bytes:
        """Our part of the job hash (`sq` field): what RQ's fields do not say; `name` and
        `prerun_fatal` given replace the spec's own (a session names its runs as it adds
        them: no new spec, so the payload is not encoded again)."""
        return _meta(self.name if name is None else name, self._meta_key(prerun_fatal))

    def metas(self, names: Sequence[str], prerun_fatal: bool) -> list[bytes]:
        """meta(name, prerun_fatal) of each name, packed together (a batch of named runs)."""
        # the meta of an empty name around where the name goes: the map's "name" key (its
        # first such bytes: an env key "name" comes after it), then "" (0xa0)
        blank = codec.encode(_meta_wire("", self._meta_key(prerun_fatal)))
        at = blank.index(b"\xa4name\xa0") + 5
        head, tail = blank[:at], blank[at + 1 :]
        return [head + name + tail for name in codec.encode_each(names)]

    def surely_fits(self, name: str, prerun_fatal: bool) -> bool:
        """Does the run named `name` surely pass check_size, without packing its meta? (Its
        meta is the one of an empty name and the name's UTF-8, at most 4 bytes a character,
        with a longer header, at most 4 bytes more.) False: check_size must say."""
        if len(name) <= self.name_room or self.name_room >= 0:
            return len(name) <= self.name_room
        base = len(self.meta("", prerun_fatal))  # (an env, or a number msgpack refuses)
        return len(self.data) + base + 4 * len(name) + 4 <= MAX_PAYLOAD_BYTES

    def _meta_key(self, prerun_fatal: bool | None) -> _MetaKey:
        replica = (self.replica_id, self.replica_count) if self.replica_count != 1 else None
        env = tuple(self.env.items()) if self.env else ()
        fatal = self.prerun_fatal if prerun_fatal is None else prerun_fatal
        return _MetaKey(env, replica, self.cores, self.ram, self.gpu, fatal)

    def with_args(self, args: list[Any], field_name: str) -> bytes:
        """RQ's job `data` of this function run with other positional `args` (a fan-out's
        one item): encoded, not validated again; ValidationTypeError naming `field_name`."""
        try:
            return codec.encode([self.func, None, args, self.kwargs])
        except CodecError as exc:
            raise ValidationTypeError(field_name, f"not msgpack-serialisable: {exc}") from exc

    def with_each_args(self, arg_lists: Iterable[list[Any]], field_name: str) -> list[bytes]:
        """with_args of each of `arg_lists`, packed with one packer (a fan-out's items);
        ValidationTypeError naming `field_name` (not which one) when one cannot be."""
        try:
            return codec.encode_each([self.func, None, args, self.kwargs] for args in arg_lists)
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


class _MetaKey(NamedTuple):
    """What a run's meta says but its name: hashable, so that _meta can cache by it."""

    env: tuple[tuple[str, str], ...]
    replica: tuple[int, int] | None
    cores: float | None
    ram: float | None
    gpu: float | None
    prerun_fatal: bool


@functools.lru_cache(maxsize=1024)
def _meta(name: str, key: _MetaKey) -> bytes:
    """RunSpec.meta's bytes, cached: the runs of a batch mostly share theirs."""
    return codec.encode(_meta_wire(name, key))


def _meta_wire(name: str, key: _MetaKey) -> dict[str, Any]:
    """The `sq` field's map (see _meta)."""
    wire: dict[str, Any] = {"v": SCHEMA_VERSION, "name": name}
    if key.env:
        wire["env"] = dict(key.env)
    if key.replica is not None:
        wire["replica_id"], wire["replica_count"] = key.replica
    for field_name, value in (("cores", key.cores), ("ram", key.ram), ("gpu", key.gpu)):
        if value is not None:
            wire[field_name] = value
    if key.prerun_fatal:
        wire["prerun_fatal"] = True
    return wire


# the longest meta of an empty name and no env: numbers are packed in at most 9 bytes
_META_ROOM = len(codec.encode(_meta_wire("", _MetaKey((), (2**64 - 1,) * 2, 0.5, 0.5, 0.5, True))))


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
        "status": _QUEUED_STATUS,
        "state": _QUEUED,
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
        raise type_error("kwargs", "a mapping", kwargs)
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


# the types of a plain_spec's arguments (a spec of other ones is built each time: build_run)
SCALAR_TYPES = frozenset((str, int, float, type(None)))


@functools.lru_cache(maxsize=256, typed=True)  # (typed: retries=1.0 is refused every time)
def plain_spec(func: str, *scalars: Any) -> RunSpec:
    """The spec of a function run without arguments, named "task" (a run's name is given
    with its meta: RunSpec.meta(name)), from (queue, timeout, retries, retry_delay, backoff,
    cores, ram, gpu) of SCALAR_TYPES: validated once for all runs alike (a RunSpec is
    frozen; a batch of them then shares its job fields too)."""
    queue, timeout, retries, retry_delay, backoff, cores, ram, gpu = scalars
    return build_run(name="task", task=func, queue=queue, timeout=timeout, retries=retries,
                     retry_delay=retry_delay, backoff=backoff, cores=cores, ram=ram,
                     gpu=gpu)  # fmt: skip


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
