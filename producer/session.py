"""`Session`: one persistent session as a collection (SPEC §3) - gc3libs' add/remove/save,
redengine's config and schedules, narupatools' play/pause/state, DPF's workflows and events.

Every operation is a plan (producer.plans): `_SessionCore` holds the handle's staged changes
and makes the plans; `Session` carries them out on a `Client` (redis-py) and `AsyncSession`
on an `AsyncClient` (redis.asyncio), so both handles share every rule here."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TextIO, TypeVar

from redis.exceptions import RedisError

from sessionq.common import codec
from sessionq.common.errors import (
    ObjectNotFound,
    SessionNotFound,
    SessionqError,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    ValidationTypeError,
)
from sessionq.common.events import TERMINAL_EVENTS, EventType
from sessionq.common.jobhash import RunSpec, build_run, check_payload
from sessionq.common.keys import DEFAULT_QUEUE
from sessionq.common.scripts import RunColumns, Scripts
from sessionq.common.settings import MAX_PAYLOAD_BYTES
from sessionq.common.state import SharedState
from sessionq.common.times import iso_from_ms
from sessionq.common.validation import check_encodable
from sessionq.common.vocabulary import ENDED_STATUSES, ENDED_TASK_STATES, Status, TaskState
from sessionq.producer import control, links, plans
from sessionq.producer.control import task_order
from sessionq.producer.follow import Followed, follow
from sessionq.producer.persistent import PERSISTENT_KIND, Opened
from sessionq.producer.plans import Batch, Command, Plan, ScriptCall, Transaction, texts
from sessionq.producer.task import Task, Workflow, default_name, parents, topological

log = logging.getLogger(__name__)
T = TypeVar("T")
# task_pre_exist policies that stage a run without reading the session's names first
_NO_READ_POLICIES = frozenset({"raise", "rename"})
ID_BLOCK_MAX = 1024  # task ids reserved per round trip, growing from 1 as a handle adds more
QUEUED = TaskState.QUEUED.value
LIFECYCLE = {EventType.TASK_QUEUED, EventType.TASK_STARTED, EventType.TASK_SUCCEEDED,
             EventType.TASK_FAILED, EventType.TASK_RETRYING, EventType.TASK_CANCELED,
             EventType.STATE_CHANGED}  # fmt: skip


class Carrier(Followed, Protocol):
    """What a `Session` needs of its client (Client is one): plans carried out on redis-py."""

    @property
    def user(self) -> str: ...


class AsyncCarrier(Protocol):
    """What an `AsyncSession` needs of its client (AsyncClient is one)."""

    @property
    def scripts(self) -> Scripts: ...

    @property
    def user(self) -> str: ...

    async def _run(self, plan: Plan[T]) -> T: ...

    def listen(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...


class _Pending(NamedTuple):
    """A run staged for the next flush: what its job hash needs but the time of the flush
    (the runs of one flush share their enqueue time, so their shared job fields too)."""

    tid: str
    name: str
    queue: str
    data: bytes
    meta: bytes | None  # None: packed at the flush, with the others of its spec (_metas)
    spec: RunSpec  # its timeout and retries: job fields runs alike share
    extra: dict[str, Any] | None
    options: dict[str, Any] | None
    task: Task | None
    prerun_fatal: bool = False  # (for a meta packed at the flush)


class _Fanned(NamedTuple):
    """The runs of one map/starmap staged for the next flush: runs of one function alike
    but for their arguments, with no object per run."""

    tids: list[str]
    name: str | None  # None: each named as its id (use_instance_naming)
    queue: str
    datas: list[bytes]
    meta: bytes | None  # None: packed at the flush, named as its id
    spec: RunSpec
    extra: dict[str, Any] | None
    prerun_fatal: bool


class _Alike:
    """Runs of plain tasks alike (one spec, queue and options: no key, parent, schedule or
    replaced task), staged one after another for the next flush - a loop of
    add(Task(f, name=...), flush=False) - as a list per field, with no object per run."""

    __slots__ = ("tids", "names", "tasks", "spec", "queue", "options", "extra", "prerun_fatal")

    def __init__(
        self,
        spec: RunSpec,
        queue: str,
        options: dict[str, Any],
        extra: dict[str, Any] | None,
        prerun_fatal: bool,
    ) -> None:
        self.tids: list[str] = []
        self.names: list[str] = []
        self.tasks: list[Task] = []
        self.spec, self.queue, self.options, self.extra = spec, queue, options, extra
        self.prerun_fatal = prerun_fatal

    def takes(self, spec: RunSpec, queue: str, options: dict[str, Any], prerun_fatal: bool) -> bool:
        """Is a run of these alike the ones staged here? (Its extra fields come with its
        options: one pair, _SessionCore._alike.)"""
        return (spec is self.spec and options is self.options and queue == self.queue
                and prerun_fatal == self.prerun_fatal)  # fmt: skip

    def add(self, tid: str, name: str, task: Task) -> None:
        self.tids.append(tid)
        self.names.append(name)
        self.tasks.append(task)

    def drop(self, tid: str) -> Task:
        """Take the run `tid` out (task_pre_exist="replace"); its task."""
        i = self.tids.index(tid)
        del self.tids[i], self.names[i]
        return self.tasks.pop(i)


_Staged = _Pending | _Fanned | _Alike


def _parents_of(staged: _Staged) -> list[str]:
    """The parents a staged run waits on (a named run's; none for runs alike, a map's)."""
    options = staged.options if isinstance(staged, _Pending) else None
    return (options.get("deps") or []) if options else []


def _with_parents(staged: list[_Staged], reply: list[Any]) -> list[links.Waiting]:
    """The runs of a flush written with parents (enqueue.lua's `reply` names those an
    existing key or name stood for, not written): (run id, queue, parent ids)."""
    stood_for = {reply[i] for i in range(1, len(reply), 3) if reply[i] != reply[i + 1]}
    return [(p.tid, p.queue, _parents_of(p)) for p in staged
            if isinstance(p, _Pending) and _parents_of(p) and p.tid not in stood_for]  # fmt: skip


def _metas(staged: Sequence[_Pending]) -> list[bytes]:
    """Each staged run's meta: those left to the flush packed together, a spec at a time."""
    first = staged[0]
    if first.meta is None and all(
        p.spec is first.spec and p.meta is None and p.prerun_fatal == first.prerun_fatal
        for p in staged
    ):  # tasks alike, as a loop of add(Task(f, name=...)) makes them: all in one go
        return first.spec.metas([p.name for p in staged], first.prerun_fatal)
    groups: dict[tuple[int, bool], list[int]] = {}  # the specs stay alive while `staged` does
    for i, p in enumerate(staged):
        if p.meta is None:
            groups.setdefault((id(p.spec), p.prerun_fatal), []).append(i)
    packed: dict[int, bytes] = {}
    for (_, fatal), where in groups.items():
        spec = staged[where[0]].spec
        packed.update(zip(where, spec.metas([staged[i].name for i in where], fatal),
                          strict=True))  # fmt: skip
    return [packed[i] if p.meta is None else p.meta for i, p in enumerate(staged)]


def _runs(staged: list[_Staged], now_s: float) -> RunColumns:
    """The enqueue script's runs of a flush, a list per field (no tuple per run); runs of
    one spec (a map's) share one mapping of job fields without asking for it again."""
    if len(staged) == 1 and isinstance(staged[0], _Alike) and len(staged[0].tids) == 1:
        one = staged[0]  # (an add of one run, flushed)
        spec = one.spec
        meta = spec.meta(one.names[0], one.prerun_fatal)
        fields = spec.shared_fields(one.queue, now_s)
        return RunColumns([0], one.tids, one.names, [QUEUED], [one.queue], [spec.data], [meta],
                          [fields], [one.extra], [one.options])  # fmt: skip
    cache: dict[tuple[str, int], Mapping[str, Any]] = {}  # the specs outlive the flush call
    ids: list[str] = []
    names: list[str] = []
    queues: list[str] = []
    datas: list[bytes] = []
    metas: list[bytes] = []
    shared: list[Mapping[str, Any]] = []
    extras: list[dict[str, Any] | None] = []
    options: list[dict[str, Any] | None] = []

    def fields_of(queue: str, spec: RunSpec) -> Mapping[str, Any]:
        alike = (queue, id(spec))
        if alike not in cache:
            cache[alike] = spec.shared_fields(queue, now_s)
        return cache[alike]

    def put(singles: list[_Pending]) -> None:
        if not singles:
            return
        tids, named, queued, data, _, specs, extra, opts, _, _ = zip(*singles, strict=True)
        last: tuple[str, RunSpec | None] = ("", None)
        fields: Mapping[str, Any] = {}
        for queue, spec in zip(queued, specs, strict=True):
            if spec is not last[1] or queue != last[0]:  # (runs alike mostly come together)
                last, fields = (queue, spec), fields_of(queue, spec)
            shared.append(fields)
        ids.extend(tids)
        names.extend(named)
        queues.extend(queued)
        datas.extend(data)
        metas.extend(_metas(singles))
        extras.extend(extra)
        options.extend(opts)
        singles.clear()

    singles: list[_Pending] = []
    for entry in staged:
        if isinstance(entry, _Pending):
            singles.append(entry)
            continue
        put(singles)
        n, spec = len(entry.tids), entry.spec
        if isinstance(entry, _Alike):
            ids.extend(entry.tids)
            names.extend(entry.names)
            queues.extend([entry.queue] * n)
            datas.extend([spec.data] * n)
            metas.extend(spec.metas(entry.names, entry.prerun_fatal))
            shared.extend([fields_of(entry.queue, spec)] * n)
            extras.extend([entry.extra] * n)
            options.extend([entry.options] * n)
            continue
        ids.extend(entry.tids)
        names.extend(entry.tids if entry.name is None else [entry.name] * n)
        queues.extend([entry.queue] * n)
        datas.extend(entry.datas)
        if entry.meta is None:
            metas.extend(spec.metas(entry.tids, entry.prerun_fatal))
        else:
            metas.extend([entry.meta] * n)
        shared.extend([fields_of(entry.queue, spec)] * n)
        extras.extend([entry.extra] * n)
        options.extend([None] * n)
    put(singles)
    n = len(ids)
    return RunColumns([0] * n, ids, names, [QUEUED] * n, queues, datas, metas, shared, extras,
                      options)  # fmt: skip


def _payloads(spec: RunSpec, items: list[Any], meta: bytes, star: bool) -> list[bytes]:
    """RQ's data of the run of each of a fan-out's `items` (its one argument, or with `star`
    its arguments), packed together; a ValidationError names the first item refused
    (`iterable[i]`), as item by item."""
    what = "iterable"
    if not star or all(isinstance(item, (list, tuple)) for item in items):
        arg_lists = (list(item) for item in items) if star else ([item] for item in items)
        try:
            datas = spec.with_each_args(arg_lists, what)
        except ValidationError:
            pass  # which one: item by item, below
        else:
            if not datas or max(map(len, datas)) + len(meta) <= MAX_PAYLOAD_BYTES:
                return datas
    datas = []
    for i, item in enumerate(items):
        if star:
            if not isinstance(item, (list, tuple)):
                raise ValidationTypeError(
                    f"{what}[{i}]",
                    f"expected a list or tuple of arguments, got {type(item).__name__}",
                )
            args = list(item)
        else:
            args = [item]
        data = spec.with_args(args, f"{what}[{i}]")
        check_payload(data, meta, f"{what}[{i}]")
        datas.append(data)
    return datas


class _SessionCore:
    """A handle's identity, config and staged changes, and the plans of its operations; what
    `Session` and `AsyncSession` share. A plan validates before it yields anything."""

    def __init__(self, scripts: Scripts, opened: Opened) -> None:
        self.id = opened.id
        self.name = opened.name
        self.config = opened.config
        self._created_ms = opened.created_at_ms
        # (with several partitions: the scripts of this session's, keys.Layout; and those of
        # the whole namespace, for the parents of other partitions its runs wait on)
        self._namespace = scripts
        self._scripts = scripts = scripts.of(opened.id)
        self._keys = scripts.keys
        self._ids: deque[str] = deque()  # reserved task ids not used yet
        # ids this handle removed or forgot: a Task object that had one is added anew
        self._dropped: set[str] = set()
        self._id_block = 1
        # by task id, in add order (a map's runs by the first one's)
        self._pending_runs: dict[str, _Staged] = {}
        self._open: _Alike | None = None  # the last staged, while more alike may join it
        self._pending_keys: dict[str, str] = {}  # idempotency key -> staged task id
        self._pending_names: dict[str, str] = {}  # name -> staged task id (named runs only)
        # (task ids, delete, also their cron chains' next firings)
        self._pending_drops: list[tuple[list[str], bool, bool]] = []
        self._pending_objects: dict[str, bytes] = {}
        self._workflows: dict[str, list[str]] = {}
        # (policy, silence_cond_check) -> a plain run's options and extra fields (_alike)
        self._alike_runs: dict[tuple[str, bool], tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self._rpc_log = opened.rpc_log

    # -- identity and timestamps -------------------------------------------------------------
    @property
    def created_at(self) -> str | None:
        return iso_from_ms(self._created_ms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, name={self.name!r})"

    def _hget(self, field: str) -> Plan[Any]:
        (value,) = yield Batch([Command.of("hget", self._keys.session(self.id), field)])
        return value

    def _stamp(self, field: str, time_s: float | None) -> Plan[None]:
        when = time.time() if time_s is None else time_s
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise ValidationTypeError("time", f"expected epoch seconds, got {when!r}")
        if not (yield from self._exists()):
            raise SessionNotFound(self.id)
        yield Batch([Command.of("hset", self._keys.session(self.id), field, int(when * 1000))])

    # -- the collection ----------------------------------------------------------------------
    def _reserve(self, n: int) -> Plan[None]:
        """Have `n` new task ids reserved: one round trip for a block (growing as the handle
        adds more, so that adding one by one is rarely one), or none while some are left."""
        if len(self._ids) >= n:
            return
        block = max(self._id_block, n - len(self._ids))
        self._ids.extend((yield from plans.reserve(self._scripts, self.id, block)))
        self._id_block = min(2 * self._id_block, ID_BLOCK_MAX)

    def _new_id(self) -> Plan[str]:
        yield from self._reserve(1)
        return self._ids.popleft()

    def _add(self, task: Task, flush: bool) -> Plan[str]:
        if not isinstance(task, Task):
            raise ValidationTypeError("task", f"expected a Task, got {type(task).__name__}")
        _check_flag(flush, "flush")
        order = topological([task])  # its Task parents first; a cycle raises here
        for item in order:
            yield from self._stage(item)
        if flush:
            if not self._pending_runs:
                # all of it was in the session already: it must still be there (an add to a
                # destroyed session is refused, as enqueue.lua refuses one with a new run)
                yield from self._still_open()
            yield from self._flush()
        return task.ids[self.id]

    def _still_open(self) -> Plan[None]:
        """SessionNotFound if the session is gone or being destroyed."""
        status = yield from self._hget("status")
        if status is None or codec.text(status) == Status.TERMINATING:
            raise SessionNotFound(self.id)

    def _fan_out(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        kwargs: dict[str, Any] | None,
        flush: bool,
        *,
        star: bool,
    ) -> Plan[list[str]]:
        _check_flag(flush, "flush")
        if isinstance(task, Task) or task is None:
            want = "a 'module:function' string or a registered function (add() takes a Task)"
            raise ValidationTypeError("task", f"expected {want}, got {type(task).__name__}")
        if isinstance(iterable, (str, bytes)) or not isinstance(iterable, Iterable):
            want = "argument lists" if star else "arguments"
            raise ValidationTypeError(
                "iterable", f"expected an iterable of {want}, got {type(iterable).__name__}"
            )
        cfg = self.config
        # validated once: the template every run of the batch shares but for its arguments
        spec = build_run(name="task", task=task, kwargs=kwargs)
        name = default_name(spec)
        prerun_fatal = not cfg.silence_task_prerun
        queue = spec.queue or DEFAULT_QUEUE
        meta = spec.meta(name, prerun_fatal)
        extra = {"cond_silent": "1"} if cfg.silence_cond_check else None
        datas = _payloads(spec, list(iterable), meta, star)
        if not datas:
            return []
        yield from self._reserve(len(datas))
        ids = [self._ids.popleft() for _ in datas]
        # named as the function, or each as its id with its meta packed at the flush
        if cfg.use_instance_naming:
            fanned = _Fanned(ids, None, queue, datas, None, spec, extra, prerun_fatal)
        else:
            fanned = _Fanned(ids, name, queue, datas, meta, spec, extra, prerun_fatal)
        self._pending_runs[ids[0]] = fanned  # (by its first id: it holds no named run)
        self._open = None
        yield from self._rpc("starmap" if star else "map",
                             {"function": spec.func, "tasks": len(ids)})  # fmt: skip
        if flush:
            yield from self._flush()
        return ids

    def _stage(self, task: Task) -> Plan[None]:
        """Give the task an id and queue its run for the next flush (once per session)."""
        known = task.ids.get(self.id)
        if known is not None:
            if known not in self._dropped:
                return
            del task.ids[self.id]
        k, cfg = self._keys, self.config
        if task.key is not None:
            staged_id = self._pending_keys.get(task.key)
            if staged_id is not None:
                task.ids[self.id] = staged_id
                return
            (existing,) = yield Batch([Command.of("hget", k.session_task_keys(self.id),
                                                  task.key)])  # fmt: skip
            if existing is not None:
                task.ids[self.id] = codec.text(existing)
                return
        tid = self._ids.popleft() if self._ids else (yield from self._new_id())
        name = task.name or (tid if cfg.use_instance_naming else task.default_name)
        old_id = None
        if cfg.task_pre_exist == "replace":
            self._unstage_name(name)
        if cfg.task_pre_exist in ("replace", "ignore"):
            (current,) = yield Batch([Command.of("hget", k.session_names(self.id), name)])
            if current is not None and cfg.task_pre_exist == "ignore":
                task.ids[self.id] = codec.text(current)
                return
            if current is not None:
                old_id = codec.text(current)
                # a replaced cron task stops firing: its next firing goes with it
                pending = yield from self._cron_pending([old_id])
                if pending:
                    self._pending_drops.append((pending, False, False))
        parent_ids = []
        for parent in parents(task):
            if isinstance(parent, Task):
                parent_ids.append(parent.ids[self.id])  # staged before it (topological)
            else:
                parent_ids.append(parent)
        due = task.due_ms(time.time()) if task.scheduled else None
        self._put(task, tid, name, cfg.task_pre_exist, parent_ids, due, old_id)
        if self._rpc_log:
            yield from self._rpc("add", {"task": tid, "name": name})

    def _staged_at_once(self, task: Task, flush: bool) -> str | None:
        """add(task, flush=False) of a task that asks nothing of Redis (no key, parent or
        schedule; ids reserved; a policy that reads no names; no rpc log): staged here, with
        no plan, as `_stage` would; its id. None: the plan must add it."""
        if flush is not False or type(task) is not Task or self._rpc_log or parents(task):
            return None
        known = task.ids.get(self.id)
        if known is not None:
            return known if known not in self._dropped else None
        if (not self._ids or task.key is not None or task.scheduled
                or self.config.task_pre_exist not in _NO_READ_POLICIES):  # fmt: skip
            return None
        tid = self._ids.popleft()
        name = task.name or (tid if self.config.use_instance_naming else task.default_name)
        self._put(task, tid, name, self.config.task_pre_exist, [], None, None)
        return tid

    def _put(
        self,
        task: Task,
        tid: str,
        name: str,
        policy: str,
        parents: list[str],
        due: int | None,
        old_id: str | None,
    ) -> None:
        """Stage the task's run as `tid` named `name` (what `_stage` settled: `old_id` is the
        task a "replace" removes) for the next flush; ValidationError, nothing staged, when
        its payload is too big."""
        cfg, spec = self.config, task.spec
        fatal = not cfg.silence_task_prerun
        meta = None  # packed at the flush (_metas) unless it must be now, to check its size
        if len(name) > spec.name_room and not spec.surely_fits(name, fatal):
            meta = spec.meta(name, fatal)
            spec.check_size(meta)
        queue = plans.run_queue(spec)
        options: dict[str, Any]
        extra: dict[str, Any] | None
        plain = task.key is None and task.cron is None and due is None and old_id is None
        if plain and not parents:
            # runs alike share their options and extra fields, as a map's runs do: read only,
            # one object each for them all; those staged one after another, their block
            # (its meta packed again at the flush: it surely fits, or was checked above)
            options, extra = self._alike(policy)
            block = self._open
            if block is None or not block.takes(spec, queue, options, fatal):
                block = self._open = _Alike(spec, queue, options, extra, fatal)
            block.add(tid, name, task)
            self._pending_runs[tid] = block  # (under each of its ids: `_staged` takes it once)
        else:
            options = {"policy": policy}
            extra = task.extra_fields(parents, due, cond_silent=cfg.silence_cond_check) or None
            if old_id is not None:
                options["old_id"] = old_id
            if task.key is not None:
                options["key"] = task.key
                self._pending_keys[task.key] = tid
            if parents:
                options.update(deps=parents, run_if=task.run_if, silent=cfg.silence_cond_check)
            if due is not None:
                options["due"] = due
            if task.cron is not None:
                options["cron"] = task.cron
            self._pending_runs[tid] = _Pending(tid, name, queue, spec.data, meta, spec, extra,
                                               options, task, fatal)  # fmt: skip
            self._open = None
        self._pending_names[name] = tid
        task.ids[self.id] = tid

    def _alike(self, policy: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The options and extra job fields of a plain run (no key, parent, schedule or
        replaced task) under `policy` and this handle's config: one pair for all of them."""
        silent = self.config.silence_cond_check
        pair = self._alike_runs.get((policy, silent))
        if pair is None:
            extra = {"cond_silent": "1"} if silent else None
            pair = self._alike_runs[(policy, silent)] = ({"policy": policy}, extra)
        return pair

    def _unstage_name(self, name: str) -> None:
        """task_pre_exist="replace": a task of this name that this handle staged and has not
        written yet is replaced by never writing it."""
        tid = self._pending_names.pop(name, None)
        staged = self._pending_runs.pop(tid, None) if tid is not None else None
        if tid is None or staged is None or isinstance(staged, _Fanned):
            return  # (a named run's: never a map's)
        task = staged.drop(tid) if isinstance(staged, _Alike) else staged.task
        if task is None:
            return
        task.ids.pop(self.id, None)
        key = task.key
        if key is not None and self._pending_keys.get(key) == tid:
            del self._pending_keys[key]

    def _drop(self, task_id: str, *, delete: bool, flush: bool) -> Plan[None]:
        if not isinstance(task_id, str):
            raise ValidationTypeError("task_id", f"expected a task id, got {task_id!r}")
        _check_flag(flush, "flush")
        self._pending_drops.append(([task_id], delete, True))
        self._dropped.add(task_id)  # adding its Task object again makes a new task
        yield from self._rpc("remove" if delete else "forget", {"task": task_id})
        if flush:
            yield from self._flush()

    def _save(self, obj: Any, flush: bool) -> Plan[str]:
        data = check_encodable(obj, "obj")
        oid = secrets.token_hex(8)
        self._pending_objects[oid] = data
        if flush:
            yield from self._flush()
        return oid

    def _load(self, oid: str) -> Plan[Any]:
        if oid in self._pending_objects:
            return codec.decode(self._pending_objects[oid])
        (raw,) = yield Batch([Command.of("hget", self._keys.session_objects(self.id), oid)])
        if raw is None:
            raise ObjectNotFound(oid)
        return codec.decode(raw)

    def _flush(self) -> Plan[None]:
        """Every change made with flush=False, in one round trip (one transaction)."""
        if not (self._pending_runs or self._pending_drops or self._pending_objects):
            return
        entries = self._pending_runs.values()  # (a block of runs alike under each of its ids)
        staged = list(dict(zip(map(id, entries), entries, strict=True)).values())
        drops, objects = self._pending_drops, self._pending_objects
        # taken out first: a flush that fails leaves nothing behind to fail the next one
        self._pending_runs, self._pending_drops, self._pending_objects = {}, [], {}
        self._open = None
        self._pending_keys, self._pending_names = {}, {}
        remote: dict[str, str] = {}
        try:
            if self._namespace.layout.partitioned:  # (parents of other partitions: links)
                remote = yield from links.parent_states(self._namespace, self.id, [
                    _parents_of(p) for p in staged if isinstance(p, _Pending)])  # fmt: skip
            replies = yield from self._send(staged, drops, objects, remote)
        except Exception:
            self._unstage(staged)
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                self._unstage(staged)
                raise reply
        replies = replies[1:] if objects else replies
        if staged:
            written = texts(replies[0])
            self._apply_run_reply(written, staged)
            replies = replies[1:]
            if remote:
                yield from self._link(_with_parents(staged, written), remote)
        for reply in replies:
            reply = texts(reply)
            if reply[0] == "running":
                raise ValidationError("task_id", f"{reply[1]} is running; stop it first")
            if reply[0] == "unknown":
                raise TaskNotFound(reply[1])
            if reply[0] == "gone":
                raise SessionNotFound(self.id)

    def _link(self, runs: list[links.Waiting], remote: dict[str, str]) -> Plan[None]:
        """The flush's runs written waiting on parents of other partitions, listed with them
        there (links.link). The runs are written: a link that fails (the parents' master
        lost, refusing, full) leaves them in their partition's waiting set, which the workers'
        sweep judges - logged, not raised (an add raising would be sent again: twice)."""
        try:
            yield from links.link(self._namespace, self.id, runs, remote)
        except (RedisError, SessionqError) as exc:
            log.warning(
                "session %s: runs %s written but not linked with their parents of other "
                "partitions (%s: %s); the workers' sweep judges them",
                self.id, ", ".join(r[0] for r in runs), type(exc).__name__, exc,
            )  # fmt: skip

    def _send(
        self,
        staged: list[_Staged],
        drops: list[tuple[list[str], bool, bool]],
        objects: dict[str, bytes],
        remote: dict[str, str],
    ) -> Plan[list[Any]]:
        """The flush's one transaction; its replies (errors among them, not raised).
        `remote`: the states of the parents of other partitions (links.parent_states)."""
        scripts = self._scripts
        drop_runs = []
        for ids, _, chains in drops:
            chained = ids + (yield from self._cron_pending(ids)) if chains else ids
            drop_runs.append((yield from plans.with_queues(scripts, chained)))
        now = time.time()  # the enqueue time of every run of the flush
        runs = _runs(staged, now) if staged else None
        items: list[Command | ScriptCall] = []
        if objects:
            items.append(Command.of("hset", self._keys.session_objects(self.id),
                                    mapping=dict(objects)))  # fmt: skip
        if runs is not None:
            call = scripts.enqueue_call(
                [(self.id, False, b"", "", PERSISTENT_KIND, scripts.settings.user)], runs, now=now,
                remote=remote,
            )  # fmt: skip
            items.append(ScriptCall("enqueue", *call))
        for (_ids, delete, _chains), dropped in zip(drops, drop_runs, strict=True):
            call = scripts.control_call("drop", self.id, {"delete": delete}, dropped)
            items.append(ScriptCall("control", *call))
        replies: list[Any] = yield Transaction(items)
        return replies

    def _cron_pending(self, ids: list[str]) -> Plan[list[str]]:
        """The scheduled next firings of the cron tasks among `ids`: each firing of a cron
        task is a run of its own, named as the task, and the next one waits in the
        schedule; removing the task removes that one too, which ends its schedule."""
        job = self._scripts.rq.job
        crons = yield Batch([Command.of("hget", job(tid), "cron") for tid in ids])
        if not any(crons):
            return []
        names = yield from self._names()
        chains = {names[tid] for tid in ids if tid in names}
        candidates = [t for t, n in names.items() if n in chains and t not in ids]
        if not candidates:
            return []
        rows = yield Batch([Command.of("hmget", job(tid), "state", "cron") for tid in candidates])
        return [
            tid for tid, (state, cron) in zip(candidates, rows, strict=True)
            if state == TaskState.DEFERRED.value.encode() and cron
        ]  # fmt: skip

    def _unstage(self, staged: list[_Staged]) -> None:
        """Forget the ids given to tasks whose add was not written."""
        for p in staged:
            if isinstance(p, _Alike):
                for tid, task in zip(p.tids, p.tasks, strict=True):
                    if task.ids.get(self.id) == tid:
                        del task.ids[self.id]
            elif (
                isinstance(p, _Pending) and p.task is not None and p.task.ids.get(self.id) == p.tid
            ):
                del p.task.ids[self.id]

    def _apply_run_reply(self, reply: list[Any], staged: list[_Staged]) -> None:
        if len(reply) == 1 and reply[0] == "ok":
            return  # every run written under the id and name it was staged with
        singles = [p for p in staged if isinstance(p, _Pending)]  # (a map's have no Task)
        by_id: dict[str, Task | None] = {p.tid: p.task for p in singles}
        for block in staged:
            if isinstance(block, _Alike):
                by_id.update(zip(block.tids, block.tasks, strict=True))
        refused = {
            "exists": f"the session already has a task named {reply[-1]!r} "
                      "(task_pre_exist='raise'): give this one another name (Task's name=, "
                      "the CLI's --name)",
            "retry": "a task being replaced changed meanwhile; add again",
            "running": f"the task it would replace, {reply[-1]}, is running; stop it first "
                       "(task_pre_exist='replace')",
        }  # fmt: skip
        if reply[0] in refused or reply[0] in ("gone", "nodep"):
            self._unstage(staged)  # nothing was written
            if reply[0] == "gone":
                raise SessionNotFound(self.id)
            if reply[0] == "nodep":
                name = next((p.name for p in singles if p.tid == reply[1]), reply[1])
                raise ValidationError(
                    "depends_on", f"task {name!r} depends on {reply[2]!r}, which names no task"
                )
            raise ValidationError("name", refused[reply[0]])
        for i in range(1, len(reply), 3):
            staged_id, final_id = reply[i], reply[i + 1]
            task = by_id.get(staged_id)
            if task is not None and staged_id != final_id:
                task.ids[self.id] = final_id

    # -- reading -----------------------------------------------------------------------------
    def _names(self) -> Plan[dict[str, str]]:
        (raw,) = yield Batch([Command.of("hgetall", self._keys.session_tasks(self.id))])
        return {codec.text(k): codec.text(v) for k, v in raw.items()}

    def _list_ids(self) -> Plan[list[str]]:
        return sorted((yield from self._names()), key=task_order)

    def _list_names(self) -> Plan[list[str]]:
        names = yield from self._names()
        return [names[i] for i in sorted(names, key=task_order)]

    def _count(self) -> Plan[int]:
        (n,) = yield Batch([Command.of("hlen", self._keys.session_tasks(self.id))])
        return int(n)

    def _records(self) -> Plan[list[dict[str, Any]]]:
        names = yield from self._names()
        ids = sorted(names, key=task_order)
        return (yield from control.task_records(self._scripts, ids, names))

    def _record(self, task_id: str) -> Plan[dict[str, Any]]:
        (name,) = yield Batch([Command.of("hget", self._keys.session_tasks(self.id), task_id)])
        if name is None:
            raise TaskNotFound(task_id)
        names = {task_id: codec.text(name)}
        return (yield from control.task_records(self._scripts, [task_id], names))[0]

    def _has(self, task_id: object) -> Plan[bool]:
        if not isinstance(task_id, str):
            return False
        (found,) = yield Batch([Command.of("hexists", self._keys.session_tasks(self.id),
                                           task_id)])  # fmt: skip
        return bool(found)

    def _exists(self) -> Plan[bool]:
        (found,) = yield Batch([Command.of("hexists", self._keys.session(self.id), "status")])
        return bool(found)

    def _status_seq(self) -> Plan[tuple[str, int]]:
        """wait's read: the status and the last event seq; NotFound when it is gone."""
        (raw,) = yield Batch([Command.of("hmget", self._keys.session(self.id), "status", "seq")])
        if raw[0] is None:
            raise SessionNotFound(self.id)
        return codec.text(raw[0]), int(raw[1] or 0)

    def _progress(self) -> Plan[dict[str, Any]]:
        (raw,) = yield Batch([Command.of("hgetall", self._keys.session(self.id))])
        if not raw:
            raise SessionNotFound(self.id)
        state = {codec.text(k): codec.text(v) for k, v in raw.items()}
        if self.config.force_status_from_logs:
            counts = {s.value: 0 for s in TaskState}
            for record in (yield from self._records()):
                if record["state"] in counts:
                    counts[record["state"]] += 1
        else:
            counts = {s.value: int(state.get(s.value) or 0) for s in TaskState}
        total = sum(counts.values())
        done = sum(counts[s] for s in ENDED_TASK_STATES)
        status = state.get("status", Status.PENDING.value)
        if self.config.force_status_from_logs and status in (Status.RUNNING, Status.PENDING) \
                and total and done == total:  # fmt: skip
            status = (Status.FAILED if counts[TaskState.FAILED] else Status.COMPLETED).value
        return {"status": status, "tasks": counts, "total": total, "done": done,
                "fraction": done / total if total else 0.0}  # fmt: skip

    def _health_check(self) -> Plan[None]:
        failed = yield from self._hget(TaskState.FAILED)
        if not self.config.force_status_from_logs and not int(failed or 0):
            return
        for record in (yield from self._records()):
            if record["state"] == TaskState.FAILED:
                raise TaskFailed(self.id, record["id"], record["error"] or "no error recorded")

    # -- control (narupatools) ---------------------------------------------------------------
    def _control(
        self, name: str, plan: Plan[dict[str, bool]], ended_ok: bool = False
    ) -> Plan[None]:
        result = yield from plan
        if not result.get(self.id):
            if not (yield from self._exists()):
                raise SessionNotFound(self.id)
            status = (yield from self._progress())["status"]
            if ended_ok and status in ENDED_STATUSES:
                return
            raise ValidationError("session", f"{name} was not accepted (session is {status})")
        yield from self._rpc(name, {})

    def _run_play(self) -> Plan[None]:
        """run()'s play: a session that has ended has nothing to play (run goes on to wait)."""
        status = yield from self._hget("status")
        if status is None:
            raise SessionNotFound(self.id)
        if codec.text(status) not in ENDED_STATUSES:
            plan = control.play(self._scripts, self.id)
            yield from self._control("play", plan, ended_ok=True)  # (ended meanwhile: as above)

    def _pause(self) -> Plan[None]:
        return (yield from self._control("pause", control.pause(self._scripts, self.id)))

    def _play(self) -> Plan[None]:
        return (yield from self._control("play", control.play(self._scripts, self.id)))

    def _step(self) -> Plan[None]:
        return (yield from self._control("step", control.step(self._scripts, self.id)))

    def _stop(self) -> Plan[None]:
        return (yield from self._control("stop", control.stop(self._scripts, self.id)))

    def _restart(self, failed_only: bool) -> Plan[None]:
        _check_flag(failed_only, "failed_only")
        plan = control.restart(self._scripts, self.id, failed_only=failed_only)
        return (yield from self._control("restart", plan))

    def _start_emitting_rpc_log(self) -> Plan[None]:
        if not (yield from self._exists()):
            raise SessionNotFound(self.id)
        yield Batch([Command.of("hset", self._keys.session(self.id), "rpc_log", 1)])
        self._rpc_log = True
        yield from self._rpc("start_emitting_rpc_log", {})

    def _rpc(self, name: str, data: dict[str, Any]) -> Plan[None]:
        """An op.<name> event, when the rpc log is on (as it was when this handle opened, or
        since this handle turned it on)."""
        if self._rpc_log:
            call = self._scripts.emit_call(self.id, [(f"op.{name}", data.get("task"), data)])
            yield ScriptCall("emit", *call)

    def _destroy(self) -> Plan[None]:
        yield from self._rpc("destroy", {})
        if not (yield from plans.destroy(self._scripts, self.id)).get(self.id):
            raise SessionNotFound(self.id)

    # -- workflows (DPF) ---------------------------------------------------------------------
    def _add_workflow(self, workflow: Workflow, identifier: str) -> Plan[list[str]]:
        if not isinstance(workflow, Workflow):
            raise ValidationTypeError("workflow", f"expected a Workflow, got "
                                                  f"{type(workflow).__name__}")  # fmt: skip
        if not isinstance(identifier, str) or not identifier:
            raise ValidationError("identifier", "must be a non-empty string")
        tasks = workflow.tasks()
        for task in tasks:
            yield from self._stage(task)
        yield from self._flush()
        ids = [t.ids[self.id] for t in tasks]
        self._workflows[identifier] = ids
        yield from self._rpc("add_workflow", {"identifier": identifier, "tasks": len(ids)})
        return ids

    def workflow_ids(self, identifier: str) -> list[str]:
        return list(self._workflows.get(identifier, []))

    def flush_workflows(self) -> None:
        """Drop this handle's workflow handles (the tasks stay in the session)."""
        self._workflows.clear()


def _check_timeout(timeout: float | None) -> float | None:
    """wait's deadline (monotonic) for `timeout` seconds, None for none."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
    ):
        raise ValidationTypeError("timeout", f"expected seconds >= 0 or None, got {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


class Session(_SessionCore):
    """A handle on one persistent session; any number of handles, in any processes, share
    it. Opened with `client.session(name)`."""

    def __init__(self, client: Carrier, opened: Opened) -> None:
        super().__init__(client.scripts, opened)
        self.client = client
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self.state = SharedState(client.scripts, self.id)

    def _run(self, plan: Plan[T]) -> T:
        return self.client._run(plan)

    # -- identity and timestamps -------------------------------------------------------------
    @property
    def finished_at(self) -> str | None:
        return iso_from_ms(self._run(self._hget("finished_at")))

    @property
    def started_at(self) -> str | None:
        return iso_from_ms(self._run(self._hget("started_at")))

    def set_start_timestamp(self, time_s: float | None = None) -> None:
        """Record when the session started (now by default); seed 004."""
        self._run(self._stamp("started_at", time_s))

    def set_end_timestamp(self, time_s: float | None = None) -> None:
        """Record when the session finished (now by default); seed 004."""
        self._run(self._stamp("finished_at", time_s))

    @property
    def status(self) -> str:
        return str(self.progress()["status"])

    # -- the collection ----------------------------------------------------------------------
    def add(self, task: Task, flush: bool = True) -> str:
        """Record the task (and, with autoplay, run it when ready); its id. The same Task
        object, or another with the same key, gives the same id and is stored once; a task
        it depends on that is not in the session yet is added first."""
        tid = self._staged_at_once(task, flush)
        return tid if tid is not None else self._run(self._add(task, flush))

    def map(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> list[str]:
        """Add one run of the function `task` ("module:function" or the decorated function)
        per item, the item its one positional argument and `kwargs` its keyword arguments;
        their ids, in input order, written in one round trip. The runs are unnamed: they
        are named as the function (by their ids with use_instance_naming) but take no name
        in the session's names, so they never clash with a task's name, whatever
        task_pre_exist says. Nothing is staged if an item is refused."""
        return self._run(self._fan_out(task, iterable, kwargs, flush, star=False))

    def starmap(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> list[str]:
        """As `map`, each item a sequence (list or tuple) of positional arguments."""
        return self._run(self._fan_out(task, iterable, kwargs, flush, star=True))

    def remove(self, task_id: str, flush: bool = True) -> None:
        """Remove the task from the session and delete its record and result; one that has
        not started is canceled; a running one is refused (stop it first)."""
        self._run(self._drop(task_id, delete=True, flush=flush))

    def forget(self, task_id: str, flush: bool = True) -> None:
        """Remove the task from the session only: its record stays readable by id."""
        self._run(self._drop(task_id, delete=False, flush=flush))

    def save(self, obj: Any, flush: bool = True) -> str:
        """Store any msgpack-encodable object in the session; its id (for `load`)."""
        return self._run(self._save(obj, flush))

    def load(self, oid: str) -> Any:
        """An object stored with `save`; ObjectNotFound (a NotFound) for an unknown id."""
        return self._run(self._load(oid))

    def save_all(self, flush: bool = True) -> None:
        """gc3libs' save_all: write every change made with flush=False."""
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write every change made with flush=False, in one round trip (one transaction)."""
        self._run(self._flush())

    # -- reading -----------------------------------------------------------------------------
    def list_ids(self) -> list[str]:
        """The session's task ids, in the order they were added."""
        return self._run(self._list_ids())

    def list_names(self) -> list[str]:
        """The session's task names, in the order they were added."""
        return self._run(self._list_names())

    def __len__(self) -> int:
        return self._run(self._count())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._run(self._records()))

    def __getitem__(self, task_id: str) -> dict[str, Any]:
        return self._run(self._record(task_id))

    def __contains__(self, task_id: object) -> bool:
        return self._run(self._has(task_id))

    # -- workflows (DPF) ---------------------------------------------------------------------
    def add_workflow(self, workflow: Workflow, identifier: str) -> list[str]:
        """Add every task of the DAG (parents first; a cycle raises before anything is
        written) in one round trip; their ids, also kept under `identifier`."""
        return self._run(self._add_workflow(workflow, identifier))

    def add_operator(self, task: Task, identifier: str) -> list[str]:
        """Add a task and all its ancestors as the workflow `identifier` (DPF)."""
        return self.add_workflow(Workflow([task]), identifier)

    # -- control (narupatools) ---------------------------------------------------------------
    def pause(self) -> None:
        """No further run starts after this returns; running ones see should_stop."""
        self._run(self._pause())

    def play(self) -> None:
        """Release the held runs in order and run."""
        self._run(self._play())

    def step(self) -> None:
        """Release exactly one run (the oldest held); the session stays paused."""
        self._run(self._step())

    def stop(self) -> None:
        """Cancel the queued runs and stop the running ones."""
        self._run(self._stop())

    def restart(self, failed_only: bool = False) -> None:
        """Run the ended tasks again (only the failed ones with failed_only)."""
        self._run(self._restart(failed_only))

    def run(self, block: bool = False, timeout: float | None = None) -> None:
        """Play; with block, wait for the end and raise TaskFailed if a run failed."""
        self._run(self._run_play())
        if block:
            self.wait(timeout)
            self.health_check()

    def health_check(self) -> None:
        """Raise TaskFailed (with the remote traceback or exit status) if a run failed."""
        self._run(self._health_check())

    def progress(self) -> dict[str, Any]:
        """Counts by state, total, done, fraction done (0.0-1.0) and the status; recounted
        from the task records when the config says force_status_from_logs."""
        return self._run(self._progress())

    def wait(self, timeout: float | None = None) -> str:
        """Block until the session ends (or `timeout` seconds pass); its status then."""
        deadline = _check_timeout(timeout)
        while True:
            status, seq = self._run(self._status_seq())
            if status in ENDED_STATUSES:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return status
            for event in self.client.listen(self.id, after=seq,
                                            timeout=min(left or 1.0, 1.0)):  # fmt: skip
                if event["type"] in TERMINAL_EVENTS:
                    break

    # -- progress and events (DPF) -----------------------------------------------------------
    def listen(self, **options: Any) -> Iterator[dict[str, Any]]:
        """This session's events (Client.listen with ids=[this session])."""
        return self.client.listen(self.id, **options)

    def listen_to_progress(self, out: TextIO | None = None) -> None:
        """A progress bar that moves as runs finish or report progress, until the end."""
        follow(self.client, [self.id], logs=False, out=out)

    def add_progress_system(self) -> None:
        """Progress is always recorded (task.progress events); kept for DPF's API."""

    def start_loop(self, interval_s: float = 1.0) -> None:
        """Check the session's health every `interval_s` until Ctrl-C (narupatools)."""
        try:
            while True:
                self.health_check()
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return

    def handle_events_with_file_logger(self, file_path: str, verbosity_level: int = 1) -> None:
        """Append the session's events to `file_path` as they happen, from now on, until
        delete(): 0 session events, 1 also task lifecycle and state changes (and op.*),
        2 also progress and log lines."""
        if verbosity_level not in (0, 1, 2):
            raise ValidationError("verbosity_level", f"must be 0, 1 or 2, got {verbosity_level!r}")
        after = int(self._run(self._hget("seq")) or 0)
        stop = threading.Event()
        stream = open(file_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the thread

        def wanted(etype: str) -> bool:
            if etype.startswith("session.") or verbosity_level == 2:
                return True
            return verbosity_level == 1 and (etype in LIFECYCLE or etype.startswith("op."))

        def pump() -> None:
            seq = after
            with stream:
                while not stop.is_set():
                    for event in self.client.listen(self.id, after=seq, timeout=0.2):
                        seq = max(seq, int(event.get("seq") or 0))
                        if wanted(event["type"]):
                            stream.write(plans.format_event(event) + "\n")
                            stream.flush()
                        if stop.is_set():
                            break

        thread = threading.Thread(target=pump, name=f"file-logger-{self.id}", daemon=True)
        thread.start()
        self._threads.append((thread, stop))

    def start_emitting_rpc_log(self) -> None:
        """From now on every operation on this session, from any handle, is also an
        `op.<name>` event."""
        self._run(self._start_emitting_rpc_log())

    # -- end -----------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Destroy the session: queued runs canceled, running ones stopped, data gone."""
        self._run(self._destroy())
        self.delete()

    def delete(self) -> None:
        """Release this handle's listeners and threads (the session stays)."""
        for thread, stop in self._threads:
            stop.set()
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


class AsyncSession(_SessionCore):
    """`Session` on redis.asyncio: the same operations as coroutines, carried out by the same
    plans. Opened with `await async_client.session(name)`. The collection's dunders become
    `count()`, `records()`, `record(task_id)` and `has(task_id)`; `state`, the file logger,
    the progress bar and start_loop are the sync handle's only."""

    def __init__(self, client: AsyncCarrier, opened: Opened) -> None:
        super().__init__(client.scripts, opened)
        self.client = client

    async def _run(self, plan: Plan[T]) -> T:
        return await self.client._run(plan)

    async def finished_at(self) -> str | None:
        return iso_from_ms(await self._run(self._hget("finished_at")))

    async def started_at(self) -> str | None:
        return iso_from_ms(await self._run(self._hget("started_at")))

    async def set_start_timestamp(self, time_s: float | None = None) -> None:
        await self._run(self._stamp("started_at", time_s))

    async def set_end_timestamp(self, time_s: float | None = None) -> None:
        await self._run(self._stamp("finished_at", time_s))

    async def status(self) -> str:
        return str((await self.progress())["status"])

    async def add(self, task: Task, flush: bool = True) -> str:
        tid = self._staged_at_once(task, flush)
        return tid if tid is not None else await self._run(self._add(task, flush))

    async def map(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> list[str]:
        return await self._run(self._fan_out(task, iterable, kwargs, flush, star=False))

    async def starmap(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> list[str]:
        return await self._run(self._fan_out(task, iterable, kwargs, flush, star=True))

    async def remove(self, task_id: str, flush: bool = True) -> None:
        await self._run(self._drop(task_id, delete=True, flush=flush))

    async def forget(self, task_id: str, flush: bool = True) -> None:
        await self._run(self._drop(task_id, delete=False, flush=flush))

    async def save(self, obj: Any, flush: bool = True) -> str:
        return await self._run(self._save(obj, flush))

    async def load(self, oid: str) -> Any:
        return await self._run(self._load(oid))

    async def save_all(self, flush: bool = True) -> None:
        if flush:
            await self.flush()

    async def flush(self) -> None:
        await self._run(self._flush())

    async def list_ids(self) -> list[str]:
        return await self._run(self._list_ids())

    async def list_names(self) -> list[str]:
        return await self._run(self._list_names())

    async def count(self) -> int:
        return await self._run(self._count())

    async def records(self) -> list[dict[str, Any]]:
        return await self._run(self._records())

    async def record(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._record(task_id))

    async def has(self, task_id: object) -> bool:
        return await self._run(self._has(task_id))

    async def add_workflow(self, workflow: Workflow, identifier: str) -> list[str]:
        return await self._run(self._add_workflow(workflow, identifier))

    async def add_operator(self, task: Task, identifier: str) -> list[str]:
        return await self.add_workflow(Workflow([task]), identifier)

    async def pause(self) -> None:
        await self._run(self._pause())

    async def play(self) -> None:
        await self._run(self._play())

    async def step(self) -> None:
        await self._run(self._step())

    async def stop(self) -> None:
        await self._run(self._stop())

    async def restart(self, failed_only: bool = False) -> None:
        await self._run(self._restart(failed_only))

    async def run(self, block: bool = False, timeout: float | None = None) -> None:
        await self._run(self._run_play())
        if block:
            await self.wait(timeout)
            await self.health_check()

    async def health_check(self) -> None:
        await self._run(self._health_check())

    async def progress(self) -> dict[str, Any]:
        return await self._run(self._progress())

    async def wait(self, timeout: float | None = None) -> str:
        deadline = _check_timeout(timeout)
        while True:
            status, seq = await self._run(self._status_seq())
            if status in ENDED_STATUSES:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return status
            events = self.client.listen(self.id, after=seq, timeout=min(left or 1.0, 1.0))
            async for event in events:
                if event["type"] in TERMINAL_EVENTS:
                    break
            await _aclose(events)

    def listen(self, **options: Any) -> AsyncIterator[dict[str, Any]]:
        return self.client.listen(self.id, **options)

    async def start_emitting_rpc_log(self) -> None:
        await self._run(self._start_emitting_rpc_log())

    async def destroy(self) -> None:
        await self._run(self._destroy())

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _aclose(events: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


def _check_flag(value: object, field: str) -> None:
    if not isinstance(value, bool):
        raise ValidationTypeError(field, f"expected True or False, got {value!r}")
