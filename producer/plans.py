"""The §2 calls without I/O: what each one sends to Redis and what it makes of the replies.

A plan is a generator. It validates its arguments, then yields steps - a `Batch` of commands
for one non-transactional pipeline, or a `ScriptCall` for one EVALSHA - and is sent each step's
reply, or has the step's RedisError raised where it yielded it (a lost or refusing Redis:
what the plan does not catch is the call's error); what it returns is the call's result.
`Client` carries plans out on redis-py and
`AsyncClient` on redis.asyncio, so both clients share every rule here: validation before
anything is written, the per-id logging, the shape of the records.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from redis.exceptions import RedisError

from sessionq.common import codec
from sessionq.common.canfarstyle import as_id_list, names_for_replicas
from sessionq.common.errors import CodecError, PartlyWritten, SessionqError, ValidationError
from sessionq.common.events import decode_event
from sessionq.common.jobhash import SCALAR_TYPES, JobFields, RunSpec, build_run, plain_spec
from sessionq.common.keys import DEFAULT_QUEUE, command_queue_for
from sessionq.common.records import (
    SessionRecord,
    decode_error,
    decode_result,
    parse_record,
    session_dict,
)
from sessionq.common.scripts import RunColumns, Scripts, reserved
from sessionq.common.validation import MAX_REPLICAS, check_int_range, check_kind, check_name
from sessionq.common.vocabulary import ENDED_STATUSES, Status, TaskState

log = logging.getLogger(__name__)
T = TypeVar("T")
REGEX_META = frozenset(".^$*+?{}[]()|")
VIEWS = (None, "all")
PRUNE_READ_BATCH = 1000  # session records read per HMGET (prune)
_QUEUED = TaskState.QUEUED.value  # (an enum member's value is a lookup of its own)


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command by its redis-py method name (the same on redis.asyncio)."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, *args: Any, **kwargs: Any) -> Command:
        return cls(method, args, kwargs)


def route_of(items: Sequence[Command | ScriptCall]) -> str | None:
    """The first key among a step's items (a command's first argument: a key, or a list of
    keys)."""
    for item in items:
        if isinstance(item, ScriptCall):
            if item.keys:
                return item.keys[0]
            continue
        first = item.args[0] if item.args else None
        if isinstance(first, (list, tuple)):
            first = first[0] if first else None
        if isinstance(first, str):
            return first
    return None


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands sent in one pipeline (no MULTI); the reply is the list of their replies."""

    commands: list[Command]

    @property
    def route(self) -> str | None:
        """The key that says which server takes the step (on a Redis Cluster, the master of
        its slot: the keys of one step share a slot)."""
        return route_of(self.commands)

    def queue_on(self, pipe: Any) -> Any:
        """Queue the commands on a pipeline (redis-py's or redis.asyncio's); the pipeline."""
        for command in self.commands:
            getattr(pipe, command.method)(*command.args, **command.kwargs)
        return pipe


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One Lua script of common.scripts by EVALSHA; the reply is the script's."""

    name: str
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Transaction:
    """Commands and script calls sent in one MULTI/EXEC; the reply is the list of their
    replies, an error among them as its exception (not raised). The carrier loads the scripts
    and sends it again when the server did not have them, and, when a script call is among
    them and nothing failed, waits for SESSIONQ_WAIT_REPLICAS replicas to have it."""

    items: list[Command | ScriptCall]

    @property
    def route(self) -> str | None:
        """As Batch.route."""
        return route_of(self.items)

    @property
    def has_scripts(self) -> bool:
        return any(isinstance(item, ScriptCall) for item in self.items)


Step = Batch | ScriptCall | Transaction
Plan = Generator[Step, Any, T]


def new_session_id() -> str:
    return secrets.token_hex(6)


def new_session_ids(n: int) -> list[str]:
    """n session ids as new_session_id makes them, from one draw of random bytes."""
    hexes = secrets.token_hex(6 * n)
    return [hexes[i : i + 12] for i in range(0, 12 * n, 12)]


def run_queue(spec: RunSpec) -> str:
    """The queue a run goes to: a command's to the command queue of its queue (only workers
    that run commands take them), a function's to its own; the default queue when none."""
    return run_queue_of(spec.queue, command=spec.is_command)


def run_queue_of(queue: str | None, *, command: bool) -> str:
    """run_queue of a run asking for `queue` (None: the default)."""
    return (command_queue_for(queue) if command else queue) or DEFAULT_QUEUE


def texts(reply: Sequence[Any]) -> list[Any]:
    """A script's reply with its bytes as text."""
    return [r.decode() if isinstance(r, bytes) else r for r in reply]


Gather = Callable[[Sequence[Any]], list[Any]]


def _read_by_partition(
    scripts: Scripts, method: str, key: Callable[[Scripts], str], items: Sequence[str],
    partition_of: Callable[[str], Scripts] | None = None,
) -> tuple[list[Command], Gather]:  # fmt: skip
    """One `method` (HMGET) of `items` per partition, on `key` of that partition (its sessions
    hash, its names hash), and what gives their replies back in the order of `items`. With
    one partition: the one command, its reply as it is."""
    if len(scripts.parts) == 1:
        return [Command.of(method, key(scripts), list(items))], lambda replies: replies[0]
    groups: dict[Scripts, list[str]] = {}
    for item in items:
        part = scripts.of(item) if partition_of is None else partition_of(item)
        groups.setdefault(part, []).append(item)
    commands = [Command.of(method, key(part), members) for part, members in groups.items()]

    def gather(replies: Sequence[Any]) -> list[Any]:
        found: dict[str, Any] = {}
        for members, reply in zip(groups.values(), replies, strict=True):
            found.update(zip(members, reply, strict=True))
        return [found[item] for item in items]

    return commands, gather


def session_records(scripts: Scripts, ids: Sequence[str]) -> tuple[list[Command], Gather]:
    """The HMGETs of the records of sessions `ids` (sessions hash), one per partition; what
    gives them back in the order of `ids`."""
    return _read_by_partition(scripts, "hmget", lambda part: part.keys.sessions(), ids)


def reserve(scripts: Scripts, sid: str, count: int) -> Plan[list[str]]:
    """`count` new task ids of session `sid` (reserve.lua: never handed out twice)."""
    last = yield ScriptCall("reserve", *scripts.reserve_call(sid, count))
    return reserved(sid, count, last)


def with_queues(scripts: Scripts, run_ids: Sequence[str]) -> Plan[list[tuple[str, str]]]:
    """[(run id, the queue it came from)] - what the scripts need to name its keys."""
    if not run_ids:
        return []
    origins = yield Batch([Command.of("hget", scripts.rq.job(r), "origin") for r in run_ids])
    return [
        (run_id, codec.text(origin) if origin else DEFAULT_QUEUE)
        for run_id, origin in zip(run_ids, origins, strict=True)
    ]


def owned(scripts: Scripts, ids: str | Sequence[str], what: str) -> Plan[dict[str, bool]]:
    """The ownership check of every call that changes sessions by id: id -> True for the
    caller's sessions; an unknown id, an unreadable record or another owner's session is
    logged (naming `what` was asked) and False."""
    user = scripts.settings.user
    id_list = as_id_list(ids)
    out: dict[str, bool] = {}
    if not id_list:
        return out
    commands, gather = session_records(scripts, id_list)
    raws = gather((yield Batch(commands)))
    for sid, raw in zip(id_list, raws, strict=True):
        out[sid] = False
        if raw is None:
            log.warning("%s: no such session: %s", what, sid)
            continue
        try:
            owner = parse_record(raw, sid).owner
        except CodecError as exc:
            log.error("%s: unreadable record: %s", what, exc)
            continue
        if owner != user:
            log.warning("%s: session %s belongs to %s, not %s", what, sid, owner, user)
            continue
        out[sid] = True
    return out


# -- create ------------------------------------------------------------------------------------
def create(
    scripts: Scripts,
    name: str,
    image: str | None = None,
    cores: float | None = None,
    ram: float | None = None,
    kind: str = "headless",
    gpu: float | None = None,
    cmd: str | Sequence[str] | None = None,
    args: str | Sequence[Any] | None = None,
    env: dict[str, Any] | None = None,
    replicas: int = 1,
    *,
    task: str | Callable[..., Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_delay: float | None = None,
    backoff: str = "exponential",
    written: list[str] | None = None,
) -> Plan[list[str]]:
    """`replicas` sessions of one run each, written by one enqueue script call; their ids.
    With several partitions, one call per partition: `written` gets the ids of each as it
    is written (for the error of a call that fails midway: see PartlyWritten)."""
    user = scripts.settings.user
    check_name(name)
    check_kind(kind)
    check_int_range(replicas, "replicas", 1, MAX_REPLICAS)
    if image is not None and not isinstance(image, str):
        raise ValidationError("image", f"expected a string, got {type(image).__name__}")
    if replicas == 1 and len(scripts.parts) == 1:
        return (yield from _create_one(scripts, name, image, cores, ram, kind, gpu, cmd, args,
                                       env, task, kwargs, queue, timeout, retries,
                                       retry_delay, backoff))  # fmt: skip
    names = [check_name(n) for n in names_for_replicas(name, replicas)]
    base = build_run(
        name=name, cmd=cmd, task=task, args=args, kwargs=kwargs, env=env, queue=queue,
        timeout=timeout, retries=retries, retry_delay=retry_delay, backoff=backoff, cores=cores,
        ram=ram, gpu=gpu, replica_count=replicas,
    )  # fmt: skip
    queue = run_queue(base)
    now = time.time()
    # one template per create, varied per replica (10,000 replicas: no per-replica objects)
    record = SessionRecord(
        id="", name=name, kind=kind, owner=user, created_at_ms=int(now * 1000), image=image,
        cores=base.cores, ram=base.ram, gpu=base.gpu, replica_count=replicas,
    ).to_wire()  # fmt: skip
    template = base.job_fields(queue, now)
    meta = codec.decode_map(template.sq, "job meta")
    if len(scripts.parts) == 1:
        ids = new_session_ids(replicas)
    else:
        ids = [scripts.layout.new_session_id() for _ in range(replicas)]

    def each_record() -> Iterator[dict[str, Any]]:
        for i, (sid, replica_name) in enumerate(zip(ids, names, strict=True)):
            record.update(id=sid, name=replica_name, replica_id=i + 1)
            yield record

    def each_meta() -> Iterator[dict[str, Any]]:
        numbered = "replica_count" in meta
        for i, replica_name in enumerate(names):
            meta["name"] = replica_name
            if numbered:
                meta["replica_id"] = i + 1
            yield meta

    # (the template changed and packed in turn, by one packer: encode_each)
    records, metas = codec.encode_each(each_record()), codec.encode_each(each_meta())
    sessions = [(sid, True, rec, replica_name, kind, user)
                for sid, rec, replica_name in zip(ids, records, names, strict=True)]  # fmt: skip
    # the runs as columns (enqueue_call): what the replicas' runs share, one object for all
    n = replicas
    runs = RunColumns(range(n), [f"{sid}-1" for sid in ids], names, [_QUEUED] * n, [queue] * n,
                      [template.data] * n, metas, [template.shared] * n, [None] * n,
                      [None] * n)  # fmt: skip
    retention_ms = max(1, int(scripts.settings.retention_s * 1000))
    if len(scripts.parts) == 1:
        yield ScriptCall("enqueue", *scripts.enqueue_call(sessions, runs, now=now,
                                                          retention_ms=retention_ms))  # fmt: skip
    else:
        run_tuples = [(i, rid, rname, state, q, JobFields(data, sq, shared, extra), options)
                      for i, rid, rname, state, q, data, sq, shared, extra, options
                      in zip(*runs, strict=True)]  # fmt: skip
        yield from _create_by_partition(scripts, sessions, run_tuples, now, retention_ms,
                                        [] if written is None else written)  # fmt: skip
    log.debug("created %d %s session(s) %s", replicas, kind, ids[:3])
    return ids


def _create_one(
    scripts: Scripts, name: str, image: str | None, cores: Any, ram: Any, kind: str, gpu: Any,
    cmd: Any, args: Any, env: Any, task: Any, kwargs: Any, queue: Any, timeout: Any,
    retries: Any, retry_delay: Any, backoff: Any,
) -> Plan[list[str]]:  # fmt: skip
    """create() of one session of one run on one partition (its arguments but these checked):
    the commonest call, one at a time, with what is the same from call to call made once - a
    function run without arguments validated once (plain_spec), the script call laid out from
    pieces, to create.lua: enqueue.lua's writes for one session of one run, without its
    general path."""
    scalars = (queue, timeout, retries, retry_delay, backoff, cores, ram, gpu)
    if (type(task) is str and cmd is None and args is None and kwargs is None and env is None
            and SCALAR_TYPES.issuperset(map(type, scalars))):  # fmt: skip
        spec = plain_spec(task, *scalars)
    else:
        spec = build_run(name=name, cmd=cmd, task=task, args=args, kwargs=kwargs, env=env,
                         queue=queue, timeout=timeout, retries=retries,
                         retry_delay=retry_delay, backoff=backoff, cores=cores, ram=ram,
                         gpu=gpu)  # fmt: skip
    meta = spec.meta(name)
    spec.check_size(meta)
    run_queue_name = run_queue(spec)
    now = time.time()
    sid = new_session_id()
    user = scripts.settings.user
    record = {**_record_of(kind, user, image, spec.cores, spec.ram, spec.gpu), "id": sid,
              "name": name, "created_at": int(now * 1000)}  # fmt: skip
    fields = JobFields(spec.data, meta, spec.shared_fields(run_queue_name, now))
    run = (0, f"{sid}-1", name, _QUEUED, run_queue_name, fields, None)
    retention_ms = max(1, int(scripts.settings.retention_s * 1000))
    session = (sid, True, codec.encode(record), name, kind, user)
    yield ScriptCall("create", *scripts.create_call(session, run, now, retention_ms))
    log.debug("created 1 %s session %s", kind, sid)
    return [sid]


@functools.lru_cache(maxsize=256, typed=True)  # (typed: cores=1 and 1.0 are packed apart)
def _record_of(
    kind: str, owner: str, image: str | None, cores: float | None, ram: float | None,
    gpu: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The wire record of a session of one replica made by create() but its id, name and
    creation time (_create_one sets them in a copy): one per kind, owner and resources."""
    return SessionRecord(id="", name="", kind=kind, owner=owner, created_at_ms=0, image=image,
                         cores=cores, ram=ram, gpu=gpu).to_wire()  # fmt: skip


class partly_written:  # noqa: N801 - a context manager, named as one is used
    """Around a create(): an error after `written` got ids (several partitions, one call
    each) is raised as PartlyWritten naming them. (A class: cheaper than contextmanager's
    generator on the path of every create.)"""

    __slots__ = ("written",)

    def __init__(self, written: list[str]) -> None:
        self.written = written

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.written and isinstance(exc, (RedisError, SessionqError)):
            raise PartlyWritten(self.written, exc) from exc


def _create_by_partition(
    scripts: Scripts, sessions: list[Any], runs: list[Any], now: float, retention_ms: int,
    written: list[str],
) -> Plan[None]:  # fmt: skip
    """create()'s sessions written partition by partition, one enqueue call each: atomic per
    partition (a slot of a cluster, SPEC §9); `written` gets each partition's ids once they
    are written."""
    for part, sids in scripts.grouped([s[0] for s in sessions]):
        mine = set(sids)
        index = [i for i, s in enumerate(sessions) if s[0] in mine]
        renumber = {old: new for new, old in enumerate(index)}
        part_runs = [(renumber[r[0]], *r[1:]) for r in runs if r[0] in renumber]
        call = part.enqueue_call([sessions[i] for i in index], part_runs, now=now,
                                 retention_ms=retention_ms)  # fmt: skip
        yield ScriptCall("enqueue", *call)
        written += sids


# -- names and ids ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session a reference (an id or a name) named, with what a command checks first."""

    id: str
    name: str
    owner: str
    status: str
    persistent: bool


@dataclass(frozen=True, slots=True)
class Resolved:
    """References to sessions resolved: `found` by reference, in the order given, and the
    references that named no session."""

    found: dict[str, SessionRef]
    missing: list[str]

    @property
    def ids(self) -> list[str]:
        """The ids found, each once, in the order given."""
        return list(dict.fromkeys(ref.id for ref in self.found.values()))


def resolve(scripts: Scripts, refs: str | Sequence[str]) -> Plan[Resolved]:
    """Each reference as a session: an id (anyone's), else the caller's persistent session of
    that name, else the caller's create()-made sessions of that name (ValidationError naming
    the ids when more than one has it). The one place where names become ids."""
    k, user = scripts.keys, scripts.settings.user
    refs = list(dict.fromkeys(as_id_list(refs)))
    if not refs:
        return Resolved({}, [])
    by_ids, gather_ids = session_records(scripts, refs)
    # a persistent session's name is claimed in its partition (keys.Layout.partition_of_name)
    by_names, gather_names = _read_by_partition(
        scripts, "hmget", lambda part: part.keys.names(), [f"{user}/{ref}" for ref in refs],
        lambda field: scripts.parts[scripts.layout.partition_of_name(*field.split("/", 1))],
    )  # fmt: skip
    replies = yield Batch(by_ids + by_names)
    by_id, by_name = gather_ids(replies[: len(by_ids)]), gather_names(replies[len(by_ids) :])
    ids: dict[str, str] = {}
    for ref, raw, named in zip(refs, by_id, by_name, strict=True):
        if raw is not None:
            ids[ref] = ref
        elif named is not None:
            ids[ref] = codec.text(named)
    if len(ids) < len(refs):
        owned = yield from _owned_by_name(scripts, user)
        for ref in refs:
            if ref in ids or ref not in owned:
                continue
            if len(owned[ref]) > 1:
                raise ValidationError(
                    "session", f"{len(owned[ref])} of your sessions are named {ref!r} "
                    f"({', '.join(owned[ref])}): give an id",
                )  # fmt: skip
            ids[ref] = owned[ref][0]
    wanted = list(dict.fromkeys(ids.values()))
    if not wanted:
        return Resolved({}, refs)
    reads, gather = session_records(scripts, wanted)
    replies = yield Batch(reads + [Command.of("hget", k.session(sid), "status") for sid in wanted])
    refs_by_id: dict[str, SessionRef] = {}
    statuses = replies[len(reads) :]
    for sid, raw, status in zip(wanted, gather(replies[: len(reads)]), statuses, strict=True):
        if raw is None:  # destroyed meanwhile
            continue
        try:
            record = parse_record(raw, sid)
        except CodecError as exc:
            log.error("unreadable record: %s", exc)
            continue
        refs_by_id[sid] = SessionRef(
            id=sid, name=record.name, owner=record.owner, persistent=record.persistent,
            status=codec.text(status) if status else Status.PENDING.value,
        )  # fmt: skip
    found = {ref: refs_by_id[ids[ref]] for ref in refs if ids.get(ref) in refs_by_id}
    return Resolved(found, [ref for ref in refs if ref not in found])


def _owned_by_name(scripts: Scripts, user: str) -> Plan[dict[str, list[str]]]:
    """name -> ids of the caller's sessions (oldest first), read from the owner index."""
    found = yield Batch([Command.of("smembers", p.keys.idx_owner(user)) for p in scripts.parts])
    owned = sorted(codec.text(m) for members in found for m in members)
    if not owned:
        return {}
    reads, gather = session_records(scripts, owned)
    raws = gather((yield Batch(reads)))
    records = []
    for sid, raw in zip(owned, raws, strict=True):
        if raw is None:
            continue
        try:
            records.append(parse_record(raw, sid))
        except CodecError as exc:
            log.error("unreadable record: %s", exc)
    out: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda r: (r.created_at_ms, r.id)):
        out.setdefault(record.name, []).append(record.id)
    return out


# -- read --------------------------------------------------------------------------------------
def records(
    scripts: Scripts, ids: Sequence[str], *, quiet: bool = False
) -> Plan[list[dict[str, Any]]]:
    """Public records of the ids that exist, in the given order; the rest are logged."""
    if not ids:
        return []
    k, rq = scripts.keys, scripts.rq
    # the records in one HMGET: a command less per session (fetch returns many)
    reads, gather = session_records(scripts, ids)
    commands = [Command.of("get", k.dashboard()), *reads]
    for sid in ids:
        commands += [
            Command.of("hgetall", k.session(sid)),
            Command.of("hmget", rq.job(f"{sid}-1"), "result", "error"),
        ]
    replies = yield Batch(commands)
    base = replies[0].decode() if replies[0] else None
    out = []
    first = 1 + len(reads)
    for n, (sid, raw) in enumerate(zip(ids, gather(replies[1:first]), strict=True)):
        state, (result, error) = replies[first + 2 * n : first + 2 + 2 * n]
        if raw is None:
            if not quiet:
                log.warning("no such session: %s", sid)
            continue
        try:
            record = parse_record(raw, sid)
        except CodecError as exc:
            log.error("unreadable record: %s", exc)
            continue
        url = f"{base.rstrip('/')}/sessions/{sid}" if base else None
        out.append(
            session_dict(record, state, result=decode_result(result),
                         error=decode_error(error), connect_url=url)
        )  # fmt: skip
    return out


def info(scripts: Scripts, ids: str | Sequence[str]) -> Plan[list[dict[str, Any]]]:
    """The session records; unknown ids are left out and logged."""
    return (yield from records(scripts, as_id_list(ids)))


def fetch(
    scripts: Scripts, kind: str | None = None, status: str | None = None, view: str | None = None
) -> Plan[list[dict[str, Any]]]:
    """The caller's sessions (every user's with view="all"), filtered by kind and status;
    answered from the index sets, not a scan."""
    if view not in VIEWS:
        raise ValidationError("view", f"{view!r} must be None or 'all'")
    if kind is not None:
        kind = check_kind(kind)
    if status is not None and status not in Status.__members__.values():
        raise ValidationError(
            "status", f"{status!r} is not one of {', '.join(s.value for s in Status)}"
        )
    queries = []
    for part in scripts.parts:  # (one partition's index sets at a time)
        k, sets = part.keys, []
        if view != "all":
            sets.append(k.idx_owner(scripts.settings.user))
        if kind is not None:
            sets.append(k.idx_kind(kind))
        if status is not None:
            sets.append(k.idx_status(status))
        queries.append(Command.of("sinter", sets) if sets else Command.of("hkeys", k.sessions()))
    ids = sorted(codec.text(i) for raw_ids in (yield Batch(queries)) for i in raw_ids)
    found = yield from records(scripts, ids, quiet=True)
    found.sort(key=lambda r: (r["created_at"] or "", r["name"]))
    return found


def prune_candidates(
    scripts: Scripts, older_than: float | None = None, view: str | None = None
) -> Plan[list[str]]:
    """The sessions `prune` removes: the caller's (every user's with view="all") ended
    sessions made by create() - with `older_than`, those ended at least that many seconds
    ago - from the index sets (the removal checks again that each has ended)."""
    if view not in VIEWS:
        raise ValidationError("view", f"{view!r} must be None or 'all'")
    if older_than is not None and (
        isinstance(older_than, bool) or not isinstance(older_than, (int, float))
        or not 0 <= older_than < float("inf")
    ):  # fmt: skip
        raise ValidationError("older_than", f"must be seconds >= 0 or None, got {older_than!r}")
    queries = []
    for part in scripts.parts:
        owner = part.keys.idx_owner(scripts.settings.user)
        ended = [part.keys.idx_status(status) for status in sorted(ENDED_STATUSES)]
        queries += [Command.of("smembers", key) if view == "all"
                    else Command.of("sinter", [owner, key]) for key in ended]  # fmt: skip
    ids = sorted({codec.text(i) for found in (yield Batch(queries)) for i in found})
    if not ids:
        return []
    chunks = [session_records(scripts, ids[at : at + PRUNE_READ_BATCH])
              for at in range(0, len(ids), PRUNE_READ_BATCH)]  # fmt: skip
    commands = [command for reads, _ in chunks for command in reads]
    nreads = len(commands)
    commands += [Command.of("hget", scripts.keys.session(sid), "finished_at") for sid in ids]
    replies = yield Batch(commands)
    raws, at = [], 0
    for reads, gather in chunks:
        raws += gather(replies[at : at + len(reads)])
        at += len(reads)
    finished = replies[nreads:]
    before_ms = None if older_than is None else (time.time() - older_than) * 1000
    out = []
    for sid, raw, ended_ms in zip(ids, raws, finished, strict=True):
        try:
            if raw is None or parse_record(raw, sid).persistent:
                continue
        except CodecError as exc:
            log.error("prune: %s", exc)
            continue
        if before_ms is not None and (ended_ms is None or int(ended_ms) > before_ms):
            continue
        out.append(sid)
    return out


def served_queues(scripts: Scripts) -> Plan[set[str]]:
    """The queues the live workers serve (their RQ worker records' `queues`)."""
    ask = Command.of("zrange", scripts.gkeys.workers(), 0, -1, withscores=True)
    now, workers = yield Batch([Command.of("time"), ask])
    live = live_workers(scripts, now, workers)
    rows = yield Batch([Command.of("hget", scripts.grq.worker(w), "queues") for w in live])
    return {q for row in rows if row for q in codec.text(row).split(",") if q}


def live_workers(scripts: Scripts, now: Any, workers: list[tuple[bytes, float]]) -> list[str]:
    """The workers (a ZRANGE WITHSCORES of the workers zset) whose heartbeat is fresh by
    Redis's clock (`now`, TIME's reply), as the heartbeats are stamped."""
    deadline_ms = (int(now[0]) + int(now[1]) / 1e6 - scripts.settings.heartbeat_ttl_s) * 1000
    return [name.decode() for name, score in workers if score >= deadline_ms]


def stats(scripts: Scripts) -> Plan[dict[str, Any]]:
    """Sessions by status, runs by state, queue depths, workers, cores and ram, and the largest
    live worker by cores and by ram (what CANFAR's stats() calls maxCores and maxRAM)."""
    # each partition's counters and indexes (one of each with one partition), summed
    commands = [Command.of("zrange", scripts.gkeys.workers(), 0, -1, withscores=True)]
    for part in scripts.parts:
        k = part.keys
        commands += [Command.of("scard", k.idx_status(status.value)) for status in Status]
        commands += [
            Command.of("hgetall", k.run_counts()),
            Command.of("smembers", part.rq.queues_set),
            Command.of("smembers", k.idx_status(Status.RUNNING.value)),
            Command.of("hgetall", k.queue_depths()),
        ]
    commands.append(Command.of("time"))  # (live workers are judged by Redis's clock)
    replies = yield Batch(commands)
    workers = replies[0]
    sessions = dict.fromkeys((s.value for s in Status), 0)
    counts: dict[str, int] = {}
    depths: dict[str, int] = {}
    queue_keys: list[tuple[str, str]] = []  # (queue name, its key in a partition)
    running: list[tuple[Scripts, str]] = []
    at = 1
    for part in scripts.parts:
        for s, n in zip(Status, replies[at : at + len(Status)], strict=True):
            sessions[s.value] += int(n)
        at += len(Status)
        for key, v in replies[at].items():
            counts[key.decode()] = counts.get(key.decode(), 0) + int(v)
        prefix = part.rq.queue("")
        queue_keys += sorted((q.decode()[len(prefix) :], q.decode()) for q in replies[at + 1])
        running += [(part, i.decode()) for i in replies[at + 2]]
        depths.update({key.decode(): max(0, int(n)) for key, n in replies[at + 3].items()})
        at += 4
    live = live_workers(scripts, replies[-1], workers)
    commands = [Command.of("llen", qk) for _, qk in queue_keys]
    commands += [Command.of("hmget", scripts.grq.worker(w), "current_job", "cores", "ram")
                 for w in live]  # fmt: skip
    commands += [Command.of("hget", part.keys.sessions(), sid) for part, sid in running]
    spread = len(scripts.parts) > 1  # (a worker's current run: in its partition's RQ hash)
    currents = [Command.of("hget", part.rq.worker(w), "current_job")
                for w in live for part in scripts.parts] if spread else []  # fmt: skip
    replies = yield Batch(commands + currents)
    if spread:
        replies, found = replies[: len(commands)], replies[len(commands) :]
        current = [any(found[i * len(scripts.parts) : (i + 1) * len(scripts.parts)])
                   for i in range(len(live))]  # fmt: skip
    # runs waiting: a queue's line holds one per session (fair share), its depth counts all;
    # the control queue's operations are in its list
    queues: dict[str, int] = {}
    for (name, qk), n in zip(queue_keys, replies, strict=False):
        queues[name] = queues.get(name, 0) + depths.get(qk, int(n))
    worker_rows = replies[len(queue_keys) : len(queue_keys) + len(live)]
    busy = sum(1 for row in worker_rows if row[0]) if not spread else sum(current)
    offers = [(float(row[1] or 0), float(row[2] or 0)) for row in worker_rows]
    offered_cores = sum(cores for cores, _ in offers)
    offered_ram = sum(ram for _, ram in offers)
    # the largest worker by cores (and its ram), by ram (and its cores): CANFAR's maxCores/maxRAM
    most_cores = max(offers, default=(0.0, 0.0))
    most_ram = max(offers, key=lambda offer: (offer[1], offer[0]), default=(0.0, 0.0))
    req_cores = req_ram = 0.0
    for raw in replies[len(queue_keys) + len(live) :]:
        if raw:
            try:
                record = parse_record(raw, "(running)")
            except CodecError as exc:
                log.error("stats: unreadable record: %s", exc)
                continue
            req_cores += float(record.cores or 0)
            req_ram += float(record.ram or 0)
    return {
        "sessions": sessions,
        "tasks": {s.value: counts.get(s.value, 0) for s in TaskState},
        "queues": queues,
        "workers": {"count": len(live), "busy": busy},
        "cores": {"requested": req_cores, "available": offered_cores},
        "ram": {"requested": req_ram, "available": offered_ram},
        "max_cores": {"cores": most_cores[0], "with_ram": most_cores[1]},
        "max_ram": {"ram": most_ram[1], "with_cores": most_ram[0]},
    }


def logs(
    scripts: Scripts, ids: str | Sequence[str], verbose: bool = False
) -> Plan[dict[str, str] | None]:
    """id -> the session's captured output and task log lines, in order."""
    k = scripts.keys
    ids = as_id_list(ids)
    commands = []
    for sid in ids:
        commands.append(Command.of("hexists", scripts.of(sid).keys.sessions(), sid))
        commands.append(Command.of("lrange", k.logs(sid), 0, -1))
    replies = yield Batch(commands)
    out: dict[str, str] = {}
    for n, sid in enumerate(ids):
        exists, entries = replies[2 * n], replies[2 * n + 1]
        if not exists:
            log.warning("no such session: %s", sid)
            continue
        out[sid] = format_log_lines(entries)
    if verbose:
        for sid, text in out.items():
            click.echo(f"== {sid}")
            click.echo(text, nl=False)
        return None
    return out


def events(
    scripts: Scripts, ids: str | Sequence[str], verbose: bool = False
) -> Plan[list[dict[str, Any]] | None]:
    """The sessions' kept events, oldest first (session by session, in the order given)."""
    ids = as_id_list(ids)
    replies = yield Batch([Command.of("zrange", scripts.keys.history(sid), 0, -1) for sid in ids])
    out: list[dict[str, Any]] = []
    for sid, raws in zip(ids, replies, strict=True):
        if not raws:
            log.warning("no events kept for session %s", sid)
        out.extend(decode_events(raws))
    if verbose:
        for event in out:
            click.echo(format_event(event))
        return None
    return out


def seqs(scripts: Scripts, ids: Sequence[str]) -> Plan[list[int]]:
    """The last event seq of each session (0 for none), in the order given."""
    if not ids:
        return []
    replies = yield Batch([Command.of("hget", scripts.keys.session(sid), "seq") for sid in ids])
    return [int(seq or 0) for seq in replies]


def history_after(scripts: Scripts, sid: str, after: int) -> Plan[list[dict[str, Any]]]:
    """The kept events of one session with seq > after, oldest first."""
    (raws,) = yield Batch([Command.of("zrangebyscore", scripts.keys.history(sid), f"({after}",
                                      "+inf")])  # fmt: skip
    return list(decode_events(raws))


# -- destroy -----------------------------------------------------------------------------------
def destroy(scripts: Scripts, ids: str | Sequence[str]) -> Plan[dict[str, bool]]:
    """id -> accepted; workers cancel queued runs, stop running ones, then delete it all."""
    out = yield from owned(scripts, ids, "destroy")
    for sid, mine in out.items():
        if not mine:
            continue
        call = scripts.request_call(sid, "destroy", [sid], status=Status.TERMINATING.value)
        out[sid] = bool((yield ScriptCall("request", *call)))
        if out[sid]:
            # the control queue may wait behind busy workers: tell those running it now
            yield from stop_running(scripts, sid)
    return out


def stop_running(scripts: Scripts, sid: str) -> Plan[None]:
    """Send RQ's stop-job command to the workers running this session's runs."""
    (members,) = yield Batch([Command.of("smembers", scripts.keys.session_running(sid))])
    run_ids = [codec.text(r) for r in members]
    if not run_ids:
        return
    holders = yield Batch([Command.of("hget", scripts.rq.job(r), "worker_name") for r in run_ids])
    sends = _Publishes()
    for run_id, holder in zip(run_ids, holders, strict=True):
        if holder:
            _rq_send_command(sends, holder.decode(), "stop-job", job_id=run_id)
    if sends:
        yield Batch(list(sends))


class _Publishes(list[Command]):
    """Stands in for a connection to RQ's `send_command`, so that the channel and payload of a
    worker command stay RQ's own while a client of either kind sends them."""

    def publish(self, channel: str, message: str) -> None:
        self.append(Command.of("publish", channel, message))


def _rq_send_command(sends: _Publishes, worker: str, command: str, **options: Any) -> None:
    from rq.command import send_command

    # send_command wants a Redis; it only calls .publish(channel, message) on it
    send_command(sends, worker, command, **options)  # type: ignore[arg-type]  # duck-typed Redis


def destroy_with(
    scripts: Scripts, prefix: str, *, kind: str = "headless", status: str = Status.COMPLETED
) -> Plan[dict[str, bool]]:
    """Destroy sessions whose name starts with `prefix`, or matches it as a regex when it
    has regex metacharacters; a bad regex is a ValueError."""
    if not isinstance(prefix, str) or not prefix:
        raise ValidationError("prefix", "must be a non-empty string")
    try:
        if REGEX_META.intersection(prefix):
            log.info("destroy_with using regex pattern: %s", prefix)
            regex = re.compile(prefix)
        else:
            regex = re.compile(rf"^{re.escape(prefix)}")
    except re.error as exc:
        raise ValidationError("prefix", f"invalid regex {prefix!r}: {exc}") from exc
    sessions = yield from fetch(scripts, kind=kind, status=status)
    return (yield from destroy(scripts, [s["id"] for s in sessions if regex.search(s["name"])]))


# -- text --------------------------------------------------------------------------------------
def decode_events(raws: Sequence[Any]) -> Iterator[dict[str, Any]]:
    for raw in raws:
        try:
            yield decode_event(raw)
        except CodecError as exc:
            log.error("skipping an undecodable event: %s", exc)


def format_log_lines(entries: Sequence[Any]) -> str:
    """Log entries as text: bare lines for one run, `[task] line` when several runs wrote."""
    rows = []
    for raw in entries:
        try:
            entry = codec.decode_map(raw, "log entry")
        except CodecError as exc:
            rows.append((None, f"<undecodable log entry: {exc}>"))
            continue
        rows.append((entry.get("task"), str(entry.get("line", ""))))
    many = len({task for task, _ in rows}) > 1
    return "".join(f"[{task}] {line}\n" if many else f"{line}\n" for task, line in rows)


def format_event(event: dict[str, Any]) -> str:
    """One event as a line of text."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    where = event["session"] + (f"/{event['task']}" if event.get("task") else "")
    data = " ".join(f"{k}={v}" for k, v in (event.get("data") or {}).items())
    return f"{stamp} #{event['seq']:<4} {event['type']:<18} {where} {data}".rstrip()
