"""The Lua scripts and the key lists they take: the one module that writes RQ's structures.

Every state change of a session or run is one script call - one round trip, atomic - that
keeps RQ's job hash, queues and registries as RQ's own readers (`rq info`, `Job.fetch`) expect,
and ours (counters, indexes, events) beside them. Lua gets every key through KEYS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis import Redis

from common import codec
from common.keys import CONTROL_QUEUE, Keys, session_of
from common.models import Status, rq_time
from common.rqcompat import RQKeys, rq_keys
from common.settings import Settings

OP_PREFIX = "sessionq.op:"  # func name prefix of control operations in RQ job data
_SCRIPT_NAMES = ("claim", "run", "enqueue", "destroy", "recover", "emit", "log", "request")


@cache
def lua_source(name: str) -> str:
    """A script's source: the shared prelude, then the script itself (claim needs none)."""
    folder = resources.files("common") / "lua"
    body = (folder / f"{name}.lua").read_text()
    if name == "claim":
        return body
    return (folder / "prelude.lua").read_text() + "\n" + body


def now_ms() -> int:
    return int(time.time() * 1000)


class Scripts:
    """The scripts registered on one connection, with the key lists they need."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.rq: RQKeys = rq_keys(settings.prefix)
        self._script = {name: redis.register_script(lua_source(name)) for name in _SCRIPT_NAMES}
        self._idx = [self.keys.idx_status(s.value) for s in Status] + [self.keys.run_counts()]
        self._blocks: dict[tuple[str, str], list[str]] = {}

    # -- key lists -------------------------------------------------------------------------
    def run_block(self, run_id: str, queue: str) -> list[str]:
        """The 11 keys of one run (see prelude.lua `run_block`), cached per session and queue."""
        sid = session_of(run_id)
        base = self._blocks.get((sid, queue))
        if base is None:
            k, rq = self.keys, self.rq
            base = [
                "",
                k.session(sid),
                k.history(sid),
                k.events_channel(sid),
                k.session_running(sid),
                k.session_held(sid),
                rq.started(queue),
                rq.finished(queue),
                rq.failed(queue),
                rq.queue(queue),
                k.wake(queue),
            ]
            if len(self._blocks) > 4096:
                self._blocks.clear()
            self._blocks[(sid, queue)] = base
        block = base.copy()
        block[0] = self.rq.job(run_id)
        return block

    def _head(self, now: float) -> list[Any]:
        return [int(now * 1000), rq_time(now), self.settings.history_cap]

    # -- scripts ---------------------------------------------------------------------------
    def enqueue(
        self,
        sessions: Sequence[tuple[str, bool, bytes, str, str, str]],
        runs: Sequence[tuple[int, str, str, str, str, dict[str, Any]]],
        *,
        worker: str = "",
        now: float | None = None,
        client: Any = None,
    ) -> list[Any]:
        """Create sessions (sid, is_new, record, name, kind, owner) and add runs to them
        (session index, run id, name, state, queue, job fields). One atomic call."""
        now = time.time() if now is None else now
        k, rq = self.keys, self.rq
        keys: list[str] = [k.events_all_channel(), k.sessions(), rq.queues_set, *self._idx]
        plan_sessions = []
        for sid, is_new, record, name, kind, owner in sessions:
            keys += [
                k.session(sid),
                k.history(sid),
                k.events_channel(sid),
                k.session_tasks(sid),
                k.session_held(sid),
                k.idx_kind(kind),
                k.idx_owner(owner),
            ]
            plan_sessions.append([sid, is_new, record, name])
        queues: dict[str, int] = {}
        for run in runs:
            queues.setdefault(run[4], len(queues) + 1)
        for queue in queues:
            keys += [rq.queue(queue), k.wake(queue)]
        plan_runs = []
        for s_index, run_id, name, state, queue, fields in runs:
            keys.append(rq.job(run_id))
            flat: list[Any] = [s_index + 1, run_id, name, state, queues[queue]]
            for key, value in fields.items():
                flat += (key, value)
            plan_runs.append(flat)
        plan = codec.encode_for_lua([plan_sessions, len(queues), plan_runs])
        args = [*self._head(now), worker, plan]
        reply = self._script["enqueue"](keys=keys, args=args, client=client or self.redis)
        return list(reply)

    def claim(self, worker: str, queues: Sequence[str], batch: int) -> list[tuple[str, str]]:
        """Move up to `batch` run ids from `queues` (in priority order) onto the worker's list;
        returns [(run id, queue)]."""
        keys = [self.keys.worker_runs(worker)]
        keys += [self.rq.queue(q) for q in queues]
        keys += [self.keys.wake(q) for q in queues]
        flat = self._script["claim"](keys=keys, args=[len(queues), batch])
        return [(flat[i + 1].decode(), queues[int(flat[i]) - 1]) for i in range(0, len(flat), 2)]

    def worker_head(self, worker: str) -> list[str]:
        return [
            self.keys.events_all_channel(),
            self.keys.worker_runs(worker),
            self.rq.worker(worker),
            *self._idx,
        ]

    def step(
        self,
        head: list[str],
        worker: str,
        finish: tuple[str, str, str, bytes, int] | None,
        start: tuple[str, str] | None,
    ) -> list[Any]:
        """Finish (run id, queue, outcome, payload, duration ms) and/or start (run id, queue)."""
        now = time.time()
        keys = head.copy()
        args: list[Any] = [*self._head(now), worker]
        if finish is not None:
            run_id, queue, outcome, payload, duration_ms = finish
            keys += self.run_block(run_id, queue)
            args += [run_id, session_of(run_id), outcome, payload, duration_ms]
        else:
            args += ["", "", "", "", 0]
        if start is not None:
            keys += self.run_block(start[0], start[1])
            args += [start[0], session_of(start[0])]
        else:
            args += ["", ""]
        reply = list(self._script["run"](keys=keys, args=args))
        reply[0], reply[2] = reply[0].decode(), reply[2].decode()
        if reply[2] != "run" and reply[3]:
            reply[3] = reply[3].decode()
        return reply

    def recover(
        self, worker: str, runs: Sequence[tuple[str, str]], reason: str, *, unregister: bool
    ) -> list[str]:
        """Give back a worker's runs [(run id, queue)]; returns sessions to finish destroying."""
        now = time.time()
        keys = [self.keys.events_all_channel(), self.keys.workers(), self.rq.workers_set]
        keys += [*self._idx, self.keys.worker_runs(worker), self.rq.worker(worker)]
        args: list[Any] = [*self._head(now), worker, codec.encode(reason), int(unregister)]
        for run_id, queue in runs:
            keys += self.run_block(run_id, queue)
            args += [run_id, session_of(run_id)]
        return [s.decode() for s in self._script["recover"](keys=keys, args=args)]

    def destroy(
        self,
        sid: str,
        runs: Sequence[tuple[str, str]],
        *,
        kind: str,
        owner: str,
        names_field: str = "",
        worker: str = "",
    ) -> list[Any]:
        """Destroy one session whose runs are [(run id, queue)]; see destroy.lua."""
        now = time.time()
        k, rq = self.keys, self.rq
        keys = [k.events_all_channel(), k.sessions(), k.names(), *self._idx]
        keys += [
            k.session(sid),
            k.history(sid),
            k.events_channel(sid),
            k.session_tasks(sid),
            k.session_names(sid),
            k.session_task_keys(sid),
            k.session_held(sid),
            k.session_running(sid),
            k.session_objects(sid),
            k.session_state(sid),
            k.logs(sid),
            k.idx_kind(kind),
            k.idx_owner(owner),
        ]
        args: list[Any] = [*self._head(now), worker, sid, names_field]
        args.append(self.settings.destroyed_history_ttl_s)
        for run_id, queue in runs:
            keys += [rq.job(run_id), rq.started(queue), rq.finished(queue), rq.failed(queue)]
            args.append(run_id)
        reply = self._script["destroy"](keys=keys, args=args)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    def request(
        self,
        sid: str,
        op: str,
        args: Sequence[Any],
        *,
        status: str = "",
        event: str = "",
        worker: str = "",
    ) -> bool:
        """Put operation `op` on `sid` on the control queue (setting status / emitting event
        with it); False when the session does not exist."""
        now = time.time()
        op_id = f"op-{uuid.uuid4().hex[:16]}"
        k, rq = self.keys, self.rq
        keys = [k.events_all_channel(), *self._idx, rq.queue(CONTROL_QUEUE)]
        keys += [k.wake(CONTROL_QUEUE), rq.job(op_id)]
        keys += [k.session(sid), k.history(sid), k.events_channel(sid), rq.queues_set]
        fields = {
            "data": codec.encode([f"{OP_PREFIX}{op}", None, list(args), {}]),
            "origin": CONTROL_QUEUE,
            "status": "queued",
            "state": "queued",
            "enqueued_at": rq_time(now),
        }
        argv: list[Any] = [*self._head(now), worker, sid, status, event, op_id]
        for key, value in fields.items():
            argv += [key, value]
        return bool(self._script["request"](keys=keys, args=argv))

    def emit(
        self,
        sid: str,
        events: Iterable[tuple[str, str | None, dict[str, Any] | None]],
        *,
        worker: str = "",
        client: Any = None,
    ) -> int:
        """Emit (type, task id, data) events of one session; returns the last seq (0: gone)."""
        k = self.keys
        keys = [k.events_all_channel(), k.session(sid), k.history(sid), k.events_channel(sid)]
        args: list[Any] = [now_ms(), self.settings.history_cap, worker, sid]
        for etype, task, data in events:
            args += [etype, task or "", codec.encode(data or {})]
        return int(self._script["emit"](keys=keys, args=args, client=client or self.redis))

    def log(
        self, sid: str, task_id: str, lines: Sequence[tuple[str, str]], *, worker: str = ""
    ) -> None:
        """Append (stream, line) pairs of one run to the session's logs, as task.log events."""
        k = self.keys
        keys = [k.events_all_channel(), k.session(sid), k.history(sid), k.events_channel(sid)]
        keys.append(k.logs(sid))
        args: list[Any] = [now_ms(), self.settings.history_cap, worker, sid, task_id]
        args.append(self.settings.logs_cap)
        for stream, line in lines:
            args += [stream, line]
        self._script["log"](keys=keys, args=args)
