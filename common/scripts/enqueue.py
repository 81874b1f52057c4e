"""Creating sessions and adding runs (enqueue.lua, contract ENQUEUE), in one atomic call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sessionq.common import codec
from sessionq.common.jobhash import JobFields
from sessionq.common.scripts.base import ScriptsBase, texts
from sessionq.common.scripts.contracts import ENQUEUE

# session index, run id, name, state, queue, job fields, options (enqueue.lua)
Run = tuple[int, str, str, str, str, JobFields, dict[str, Any] | None]
# sid, is new, record bytes, name, kind, owner
NewSession = tuple[str, bool, bytes, str, str, str]


class EnqueueCalls(ScriptsBase):
    def enqueue(
        self,
        sessions: Sequence[NewSession],
        runs: Sequence[Run],
        *,
        worker: str = "",
        now: float | None = None,
        client: Any = None,
        claim: str = "",
        retention_ms: int | None = None,
    ) -> list[Any]:
        """Create sessions (sid, is_new, record, name, kind, owner) and add runs to them
        (session index, run id, name, state, queue, job fields, options). One atomic call;
        see enqueue.lua for the options and the reply; `claim` is the persistent name
        (owner/name) the one new session takes. Given a pipeline as `client`, the call
        is queued on it (the caller has loaded the scripts: ensure_loaded). `retention_ms`:
        the new sessions are removed that long after they end (None: kept)."""
        keys, args = self.enqueue_call(sessions, runs, worker=worker, now=now, claim=claim,
                                       retention_ms=retention_ms)  # fmt: skip
        return texts(self.call("enqueue", keys, args, client=client))

    def enqueue_call(
        self,
        sessions: Sequence[NewSession],
        runs: Sequence[Run],
        *,
        worker: str = "",
        now: float | None = None,
        claim: str = "",
        retention_ms: int | None = None,
    ) -> tuple[list[str], list[Any]]:
        """The keys and args of `enqueue`, sent by no one: for a caller with its own client."""
        now = time.time() if now is None else now
        k, rq = self.keys, self.rq
        fixed = {**self.globals, "sessions": k.sessions(), "rq_queues": rq.queues_set,
                 "schedule": k.schedule(), "waiting": k.waiting(), "names": k.names(),
                 "idle_workers": k.idle_workers(), "workers": k.workers(),
                 "epoch": k.data_epoch()}  # fmt: skip
        session_blocks, plan_sessions = [], []
        for sid, is_new, record, name, kind, owner in sessions:
            session_blocks.append(ENQUEUE.block("session", {
                "session": k.session(sid), "history": k.history(sid),
                "chan": k.events_channel(sid), "tasks": k.session_tasks(sid),
                "held": k.session_held(sid), "kind": k.idx_kind(kind),
                "owner": k.idx_owner(owner), "names": k.session_names(sid),
                "task_keys": k.session_task_keys(sid), "running": k.session_running(sid),
            }))  # fmt: skip
            plan_sessions.append([sid, is_new, record, name])
        queues: dict[str, int] = {}
        for run in runs:
            queues.setdefault(run[4], len(queues) + 1)
        queue_blocks = [
            ENQUEUE.block("queue", {"list": rq.queue(q), "wake": k.wake(q),
                                    "failed": rq.failed(q), "started": rq.started(q),
                                    "idle_line": k.idle(q)})
            for q in queues
        ]  # fmt: skip
        job_blocks = [[rq.job(run[1])] for run in runs]
        keys = ENQUEUE.pack_keys(
            fixed, {"session": session_blocks, "queue": queue_blocks, "job": job_blocks}
        )
        extra: dict[str, int] = {}

        def key_index(run_id: str) -> int:
            """The KEYS index (KX) of an extra job key: a parent's, or a replaced task's."""
            if run_id not in extra:
                keys.append(rq.job(run_id))
                extra[run_id] = len(keys)  # Lua counts from 1
            return extra[run_id]

        plan_runs = []
        plan_shared: list[list[Any]] = []
        shared_index: dict[int, int] = {}  # by id(): the runs hold each shared mapping alive
        for s_index, run_id, name, state, queue, fields, opts in runs:
            if opts and (opts.get("deps") or opts.get("old_id")):
                opts = dict(opts)  # (the caller's stays as it was)
                if opts.get("deps"):
                    opts["dep_keys"] = [key_index(p) for p in opts["deps"]]
                if opts.get("old_id"):
                    opts["old"] = key_index(opts["old_id"])
            data, sq, alike, extra_fields = fields
            shared = shared_index.get(id(alike))
            if shared is None:
                plan_shared.append([x for pair in alike.items() for x in pair])
                shared = shared_index[id(alike)] = len(plan_shared)  # Lua counts from 1
            flat = [s_index + 1, run_id, name, state, queues[queue], opts or None, shared,
                    data, sq]  # fmt: skip
            if extra_fields:
                flat.append([x for pair in extra_fields.items() for x in pair])
            plan_runs.append(flat)
        plan = codec.encode_for_lua(
            [plan_sessions, list(queues), plan_runs, claim, plan_shared, retention_ms]
        )
        args = ENQUEUE.pack_args({
            **self.clock(now), "worker": worker, "nsessions": len(sessions),
            "nqueues": len(queues), "nruns": len(runs),
            "fresh_ms": int(self.settings.heartbeat_late_s * 1000), "plan": plan,
        })  # fmt: skip
        return keys, args
