"""Persistent sessions by name (SPEC §3) as plans: open one (created when missing, its stored
config replaced by a given one) and add validated runs to one. `Client` and `AsyncClient`
carry out the same plans (producer.plans has what a plan is)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sessionq.common import codec
from sessionq.common.errors import SessionNotFound
from sessionq.common.jobhash import RunSpec
from sessionq.common.records import SessionRecord
from sessionq.common.scripts import Scripts
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.validation import check_kind, check_name
from sessionq.common.vocabulary import ENDED_STATUSES, TaskState
from sessionq.producer import control
from sessionq.producer.plans import (
    Batch,
    Command,
    Plan,
    ScriptCall,
    new_session_id,
    reserve,
    run_queue,
    texts,
)

DEFAULT_SESSION_NAME = "default"
PERSISTENT_KIND = "session"


@dataclass(frozen=True, slots=True)
class Opened:
    """A persistent session opened by name: what a handle on it starts from."""

    id: str
    name: str
    config: SessionConfig
    created_at_ms: int
    rpc_log: bool


def open_id(
    scripts: Scripts, name: str, config: SessionConfig | None, create: bool,
    *, kind: str = PERSISTENT_KIND,
) -> Plan[tuple[str, bool]]:  # fmt: skip
    """(id, created now) of the caller's persistent session `name`; NotFound when it is
    missing and not `create`."""
    user = scripts.settings.user
    check_name(name)
    check_kind(kind)
    field = f"{user}/{name}"
    # its name is claimed in the partition its owner and name say (one with one partition)
    partition = scripts.layout.partition_of_name(user, name)
    home = scripts.parts[partition]
    (existing,) = yield Batch([Command.of("hget", home.keys.names(), field)])
    if existing is not None:
        return codec.text(existing), False
    if not create:
        raise SessionNotFound(f"{name} (owner {user})")
    sid = new_session_id() if len(scripts.parts) == 1 else scripts.layout.new_session_id(partition)
    record = SessionRecord(
        id=sid, name=name, kind=kind, owner=user, created_at_ms=int(time.time() * 1000),
        persistent=True, config=(config or SessionConfig()).to_wire(),
    )  # fmt: skip
    # the name is claimed in the step that creates the session: a process opening it at
    # the same time finds both or neither
    call = home.enqueue_call([(sid, True, codec.encode(record.to_wire()), name, kind, user)],
                                [], claim=field,
                                retention_ms=(config or SessionConfig()).retention_ms)  # fmt: skip
    reply = texts((yield ScriptCall("enqueue", *call)))
    if reply and reply[0] == "named":
        return str(reply[1]), False  # another process won
    return sid, True


def open_session(
    scripts: Scripts, name: str | None, config: SessionConfig | None, create: bool
) -> Plan[Opened]:
    """The caller's persistent session `name` (None: the default one), created when missing
    unless not `create` (then NotFound). A config given is stored with the session (replacing
    the stored one); else the stored one applies. A session created paused-by-config
    (autoplay False) is paused before this returns."""
    sid, created = yield from open_id(scripts, DEFAULT_SESSION_NAME if name is None else name,
                                      config, create)  # fmt: skip
    k = scripts.of(sid).keys
    raw, rpc_log = yield Batch([Command.of("hget", k.sessions(), sid),
                                Command.of("hget", k.session(sid), "rpc_log")])  # fmt: skip
    if raw is None:
        raise SessionNotFound(sid)
    record = SessionRecord.from_wire(codec.decode_map(raw, f"session {sid}"))
    writes = []
    if config is not None and not created and record.config != config.to_wire():
        record = replace(record, config=config.to_wire())
        writes.append(Command.of("hset", k.sessions(), sid, codec.encode(record.to_wire())))
        writes += yield from keep_for(scripts, sid, config.retention_ms)
    cfg = SessionConfig.from_wire(record.config)
    # the cap the claim script reads (run.lua, prelude `room`), kept with the session
    if cfg.max_running is not None:
        writes.append(Command.of("hset", k.session(sid), "max_running", cfg.max_running))
    elif not created:
        writes.append(Command.of("hdel", k.session(sid), "max_running"))
    if writes:
        yield Batch(writes)
    if created and not cfg.autoplay:
        yield from control.pause(scripts, sid)
    return Opened(sid, record.name, cfg, record.created_at_ms, bool(rpc_log))


def keep_for(scripts: Scripts, sid: str, retention_ms: int | None) -> Plan[list[Command]]:
    """The writes of a persistent session's new retention (SessionConfig.retention_s), kept in
    its hash for the scripts that end it; if it has ended already, due that long after its
    end. (The removal itself checks again that it has ended: remove_ended.)"""
    k = scripts.of(sid).keys
    if retention_ms is None:
        return [Command.of("hdel", k.session(sid), "retention_ms"),
                Command.of("zrem", k.retention(), sid)]  # fmt: skip
    status, finished = (yield Batch([Command.of("hmget", k.session(sid), "status",
                                                "finished_at")]))[0]  # fmt: skip
    writes = [Command.of("hset", k.session(sid), "retention_ms", retention_ms)]
    if status is not None and codec.text(status) in ENDED_STATUSES:
        due = int(finished or time.time() * 1000) + retention_ms
        writes.append(Command.of("zadd", k.retention(), {sid: due}))
    return writes


def add_runs(
    scripts: Scripts, sid: str, specs: Sequence[RunSpec], *, state: str = TaskState.QUEUED
) -> Plan[list[str]]:
    """Add validated runs to an existing session in one atomic step; their ids."""
    if not specs:
        return []
    ids = yield from reserve(scripts, sid, len(specs))
    now = time.time()
    runs = []
    for tid, spec in zip(ids, specs, strict=True):
        queue = run_queue(spec)
        runs.append((0, tid, spec.name, str(state), queue,
                     spec.job_fields(queue, now), None))  # fmt: skip
    call = scripts.enqueue_call([(sid, False, b"", "", PERSISTENT_KIND, scripts.settings.user)],
                                runs, now=now)  # fmt: skip
    reply = texts((yield ScriptCall("enqueue", *call)))
    if reply and reply[0] == "gone":
        raise SessionNotFound(sid)
    return [run[1] for run in runs]
