"""Session operations: control.lua (pause, play, step, stop, restart, drop, resolve, fire),
request.lua (accept an operation onto the control queue), destroy.lua and recover.lua."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from sessionq.common import codec
from sessionq.common.keys import CONTROL_QUEUE, session_of
from sessionq.common.models import rq_time
from sessionq.common.scripts.base import ScriptsBase, texts
from sessionq.common.scripts.contracts import CONTROL, DESTROY, RECOVER, REQUEST

OP_PREFIX = "sessionq.op:"  # func name prefix of control operations in RQ job data


class ControlCalls(ScriptsBase):
    def _session_keys(self, sid: str) -> dict[str, str]:
        k = self.keys
        return {"session": k.session(sid), "history": k.history(sid),
                "chan": k.events_channel(sid), "running": k.session_running(sid),
                "held": k.session_held(sid)}  # fmt: skip

    @staticmethod
    def control_extra_index(nruns: int) -> int:
        """The KEYS index of the first extra key of a control call over `nruns` runs."""
        return CONTROL.extra_index({"run": nruns})

    def control(
        self, op: str, sid: str, plan: dict[str, Any], runs: Sequence[tuple[str, str]] = (),
        extra: Sequence[str] = (), *, worker: str = "", client: Any = None,
    ) -> list[Any]:  # fmt: skip
        """One control.lua step on session `sid` over runs [(run id, queue)]; `extra` keys
        follow the run blocks (plan entries name them by control_extra_index + i)."""
        keys, args = self.control_call(op, sid, plan, runs, extra, worker=worker)
        return texts(self.call("control", keys, args, client=client))

    def control_call(
        self, op: str, sid: str, plan: dict[str, Any], runs: Sequence[tuple[str, str]] = (),
        extra: Sequence[str] = (), *, worker: str = "",
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """The keys and args of `control`, sent by no one: for a caller with its own client."""
        k = self.keys
        fixed = {**self.globals, "schedule": k.schedule(), "waiting": k.waiting(),
                 **self._session_keys(sid), "tasks": k.session_tasks(sid),
                 "task_names": k.session_names(sid),
                 "task_keys": k.session_task_keys(sid)}  # fmt: skip
        keys = CONTROL.pack_keys(
            fixed, {"run": [self.run_block(run_id, queue) for run_id, queue in runs]}, extra
        )
        plan = {**plan, "runs": [r[0] for r in runs]}
        args = CONTROL.pack_args({**self.clock(time.time()), "worker": worker, "op": op,
                                  "sid": sid, "nruns": len(runs),
                                  "plan": codec.encode_for_lua(plan)})  # fmt: skip
        return keys, args

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
        k, rq = self.keys, self.rq
        fixed = {**self.globals, "sessions": k.sessions(), "names": k.names(),
                 "session": k.session(sid), "history": k.history(sid),
                 "chan": k.events_channel(sid), "tasks": k.session_tasks(sid),
                 "task_names": k.session_names(sid), "task_keys": k.session_task_keys(sid),
                 "held": k.session_held(sid), "running": k.session_running(sid),
                 "objects": k.session_objects(sid), "state": k.session_state(sid),
                 "logs": k.logs(sid), "kind_index": k.idx_kind(kind),
                 "owner_index": k.idx_owner(owner), "schedule": k.schedule(),
                 "waiting": k.waiting()}  # fmt: skip
        blocks = [
            DESTROY.block("run", {"job": rq.job(run_id), "started": rq.started(queue),
                                  "finished": rq.finished(queue), "failed": rq.failed(queue)})
            for run_id, queue in runs
        ]  # fmt: skip
        keys = DESTROY.pack_keys(fixed, {"run": blocks})
        args = DESTROY.pack_args(
            {**self.clock(time.time()), "worker": worker, "sid": sid, "names_field": names_field,
             "history_ttl": self.settings.destroyed_history_ttl_s, "nruns": len(runs)},
            {"run": [(run_id,) for run_id, _ in runs]},
        )  # fmt: skip
        return texts(self.call("destroy", keys, args))

    def recover(
        self, worker: str, runs: Sequence[tuple[str, str]], reason: str, *, unregister: bool
    ) -> list[str]:
        """Give back a worker's runs [(run id, queue)]; returns sessions to finish destroying."""
        k, rq = self.keys, self.rq
        fixed = {**self.globals, "workers": k.workers(), "rq_workers": rq.workers_set,
                 "runs": k.worker_runs(worker), "rq_worker": rq.worker(worker),
                 "inbox": k.worker_inbox(worker), "idle_workers": k.idle_workers(),
                 "handed": k.worker_handed(worker), "schedule": k.schedule()}  # fmt: skip
        keys = RECOVER.pack_keys(fixed, {"run": [self.run_block(r, q) for r, q in runs]})
        args = RECOVER.pack_args(
            {**self.clock(time.time()), "worker": worker, "reason": codec.encode(reason),
             "unregister": int(unregister), "nruns": len(runs)},
            {"run": [(run_id, session_of(run_id)) for run_id, _ in runs]},
        )  # fmt: skip
        return [s.decode() for s in self.call("recover", keys, args)]

    def request(
        self, sid: str, op: str, args: Sequence[Any], *, status: str = "", event: str = "",
        worker: str = "",
    ) -> bool:  # fmt: skip
        """Put operation `op` on `sid` on the control queue (setting status / emitting event
        with it); False when the session does not exist."""
        keys, argv = self.request_call(sid, op, args, status=status, event=event, worker=worker)
        return bool(self.call("request", keys, argv))

    def request_call(
        self, sid: str, op: str, args: Sequence[Any], *, status: str = "", event: str = "",
        worker: str = "",
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """The keys and args of `request`, sent by no one: for a caller with its own client."""
        now = time.time()
        op_id = f"op-{uuid.uuid4().hex[:16]}"
        k, rq = self.keys, self.rq
        keys = REQUEST.pack_keys(
            {**self.globals, "control_queue": rq.queue(CONTROL_QUEUE),
             "control_wake": k.wake(CONTROL_QUEUE), "op_job": rq.job(op_id),
             "session": k.session(sid), "history": k.history(sid),
             "chan": k.events_channel(sid), "rq_queues": rq.queues_set}
        )  # fmt: skip
        fields = {
            "data": codec.encode([f"{OP_PREFIX}{op}", None, list(args), {}]),
            "origin": CONTROL_QUEUE,
            "status": "queued",
            "state": "queued",
            "enqueued_at": rq_time(now),
        }
        argv = REQUEST.pack_args(
            {**self.clock(now), "worker": worker, "sid": sid, "status": status, "event": event,
             "op_id": op_id, "op": op, "nfields": len(fields)},
            {"field": list(fields.items())},
        )  # fmt: skip
        return keys, argv
