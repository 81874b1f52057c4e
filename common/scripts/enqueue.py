"""Creating sessions and adding runs (enqueue.lua, contract ENQUEUE), in one atomic call; a
create of one session of one run by create.lua (CREATE), enqueue.lua's writes for it alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, NamedTuple, TypeVar

from sessionq.common import codec
from sessionq.common.jobhash import JobFields
from sessionq.common.scripts.base import BLOCK_CACHE_MAX, ScriptsBase, texts
from sessionq.common.scripts.contracts import (
    CREATE,
    CREATE_SESSION,
    ENQUEUE,
    ENQUEUE_QUEUE,
    ENQUEUE_SESSION,
    LINK,
)
from sessionq.common.times import rq_time
from sessionq.common.vocabulary import TaskState

T = TypeVar("T")
# session index, run id, name, state, queue, job fields, options (enqueue.lua)
Run = tuple[int, str, str, str, str, JobFields, dict[str, Any] | None]
# sid, is new, record bytes, name, kind, owner
NewSession = tuple[str, bool, bytes, str, str, str]
QUEUED = TaskState.QUEUED.value
_SID = "\x00"  # a session id no session has: where the id goes in _one_call's keys
_NOW_MS, _NOW_ISO, _WORKER, _PLAN = map(ENQUEUE.arg_position,
                                         ("now_ms", "now_iso", "worker", "plan"))  # fmt: skip


class _OneCall(NamedTuple):
    """_one_run_call's pieces (_one_call): the keys but the run's - those before and after
    the session's as they are, the session's split where its id goes - and the args of a
    call at time 0 (the time, the worker and the plan set per call)."""

    head: list[str]
    split: list[list[str]]
    tail: list[str]
    args: list[Any]


class _CreateCall(NamedTuple):
    """create_call's pieces for a session of one kind and owner and a run on one queue: the
    keys before the session's and after them as they are, the session's split where its id
    goes, the job key split where the run id goes; the args of a call at time 0 (what
    varies set per call)."""

    head: list[str]
    split: list[list[str]]
    tail: list[str]
    job: list[str]
    args: list[Any]


_C_FIXED = len(CREATE.keys) - len(CREATE_SESSION) - len(ENQUEUE_QUEUE) - 1
_C_NOW_MS, _C_NOW_ISO, _C_SID, _C_ID, _C_NAME, _C_RECORD, _C_JOB, _C_RETENTION = map(
    CREATE.arg_position, ("now_ms", "now_iso", "sid", "id", "name", "record", "job", "retention")
)


class RunColumns(NamedTuple):
    """Runs as a sequence per field, a value per run: what a list of `Run`s says (`of`),
    for a caller that has its runs so (a session's flush makes no tuple per run)."""

    session: Sequence[int]  # the index of its session in the call's sessions, 0 on
    id: Sequence[str]
    name: Sequence[str]
    state: Sequence[str]
    queue: Sequence[str]
    data: Sequence[bytes]  # its JobFields, a field each
    sq: Sequence[bytes]
    shared: Sequence[Mapping[str, Any]]
    extra: Sequence[dict[str, Any] | None]
    options: Sequence[dict[str, Any] | None]

    @classmethod
    def of(cls, runs: Sequence[Run]) -> RunColumns:
        if not runs:
            return cls((), (), (), (), (), (), (), (), (), ())
        session, ids, names, states, queues, fields, options = zip(*runs, strict=True)
        data, sq, shared, extra = zip(*fields, strict=True)
        return cls(session, ids, names, states, queues, data, sq, shared, extra, options)


class EnqueueCalls(ScriptsBase):
    def enqueue(
        self,
        sessions: Sequence[NewSession],
        runs: Sequence[Run] | RunColumns,
        *,
        worker: str = "",
        now: float | None = None,
        client: Any = None,
        claim: str = "",
        retention_ms: int | None = None,
        remote: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """Create sessions (sid, is_new, record, name, kind, owner) and add runs to them
        (session index, run id, name, state, queue, job fields, options). One atomic call;
        see enqueue.lua for the options and the reply; `claim` is the persistent name
        (owner/name) the one new session takes. Given a pipeline as `client`, the call
        is queued on it (the caller has loaded the scripts: ensure_loaded). `retention_ms`:
        the new sessions are removed that long after they end (None: kept). `remote`: the
        state of each parent of another partition the runs wait on, read there just before
        ('': no such task, refused as 'nodep'; producer.links)."""
        keys, args = self.enqueue_call(sessions, runs, worker=worker, now=now, claim=claim,
                                       retention_ms=retention_ms, remote=remote)  # fmt: skip
        return texts(self.call("enqueue", keys, args, client=client))

    def enqueue_call(
        self,
        sessions: Sequence[NewSession],
        runs: Sequence[Run] | RunColumns,
        *,
        worker: str = "",
        now: float | None = None,
        claim: str = "",
        retention_ms: int | None = None,
        remote: Mapping[str, str] | None = None,
    ) -> tuple[list[str], list[Any]]:
        """The keys and args of `enqueue`, sent by no one: for a caller with its own client
        (`runs` as Run tuples, or as RunColumns)."""
        now = time.time() if now is None else now
        if isinstance(runs, RunColumns):
            run = _first(runs) if len(runs.id) == 1 else None
        else:
            run = runs[0] if len(runs) == 1 else None
        if run is not None and len(sessions) == 1 and not self.layout.partitioned:
            options = run[6]
            if not (options and (options.get("deps") or options.get("old_id"))):
                return self._one_run_call(sessions[0], run, worker, now, claim, retention_ms)
        cols = runs if isinstance(runs, RunColumns) else RunColumns.of(runs)
        return self._enqueue_call(sessions, cols, worker, now, claim, retention_ms, remote)

    def _enqueue_call(
        self, sessions: Sequence[NewSession], cols: RunColumns, worker: str, now: float,
        claim: str, retention_ms: int | None, remote: Mapping[str, str] | None,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """enqueue_call of any sessions and runs."""
        rq = self.rq
        session_blocks, plan_sessions = [], []
        # a session's key block from the block of a session of its kind and owner whose id is
        # _SID, split where the id goes (a create's replicas share their kind and owner)
        splits: dict[tuple[str, str], list[list[str]]] = {}
        for sid, is_new, record, name, kind, owner in sessions:
            split = splits.get((kind, owner))
            if split is None:
                block = self._enqueue_session_block(_SID, kind, owner)
                split = splits[(kind, owner)] = [key.split(_SID) for key in block]
            session_blocks.append([sid.join(parts) for parts in split])
            plan_sessions.append([sid, is_new, record, name])
        queues = {q: i for i, q in enumerate(dict.fromkeys(cols.queue), start=1)}
        queue_blocks = list(map(self._enqueue_queue_block, queues))
        job_blocks = list(map(rq.job, cols.id))  # (a one-key block: flat)
        keys = ENQUEUE.pack_keys(
            self._enqueue_fixed,
            {"session": session_blocks, "queue": queue_blocks, "job": job_blocks},
        )
        extra: dict[str, int] = {}

        def key_index(run_id: str) -> int:
            """The KEYS index (KX) of an extra job key: a parent's, or a replaced task's."""
            if run_id not in extra:
                keys.append(rq.job(run_id))
                extra[run_id] = len(keys)  # Lua counts from 1
            return extra[run_id]

        def parent_ref(run_id: str) -> int | str:
            """A parent as enqueue.lua's dep_keys name it (prelude `dep_state`): its job's
            KEYS index, or its state when it is of another partition (read there)."""
            if not self.foreign(run_id):
                return key_index(run_id)
            if remote is None or run_id not in remote:
                raise ValueError(f"parent {run_id} is of another partition: its state is needed")
            return remote[run_id]

        columns, shared, options = _run_columns(cols, queues, key_index, parent_ref)
        plan = codec.encode_for_lua(
            [plan_sessions, list(queues), columns, claim, shared, retention_ms, options]
        )
        args = ENQUEUE.pack_args({
            **self.clock(now), "worker": worker, "nsessions": len(sessions),
            "nqueues": len(queues), "nruns": len(cols.id),
            "fresh_ms": int(self.settings.heartbeat_late_s * 1000), "plan": plan,
        })  # fmt: skip
        return keys, args

    def _one_run_call(
        self, session: NewSession, run: Run, worker: str, now: float, claim: str,
        retention_ms: int | None,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """_enqueue_call of one session and one run with no parent and no task it replaces
        (a create of one replica, a session's add of one run) - the same keys and args
        (tests/common/test_enqueue_one.py), laid out from pieces made once per kind, owner
        and queue: such calls come one at a time, thousands of them, and packing them was
        most of their cost in Python."""
        sid, is_new, record, name, kind, owner = session
        index, rid, run_name, state, queue, (data, sq, shared, extra), options = run
        one = self._one_calls.get((kind, owner, queue))
        if one is None:
            one = self._one_call(kind, owner, queue)
        keys = [*one.head, *[sid.join(parts) for parts in one.split], *one.tail,
                self.rq.job(rid)]  # fmt: skip
        plan = codec.encode_for_lua([
            [[sid, is_new, record, name]], [queue],
            [[index + 1], [rid], [run_name], [state], [1], [1 if options else 0],
             [1 if shared else 0], [data], [sq], [_flat(extra) if extra else None]],
            claim, [_flat(shared)] if shared else [], retention_ms, [options] if options else [],
        ])  # fmt: skip
        args = one.args.copy()
        args[_NOW_MS], args[_NOW_ISO], args[_WORKER] = int(now * 1000), rq_time(now), worker
        args[_PLAN] = plan
        return keys, args

    def _one_call(self, kind: str, owner: str, queue: str) -> _OneCall:
        """_one_run_call's pieces for a session of `kind` and `owner` with a run queued on
        `queue`: the keys of such a call for a session whose id is the marker _SID, split
        where the id goes, its run's job key left out; the args of a call at time 0."""
        run = (0, "", "", QUEUED, queue, JobFields(b"", b"", {}), None)
        keys, args = self._enqueue_call([(_SID, True, b"", "", kind, owner)],
                                        RunColumns.of([run]), "", 0.0, "", None, None)  # fmt: skip
        split = [key.split(_SID) for key in keys[:-1]]
        varying = [i for i, parts in enumerate(split) if len(parts) > 1]
        first, last = (varying[0], varying[-1] + 1) if varying else (len(split), len(split))
        one = _OneCall(keys[:first], split[first:last], keys[last:-1], args)
        if len(self._one_calls) > BLOCK_CACHE_MAX:
            self._one_calls.clear()
        self._one_calls[(kind, owner, queue)] = one
        return one

    def create_call(
        self, session: NewSession, run: Run, now: float, retention_ms: int | None
    ) -> tuple[list[str], list[Any]]:
        """create.lua's keys and args: one new session of one queued run named as the session,
        with no options, no claimed name and no fields of its own (create() of one replica
        on one partition; the same writes as `enqueue` of them,
        tests/common/test_create_one.py); ValueError for any other."""
        sid, is_new, record, name, kind, owner = session
        index, rid, run_name, state, queue, (data, sq, shared, extra), options = run
        if (not is_new or index != 0 or run_name != name or state != QUEUED or extra
                or options or self.layout.partitioned):  # fmt: skip
            raise ValueError("create.lua makes a new session of one queued run named as "
                             "the session, with no options, on one partition")  # fmt: skip
        one = self._create_calls.get((kind, owner, queue))
        if one is None:
            one = self._create_pieces(kind, owner, queue)
        keys = [*one.head, *[sid.join(parts) for parts in one.split], *one.tail,
                rid.join(one.job)]  # fmt: skip
        args = one.args.copy()
        args[_C_NOW_MS], args[_C_NOW_ISO] = int(now * 1000), rq_time(now)
        args[_C_SID], args[_C_ID], args[_C_NAME], args[_C_RECORD] = sid, rid, name, record
        args[_C_JOB] = codec.encode_for_lua(["data", data, "sq", sq, *_flat(shared)])
        args[_C_RETENTION] = "" if retention_ms is None else str(retention_ms)
        return keys, args

    def _create_pieces(self, kind: str, owner: str, queue: str) -> _CreateCall:
        """create_call's pieces for a session of `kind` and `owner` with its run on `queue`."""
        head = [self._enqueue_fixed[name] for name in CREATE.keys[:_C_FIXED]]
        session = dict(zip(ENQUEUE_SESSION, self._enqueue_session_block(_SID, kind, owner),
                           strict=True))  # fmt: skip
        split = [session[name].split(_SID) for name in CREATE_SESSION]
        tail = self._enqueue_queue_block(queue)
        args = CREATE.pack_args({
            **self.clock(0.0), "worker": "", "queue": queue,
            "fresh_ms": int(self.settings.heartbeat_late_s * 1000), "sid": "", "id": "",
            "name": "", "record": b"", "job": b"", "retention": "",
        })  # fmt: skip
        one = _CreateCall(head, split, tail, self.rq.job(_SID).split(_SID), args)
        if len(self._create_calls) > BLOCK_CACHE_MAX:
            self._create_calls.clear()
        self._create_calls[(kind, owner, queue)] = one
        return one

    def link_calls(
        self, links: Sequence[tuple[str, str]]
    ) -> list[tuple[list[tuple[str, str]], list[str], list[Any]]]:
        """link.lua's calls listing children with parents of other partitions (SPEC §9):
        `links` (parent id, child id), one call per partition of the parents - (its links,
        keys, args). Its reply: each parent's state (None: no such task)."""
        children: dict[str, list[str]] = {}
        for parent, child in links:
            children.setdefault(parent, []).append(child)
        calls = []
        for part, parents in self.grouped(list(children)):
            pairs = [(p, c) for p in parents for c in children[p]]
            keys = LINK.pack_keys({}, {"parent": [part.rq.job(p) for p, _ in pairs]})
            args = LINK.pack_args({"nlinks": len(pairs)}, {"link": [(c,) for _, c in pairs]})
            calls.append((pairs, keys, args))
        return calls

    @cached_property
    def _enqueue_fixed(self) -> dict[str, str]:
        """enqueue.lua's fixed keys by name: the same on every call."""
        k, rq = self.keys, self.rq
        return {**self.globals, "sessions": k.sessions(), "rq_queues": rq.queues_set,
                "schedule": k.schedule(), "waiting": k.waiting(), "names": k.names(),
                "idle_workers": k.idle_workers(), "workers": k.workers(),
                "epoch": k.data_epoch()}  # fmt: skip

    def _enqueue_session_block(self, sid: str, kind: str, owner: str) -> list[str]:
        """enqueue.lua's key block of one session."""
        k = self.keys
        return ENQUEUE.block("session", {
            "session": k.session(sid), "history": k.history(sid),
            "chan": k.events_channel(sid), "tasks": k.session_tasks(sid),
            "held": k.session_held(sid), "kind": k.idx_kind(kind),
            "owner": k.idx_owner(owner), "names": k.session_names(sid),
            "task_keys": k.session_task_keys(sid), "running": k.session_running(sid),
        })  # fmt: skip

    def _enqueue_queue_block(self, queue: str) -> list[str]:
        """enqueue.lua's key block of one queue (made once per queue name)."""
        block = self._queue_blocks.get(queue)
        if block is None:
            k, rq = self.keys, self.rq
            block = ENQUEUE.block("queue", {"list": rq.queue(queue), "wake": k.wake(queue),
                                            "failed": rq.failed(queue),
                                            "started": rq.started(queue),
                                            "idle_line": k.idle(queue)})  # fmt: skip
            if len(self._queue_blocks) > BLOCK_CACHE_MAX:
                self._queue_blocks.clear()
            self._queue_blocks[queue] = block
        return block


def _first(cols: RunColumns) -> Run:
    """The first run of `cols`, as a Run."""
    fields = JobFields(cols.data[0], cols.sq[0], cols.shared[0], cols.extra[0])
    return (cols.session[0], cols.id[0], cols.name[0], cols.state[0], cols.queue[0], fields,
            cols.options[0])  # fmt: skip


def _flat(mapping: Mapping[str, Any]) -> list[Any]:
    """A map as enqueue.lua takes shared job fields: key, value, key, value..."""
    return [x for pair in mapping.items() for x in pair]


def _run_columns(
    runs: RunColumns, queues: dict[str, int], key_index: Callable[[str], int],
    parent_ref: Callable[[str], int | str],
) -> tuple[list[Any], list[list[Any]], list[dict[str, Any]]]:  # fmt: skip
    """The plan's runs, a list per field (enqueue.lua's `runs`): a batch of 10,000 runs is a
    dozen lists, not 10,000 of each (for the packer here and for cmsgpack.unpack there).
    Job fields and options that runs share (one object for them: a map's, or add's plain
    runs) are sent once each and named by their index (1 on, 0 for no options)."""

    def lua_options(o: dict[str, Any]) -> dict[str, Any]:
        if not (o.get("deps") or o.get("old_id")):
            return o
        o = dict(o)  # (the caller's stays as it was)
        if o.get("deps"):
            o["dep_keys"] = [parent_ref(p) for p in o["deps"]]
        if o.get("old_id"):
            o["old"] = key_index(o["old_id"])
        return o

    shared_index, shared = _once_each(runs.shared, _flat)
    options_index, options = _once_each(runs.options, lua_options)
    columns = [
        [i + 1 for i in runs.session], runs.id, runs.name, runs.state,
        [queues[q] for q in runs.queue], options_index, shared_index, runs.data, runs.sq,
        [_flat(e) if e else None for e in runs.extra],
    ]  # fmt: skip
    return columns, shared, options


def _once_each(objects: Sequence[Any], make: Callable[[Any], T]) -> tuple[list[int], list[T]]:
    """Each object's index (1 on; 0 for None or an empty one) among the distinct ones, by
    identity (the caller holds them all alive meanwhile), and `make` of each distinct one."""
    if len(objects) == 1:  # (a create's, an add's one run)
        return ([1], [make(objects[0])]) if objects[0] else ([0], [])
    ids = list(map(id, objects))
    index, distinct = {}, []
    for key, o in dict(zip(ids, objects, strict=True)).items():
        if o:
            distinct.append(o)
        index[key] = len(distinct) if o else 0
    return list(map(index.__getitem__, ids)), [make(o) for o in distinct]
