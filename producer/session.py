"""`Session`: one persistent session as a collection (SPEC §3) - gc3libs' add/remove/save,
redengine's config and schedules, narupatools' play/pause/state, DPF's workflows and events."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

from redis.exceptions import NoScriptError

from sessionq.common import codec
from sessionq.common.errors import (
    SessionNotFound,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    ValidationTypeError,
)
from sessionq.common.events import TERMINAL_EVENTS
from sessionq.common.keys import DEFAULT_QUEUE, command_queue_for, run_id
from sessionq.common.models import (
    ENDED_STATUSES,
    JobFields,
    RunSpec,
    TaskState,
    build_run,
    check_encodable,
    check_payload,
    iso_from_ms,
)
from sessionq.common.scripts import Run
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.state import SharedState
from sessionq.producer.control import task_order
from sessionq.producer.task import Task, Workflow, default_name, topological

if TYPE_CHECKING:
    from sessionq.producer.client import Client

log = logging.getLogger(__name__)
ID_BLOCK_MAX = 1024  # task ids reserved per round trip, growing from 1 as a handle adds more
QUEUED = TaskState.QUEUED.value
LIFECYCLE = {"task.queued", "task.started", "task.succeeded", "task.failed", "task.retrying",
             "task.canceled", "state.changed"}  # fmt: skip


class _Pending(NamedTuple):
    """A run staged for the next flush: what its job hash needs but the time of the flush
    (the runs of one flush share their enqueue time, so their shared job fields too)."""

    tid: str
    name: str
    queue: str
    data: bytes
    meta: bytes
    spec: RunSpec  # its timeout and retries: job fields runs alike share
    extra: dict[str, Any] | None
    options: dict[str, Any] | None
    task: Task | None


def _runs(staged: list[_Pending], now_s: float) -> list[Run]:
    """The enqueue script's runs of a flush; runs of one spec (a map's) share one mapping
    of job fields without asking for it again."""
    shared: dict[tuple[str, int], Mapping[str, Any]] = {}
    runs: list[Run] = []
    for p in staged:
        alike = (p.queue, id(p.spec))  # the specs stay alive while `staged` holds them
        fields = shared.get(alike)
        if fields is None:
            fields = shared[alike] = p.spec.shared_fields(p.queue, now_s)
        job = JobFields(p.data, p.meta, fields, p.extra)
        runs.append((0, p.tid, p.name, QUEUED, p.queue, job, p.options))
    return runs


class Session:
    """A handle on one persistent session; any number of handles, in any processes, share
    it. Opened with `client.session(name)`."""

    def __init__(self, client: Client, sid: str, name: str, config: SessionConfig,
                 created_at_ms: int) -> None:  # fmt: skip
        self.client = client
        self.id = sid
        self.name = name
        self.config = config
        self._created_ms = created_at_ms
        self._keys = client.keys
        self._ids: deque[str] = deque()  # reserved task ids not used yet
        # ids this handle removed or forgot: a Task object that had one is added anew
        self._dropped: set[str] = set()
        self._id_block = 1
        self._pending_runs: dict[str, _Pending] = {}  # by task id, in add order
        self._pending_keys: dict[str, str] = {}  # idempotency key -> staged task id
        self._pending_names: dict[str, str] = {}  # name -> staged task id (named runs only)
        # (task ids, delete, also their cron chains' next firings)
        self._pending_drops: list[tuple[list[str], bool, bool]] = []
        self._pending_objects: dict[str, bytes] = {}
        self._workflows: dict[str, list[str]] = {}
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self._rpc_log = bool(client.redis.hget(self._keys.session(sid), "rpc_log"))
        self.state = SharedState(client.scripts, sid)

    # -- identity and timestamps -------------------------------------------------------------
    @property
    def created_at(self) -> str | None:
        return iso_from_ms(self._created_ms)

    @property
    def finished_at(self) -> str | None:
        return iso_from_ms(self.client.redis.hget(self._keys.session(self.id), "finished_at"))

    @property
    def started_at(self) -> str | None:
        return iso_from_ms(self.client.redis.hget(self._keys.session(self.id), "started_at"))

    def set_start_timestamp(self, time_s: float | None = None) -> None:
        """Record when the session started (now by default); seed 004."""
        self._stamp("started_at", time_s)

    def set_end_timestamp(self, time_s: float | None = None) -> None:
        """Record when the session finished (now by default); seed 004."""
        self._stamp("finished_at", time_s)

    def _stamp(self, field: str, time_s: float | None) -> None:
        when = time.time() if time_s is None else time_s
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise ValidationTypeError("time", f"expected epoch seconds, got {when!r}")
        if not self._exists():
            raise SessionNotFound(self.id)
        self.client.redis.hset(self._keys.session(self.id), field, int(when * 1000))

    @property
    def status(self) -> str:
        return str(self.progress()["status"])

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, name={self.name!r})"

    # -- the collection ----------------------------------------------------------------------
    def _reserve(self, n: int) -> None:
        """Have `n` new task ids reserved: one round trip for a block (growing as the handle
        adds more, so that adding one by one is rarely one), or none while some are left."""
        if len(self._ids) >= n:
            return
        block = max(self._id_block, n - len(self._ids))
        key = self._keys.session(self.id)
        pipe = self.client.redis.pipeline(transaction=True)
        pipe.hincrby(key, "next", block)
        pipe.hexists(key, "status")
        last, exists = pipe.execute()
        if not exists:
            # destroyed: HINCRBY made a stray hash of the gone session; take it away
            self.client.redis.delete(key)
            raise SessionNotFound(self.id)
        self._ids.extend(run_id(self.id, i) for i in range(int(last) - block + 1, int(last) + 1))
        self._id_block = min(2 * self._id_block, ID_BLOCK_MAX)

    def _new_id(self) -> str:
        self._reserve(1)
        return self._ids.popleft()

    def add(self, task: Task, flush: bool = True) -> str:
        """Record the task (and, with autoplay, run it when ready); its id. The same Task
        object, or another with the same key, gives the same id and is stored once; a task
        it depends on that is not in the session yet is added first."""
        if not isinstance(task, Task):
            raise ValidationTypeError("task", f"expected a Task, got {type(task).__name__}")
        _check_flag(flush, "flush")
        order = topological([task])  # its Task parents first; a cycle raises here
        for item in order:
            self._stage(item)
        if flush:
            self.flush()
        return task.ids[self.id]

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
        return self._fan_out(task, iterable, kwargs, flush, star=False)

    def starmap(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> list[str]:
        """As `map`, each item a sequence (list or tuple) of positional arguments."""
        return self._fan_out(task, iterable, kwargs, flush, star=True)

    def _fan_out(
        self,
        task: str | Callable[..., Any],
        iterable: Iterable[Any],
        kwargs: dict[str, Any] | None,
        flush: bool,
        *,
        star: bool,
    ) -> list[str]:
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
        what = "iterable"
        datas = []
        for i, item in enumerate(iterable):
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
        if not datas:
            return []
        self._reserve(len(datas))
        ids = [self._ids.popleft() for _ in datas]
        pending = self._pending_runs
        if cfg.use_instance_naming:
            for tid, data in zip(ids, datas, strict=True):
                pending[tid] = _Pending(tid, tid, queue, data, spec.meta(tid, prerun_fatal),
                                        spec, extra, None, None)  # fmt: skip
        else:
            for tid, data in zip(ids, datas, strict=True):
                pending[tid] = _Pending(tid, name, queue, data, meta, spec, extra, None, None)
        self._rpc("starmap" if star else "map", {"function": spec.func, "tasks": len(ids)})
        if flush:
            self.flush()
        return ids

    def _stage(self, task: Task) -> None:
        """Give the task an id and queue its run for the next flush (once per session)."""
        known = task.ids.get(self.id)
        if known is not None:
            if known not in self._dropped:
                return
            del task.ids[self.id]
        k, cfg, redis = self._keys, self.config, self.client.redis
        if task.key is not None:
            staged_id = self._pending_keys.get(task.key)
            if staged_id is not None:
                task.ids[self.id] = staged_id
                return
            existing = redis.hget(k.session_task_keys(self.id), task.key)
            if existing is not None:
                task.ids[self.id] = codec.text(existing)
                return
        tid = self._new_id()
        name = task.name or (tid if cfg.use_instance_naming else task.default_name)
        options: dict[str, Any] = {"policy": cfg.task_pre_exist}
        if cfg.task_pre_exist == "replace":
            self._unstage_name(name)
        if cfg.task_pre_exist in ("replace", "ignore"):
            current = redis.hget(k.session_names(self.id), name)
            if current is not None and cfg.task_pre_exist == "ignore":
                task.ids[self.id] = codec.text(current)
                return
            if current is not None:
                options["old_id"] = codec.text(current)
                # a replaced cron task stops firing: its next firing goes with it
                pending = self._cron_pending([options["old_id"]])
                if pending:
                    self._pending_drops.append((pending, False, False))
        parents = []
        for parent in task.depends_on:
            if isinstance(parent, Task):
                parents.append(parent.ids[self.id])  # staged before it (topological)
            else:
                parents.append(parent)
        due = task.due_ms(time.time())
        spec = task.spec
        meta = spec.meta(name, not cfg.silence_task_prerun)
        spec.check_size(meta)
        queue = command_queue_for(spec.queue) if spec.func is None else spec.queue
        queue = queue or DEFAULT_QUEUE
        extra = task.extra_fields(parents, due, cond_silent=cfg.silence_cond_check)
        if task.key is not None:
            options["key"] = task.key
            self._pending_keys[task.key] = tid
        if parents:
            options.update(deps=parents, run_if=task.run_if, silent=cfg.silence_cond_check)
        if due is not None:
            options["due"] = due
        if task.cron is not None:
            options["cron"] = task.cron
        self._pending_runs[tid] = _Pending(tid, name, queue, spec.data, meta, spec,
                                           extra or None, options, task)  # fmt: skip
        self._pending_names[name] = tid
        task.ids[self.id] = tid
        self._rpc("add", {"task": tid, "name": name})

    def _unstage_name(self, name: str) -> None:
        """task_pre_exist="replace": a task of this name that this handle staged and has not
        written yet is replaced by never writing it."""
        tid = self._pending_names.pop(name, None)
        staged = self._pending_runs.pop(tid, None) if tid is not None else None
        if staged is None or staged.task is None:
            return
        staged.task.ids.pop(self.id, None)
        key = staged.task.key
        if key is not None and self._pending_keys.get(key) == tid:
            del self._pending_keys[key]

    def remove(self, task_id: str, flush: bool = True) -> None:
        """Remove the task from the session and delete its record and result; one that has
        not started is canceled; a running one is refused (stop it first)."""
        self._drop(task_id, delete=True, flush=flush)

    def forget(self, task_id: str, flush: bool = True) -> None:
        """Remove the task from the session only: its record stays readable by id."""
        self._drop(task_id, delete=False, flush=flush)

    def _drop(self, task_id: str, *, delete: bool, flush: bool) -> None:
        if not isinstance(task_id, str):
            raise ValidationTypeError("task_id", f"expected a task id, got {task_id!r}")
        _check_flag(flush, "flush")
        self._pending_drops.append(([task_id], delete, True))
        self._dropped.add(task_id)  # adding its Task object again makes a new task
        self._rpc("remove" if delete else "forget", {"task": task_id})
        if flush:
            self.flush()

    def save(self, obj: Any, flush: bool = True) -> str:
        """Store any msgpack-encodable object in the session; its id (for `load`)."""
        data = check_encodable(obj, "obj")
        oid = secrets.token_hex(8)
        self._pending_objects[oid] = data
        if flush:
            self.flush()
        return oid

    def load(self, oid: str) -> Any:
        """An object stored with `save`; NotFound for an unknown id."""
        if oid in self._pending_objects:
            return codec.decode(self._pending_objects[oid])
        raw = self.client.redis.hget(self._keys.session_objects(self.id), oid)
        if raw is None:
            raise TaskNotFound(oid)
        return codec.decode(raw)

    def save_all(self, flush: bool = True) -> None:
        """gc3libs' save_all: write every change made with flush=False."""
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write every change made with flush=False, in one round trip (one transaction)."""
        if not (self._pending_runs or self._pending_drops or self._pending_objects):
            return
        staged, drops = list(self._pending_runs.values()), self._pending_drops
        objects = self._pending_objects
        # taken out first: a flush that fails leaves nothing behind to fail the next one
        self._pending_runs, self._pending_drops, self._pending_objects = {}, [], {}
        self._pending_keys, self._pending_names = {}, {}
        try:
            replies = self._send(staged, drops, objects)
        except Exception:
            self._unstage(staged)
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                self._unstage(staged)
                raise reply
        replies = replies[1:] if objects else replies
        if staged:
            self._apply_run_reply([_text(r) if isinstance(r, bytes) else r for r in replies[0]],
                                  staged)  # fmt: skip
            replies = replies[1:]
        for reply in replies:
            reply = [_text(r) if isinstance(r, bytes) else r for r in reply]
            if reply[0] == "running":
                raise ValidationError("task_id", f"{reply[1]} is running; stop it first")
            if reply[0] == "unknown":
                raise TaskNotFound(reply[1])
            if reply[0] == "gone":
                raise SessionNotFound(self.id)

    def _send(
        self,
        staged: list[_Pending],
        drops: list[tuple[list[str], bool, bool]],
        objects: dict[str, bytes],
    ) -> list[Any]:
        """The flush's one transaction; its replies (errors among them, not raised)."""
        scripts = self.client.scripts
        drop_runs = [
            scripts.with_queues(ids + self._cron_pending(ids) if chains else ids)
            for ids, _, chains in drops
        ]
        now = time.time()  # the enqueue time of every run of the flush
        runs = _runs(staged, now)
        replies: list[Any] = []
        for attempt in range(2):
            pipe = self.client.redis.pipeline(transaction=True)
            if objects:
                pipe.hset(self._keys.session_objects(self.id), mapping=dict(objects))  # type: ignore[arg-type]  # redis-py's Mapping is invariant in its key type
            if runs:
                scripts.enqueue([(self.id, False, b"", "", "session", self.client.user)], runs,
                                now=now, client=pipe)  # fmt: skip
            for (_ids, delete, _chains), dropped in zip(drops, drop_runs, strict=True):
                scripts.control("drop", self.id, {"delete": delete}, dropped, client=pipe)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                scripts.ensure_loaded()  # first use on this server, or it restarted
                continue
            break
        if not any(isinstance(r, Exception) for r in replies):
            scripts.ensure_replicated()  # SESSIONQ_WAIT_REPLICAS: acknowledged once replicated
        return replies

    def _cron_pending(self, ids: list[str]) -> list[str]:
        """The scheduled next firings of the cron tasks among `ids`: each firing of a cron
        task is a run of its own, named as the task, and the next one waits in the
        schedule; removing the task removes that one too, which ends its schedule."""
        redis, job = self.client.redis, self.client.scripts.rq.job
        pipe = redis.pipeline(transaction=False)
        for tid in ids:
            pipe.hget(job(tid), "cron")
        if not any(pipe.execute()):
            return []
        names = self._names()
        chains = {names[tid] for tid in ids if tid in names}
        candidates = [t for t, n in names.items() if n in chains and t not in ids]
        pipe = redis.pipeline(transaction=False)
        for tid in candidates:
            pipe.hmget(job(tid), "state", "cron")
        return [
            tid for tid, (state, cron) in zip(candidates, pipe.execute(), strict=True)
            if state == b"deferred" and cron
        ]  # fmt: skip

    def _unstage(self, staged: list[_Pending]) -> None:
        """Forget the ids given to tasks whose add was not written."""
        for p in staged:
            if p.task is not None and p.task.ids.get(self.id) == p.tid:
                del p.task.ids[self.id]

    def _apply_run_reply(self, reply: list[Any], staged: list[_Pending]) -> None:
        if len(reply) == 1 and reply[0] == "ok":
            return  # every run written under the id and name it was staged with
        by_id = {p.tid: p.task for p in staged}
        refused = {
            "exists": f"the session already has a task named {reply[-1]!r} "
                      "(task_pre_exist='raise')",
            "retry": "a task being replaced changed meanwhile; add again",
            "running": f"the task it would replace, {reply[-1]}, is running; stop it first "
                       "(task_pre_exist='replace')",
        }  # fmt: skip
        if reply[0] in refused or reply[0] in ("gone", "nodep"):
            self._unstage(staged)  # nothing was written
            if reply[0] == "gone":
                raise SessionNotFound(self.id)
            if reply[0] == "nodep":
                name = next((p.name for p in staged if p.tid == reply[1]), reply[1])
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
    def _names(self) -> dict[str, str]:
        raw = self.client.redis.hgetall(self._keys.session_tasks(self.id))
        return {codec.text(k): codec.text(v) for k, v in raw.items()}

    def list_ids(self) -> list[str]:
        """The session's task ids, in the order they were added."""
        return sorted(self._names(), key=task_order)

    def list_names(self) -> list[str]:
        """The session's task names, in the order they were added."""
        names = self._names()
        return [names[i] for i in sorted(names, key=task_order)]

    def __len__(self) -> int:
        return int(self.client.redis.hlen(self._keys.session_tasks(self.id)))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self._names()
        return iter(self.client.task_records(self.id, sorted(names, key=task_order), names))

    def __getitem__(self, task_id: str) -> dict[str, Any]:
        name = self.client.redis.hget(self._keys.session_tasks(self.id), task_id)
        if name is None:
            raise TaskNotFound(task_id)
        return self.client.task_records(self.id, [task_id], {task_id: codec.text(name)})[0]

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and bool(
            self.client.redis.hexists(self._keys.session_tasks(self.id), task_id)
        )

    # -- workflows (DPF) ---------------------------------------------------------------------
    def add_workflow(self, workflow: Workflow, identifier: str) -> list[str]:
        """Add every task of the DAG (parents first; a cycle raises before anything is
        written) in one round trip; their ids, also kept under `identifier`."""
        if not isinstance(workflow, Workflow):
            raise ValidationTypeError("workflow", f"expected a Workflow, got "
                                                  f"{type(workflow).__name__}")  # fmt: skip
        if not isinstance(identifier, str) or not identifier:
            raise ValidationError("identifier", "must be a non-empty string")
        tasks = workflow.tasks()
        for task in tasks:
            self._stage(task)
        self.flush()
        ids = [t.ids[self.id] for t in tasks]
        self._workflows[identifier] = ids
        self._rpc("add_workflow", {"identifier": identifier, "tasks": len(ids)})
        return ids

    def add_operator(self, task: Task, identifier: str) -> list[str]:
        """Add a task and all its ancestors as the workflow `identifier` (DPF)."""
        return self.add_workflow(Workflow([task]), identifier)

    def workflow_ids(self, identifier: str) -> list[str]:
        return list(self._workflows.get(identifier, []))

    def flush_workflows(self) -> None:
        """Drop this handle's workflow handles (the tasks stay in the session)."""
        self._workflows.clear()

    # -- control (narupatools) ---------------------------------------------------------------
    def _control(self, name: str, result: dict[str, bool]) -> None:
        if not result.get(self.id):
            raise (
                SessionNotFound(self.id)
                if not self._exists()
                else ValidationError(
                    "session", f"{name} was not accepted (session is {self.status})"
                )
            )
        self._rpc(name, {})

    def _exists(self) -> bool:
        return bool(self.client.redis.hexists(self._keys.session(self.id), "status"))

    def pause(self) -> None:
        """No further run starts after this returns; running ones see should_stop."""
        self._control("pause", self.client.pause(self.id))

    def play(self) -> None:
        """Release the held runs in order and run."""
        self._control("play", self.client.play(self.id))

    def step(self) -> None:
        """Release exactly one run (the oldest held); the session stays paused."""
        self._control("step", self.client.step(self.id))

    def stop(self) -> None:
        """Cancel the queued runs and stop the running ones."""
        self._control("stop", self.client.stop(self.id))

    def restart(self, failed_only: bool = False) -> None:
        """Run the ended tasks again (only the failed ones with failed_only)."""
        _check_flag(failed_only, "failed_only")
        self._control("restart", self.client.restart(self.id, failed_only=failed_only))

    def run(self, block: bool = False, timeout: float | None = None) -> None:
        """Play; with block, wait for the end and raise TaskFailed if a run failed."""
        self.play()
        if block:
            self.wait(timeout)
            self.health_check()

    def health_check(self) -> None:
        """Raise TaskFailed (with the remote traceback or exit status) if a run failed."""
        failed = self.client.redis.hget(self._keys.session(self.id), "failed")
        if not self.config.force_status_from_logs and not int(failed or 0):
            return
        for record in self:
            if record["state"] == TaskState.FAILED:
                raise TaskFailed(self.id, record["id"], record["error"] or "failed")

    def progress(self) -> dict[str, Any]:
        """Counts by state, total, done, fraction done (0.0-1.0) and the status; recounted
        from the task records when the config says force_status_from_logs."""
        raw = self.client.redis.hgetall(self._keys.session(self.id))
        if not raw:
            raise SessionNotFound(self.id)
        state = {codec.text(k): codec.text(v) for k, v in raw.items()}
        if self.config.force_status_from_logs:
            counts = {s.value: 0 for s in TaskState}
            for record in self:
                if record["state"] in counts:
                    counts[record["state"]] += 1
        else:
            counts = {s.value: int(state.get(s.value) or 0) for s in TaskState}
        total = sum(counts.values())
        done = counts["succeeded"] + counts["failed"] + counts["canceled"]
        status = state.get("status", "Pending")
        if self.config.force_status_from_logs and status in ("Running", "Pending") and total \
                and done == total:  # fmt: skip
            status = "Failed" if counts["failed"] else "Completed"
        return {"status": status, "tasks": counts, "total": total, "done": done,
                "fraction": done / total if total else 0.0}  # fmt: skip

    def wait(self, timeout: float | None = None) -> str:
        """Block until the session ends (or `timeout` seconds pass); its status then."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ValidationTypeError("timeout", f"expected seconds >= 0 or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            raw = self.client.redis.hmget(self._keys.session(self.id), "status", "seq")
            if raw[0] is None:
                raise SessionNotFound(self.id)
            status = codec.text(raw[0])
            if status in ENDED_STATUSES:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return status
            for event in self.client.listen(self.id, after=int(raw[1] or 0),
                                            timeout=min(left or 1.0, 1.0)):  # fmt: skip
                if event["type"] in TERMINAL_EVENTS:
                    break

    # -- progress and events (DPF) -----------------------------------------------------------
    def listen(self, **options: Any) -> Iterator[dict[str, Any]]:
        """This session's events (Client.listen with ids=[this session])."""
        return self.client.listen(self.id, **options)

    def listen_to_progress(self, out: TextIO | None = None) -> None:
        """A progress bar that moves as runs finish or report progress, until the end."""
        from sessionq.producer.follow import follow

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
        from sessionq.producer.client import format_event

        after = int(self.client.redis.hget(self._keys.session(self.id), "seq") or 0)
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
                            stream.write(format_event(event) + "\n")
                            stream.flush()
                        if stop.is_set():
                            break

        thread = threading.Thread(target=pump, name=f"file-logger-{self.id}", daemon=True)
        thread.start()
        self._threads.append((thread, stop))

    def start_emitting_rpc_log(self) -> None:
        """From now on every operation on this session, from any handle, is also an
        `op.<name>` event."""
        if not self._exists():
            raise SessionNotFound(self.id)
        self.client.redis.hset(self._keys.session(self.id), "rpc_log", 1)
        self._rpc_log = True
        self._rpc("start_emitting_rpc_log", {})

    def _rpc(self, name: str, data: dict[str, Any]) -> None:
        """An op.<name> event, when the rpc log is on (as it was when this handle opened, or
        since this handle turned it on)."""
        if self._rpc_log:
            self.client.scripts.emit(self.id, [(f"op.{name}", data.get("task"), data)])

    # -- end -----------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Destroy the session: queued runs canceled, running ones stopped, data gone."""
        self._rpc("destroy", {})
        if not self.client.destroy(self.id).get(self.id):
            raise SessionNotFound(self.id)
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_flag(value: object, field: str) -> None:
    if not isinstance(value, bool):
        raise ValidationTypeError(field, f"expected True or False, got {value!r}")
