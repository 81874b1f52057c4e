"""Session operations: control.lua (pause, play, step, stop, restart, drop, resolve, fire,
settle), request.lua (accept an operation onto the control queue), destroy.lua, recover.lua
and recount.lua (the global run counters from the sessions')."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.keys import CONTROL_QUEUE, session_of
from sessionq.common.records import SessionRecord, parse_record
from sessionq.common.scripts import transport
from sessionq.common.scripts.base import ScriptsBase, texts
from sessionq.common.scripts.contracts import (
    CONTROL,
    DESTROY,
    DESTROY_RUN,
    HEARTBEAT,
    REAP,
    RECOUNT,
    RECOVER,
    REQUEST,
    RUN_BLOCK,
)
from sessionq.common.times import rq_time
from sessionq.common.vocabulary import RQ_STATUS, TaskState

OP_PREFIX = "sessionq.op:"  # func name prefix of control operations in RQ job data
REMOVE_BATCH = 100  # sessions read, then removed, per pipeline (remove_ended)
log = logging.getLogger(__name__)
_DESTROY_AT = [RUN_BLOCK.index(name) for name in DESTROY_RUN]  # (run_block's cached layout)


class Recovered(NamedTuple):
    """recover.lua's reply: whether it gave the worker's runs back (not when the reaper's
    call found the worker alive again), the sessions whose destroy to finish, and how many
    started runs it charged an attempt."""

    done: bool
    destroying: list[str]
    charged: int = 0


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

    def resolve(
        self, sid: str, runs: Sequence[tuple[str, str, Sequence[str]]],
        states: Mapping[str, str | None], *, worker: str = "",
    ) -> list[Any]:  # fmt: skip
        """control.lua resolve: judge runs of session `sid` waiting on their parents
        (resolve_call); the reply names the runs that ended."""
        return texts(self.call("control", *self.resolve_call(sid, runs, states, worker=worker)))

    def resolve_call(
        self, sid: str, runs: Sequence[tuple[str, str, Sequence[str]]],
        states: Mapping[str, str | None], *, worker: str = "",
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """The keys and args of control.lua resolve over runs (run id, queue, parent ids) of
        session `sid`: a parent of this partition by its job key (read in the call), one of
        another by its state in `states`, read there just before (None: no such task; keys.
        Layout: no call spans two partitions)."""
        first_extra = self.control_extra_index(len(runs))
        extra: dict[str, int] = {}
        parents = []
        for _run_id, _queue, deps in runs:
            parents.append([(states[p] or "") if self.foreign(p)
                            else extra.setdefault(p, first_extra + len(extra))
                            for p in deps])  # fmt: skip
        return self.control_call(
            "resolve", sid, {"parents": parents}, [(r[0], r[1]) for r in runs],
            [self.rq.job(p) for p in extra], worker=worker,
        )  # fmt: skip

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
        keys, args = self.destroy_call(sid, runs, kind=kind, owner=owner,
                                       names_field=names_field, worker=worker)  # fmt: skip
        return texts(self.call("destroy", keys, args))

    def destroy_call(
        self, sid: str, runs: Sequence[tuple[str, str]], *, kind: str, owner: str,
        names_field: str = "", worker: str = "", ended_only: bool = False,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """The keys and args of `destroy`, sent by no one; `ended_only`: the removal of an
        ended session (retention, prune) - only if it has ended, its history with it."""
        k = self.keys
        fixed = {**self.globals, "sessions": k.sessions(), "names": k.names(),
                 "session": k.session(sid), "history": k.history(sid),
                 "chan": k.events_channel(sid), "tasks": k.session_tasks(sid),
                 "task_names": k.session_names(sid), "task_keys": k.session_task_keys(sid),
                 "held": k.session_held(sid), "running": k.session_running(sid),
                 "objects": k.session_objects(sid), "state": k.session_state(sid),
                 "logs": k.logs(sid), "kind_index": k.idx_kind(kind),
                 "owner_index": k.idx_owner(owner), "schedule": k.schedule(),
                 "waiting": k.waiting(), "throttled": k.session_throttled(sid)}  # fmt: skip
        blocks = [[block[i] for i in _DESTROY_AT] for block in
                  (self.run_block(run_id, queue) for run_id, queue in runs)]  # fmt: skip
        keys = DESTROY.pack_keys(fixed, {"run": blocks})
        history_ttl = 0 if ended_only else self.settings.destroyed_history_ttl_s
        args = DESTROY.pack_args(
            {**self.clock(time.time()), "worker": worker, "sid": sid, "names_field": names_field,
             "history_ttl": history_ttl, "ended_only": int(ended_only), "nruns": len(runs)},
            {"run": [(run_id,) for run_id, _ in runs]},
        )  # fmt: skip
        return keys, args

    def remove_ended(self, sids: Sequence[str], *, worker: str = "") -> list[str]:
        """Remove these sessions if they have ended (retention, prune): each with everything
        under it - runs, RQ job hashes and registry entries, logs, history, index entries -
        and its runs off the global counters, by destroy.lua's removal path in one call each.
        A session that runs again, or whose stop is still under way, is left; the ids removed.
        Three round trips and one pipeline of script calls per REMOVE_BATCH sessions."""
        removed: list[str] = []
        for at in range(0, len(sids), REMOVE_BATCH):
            calls = self._removals(list(sids[at : at + REMOVE_BATCH]), worker)
            if not calls:
                continue
            replies = self._pipelined("destroy", [(keys, args) for _, keys, args in calls])
            self.ensure_replicated()
            removed += [sid for (sid, _, _), reply in zip(calls, replies, strict=True)
                        if texts(reply)[0] == "destroyed"]  # fmt: skip
        return removed

    def _removals(self, sids: list[str], worker: str) -> list[tuple[str, list[str], list[Any]]]:
        """(sid, keys, args) of the destroy call removing each of these sessions."""
        r, k = self.redis, self.keys
        pipe = r.pipeline(transaction=False)
        for sid in sids:
            pipe.hget(k.sessions(), sid)
            pipe.hkeys(k.session_tasks(sid))
        read = pipe.execute()
        found: list[tuple[str, SessionRecord, list[str]]] = []
        for i, sid in enumerate(sids):
            raw, run_ids = read[2 * i], [codec.text(t) for t in read[2 * i + 1]]
            try:
                if raw is None:
                    raise CodecError("no record (destroyed meanwhile)")
                found.append((sid, parse_record(raw, sid), run_ids))
            except CodecError as exc:
                log.warning("removal of session %s: left: %s", sid, exc)
                r.zrem(k.retention(), sid)
        queues = iter(self.with_queues([run for _, _, ids in found for run in ids]))
        calls = []
        for sid, record, run_ids in found:
            runs = [next(queues) for _ in run_ids]
            names_field = f"{record.owner}/{record.name}" if record.persistent else ""
            keys, args = self.destroy_call(
                sid, runs, kind=record.kind, owner=record.owner, names_field=names_field,
                worker=worker, ended_only=True,
            )  # fmt: skip
            calls.append((sid, keys, args))
        return calls

    def _pipelined(self, name: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Script `name` called once per (keys, args), in one pipeline; the scripts are
        loaded and the calls sent again if the server did not have them."""

        def send() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                self.call(name, keys, args, client=pipe)
            return list(pipe.execute(raise_on_error=False))

        replies = send()
        if any(transport.missing(reply) for reply in replies):
            self.ensure_loaded()  # a restarted or another server: nothing was run
            replies = send()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def recover(
        self, worker: str, runs: Sequence[tuple[str, str]], reason: str, *, unregister: bool,
        stale_ms: int = 0, charged: int = 0, current: str | None = None,
    ) -> Recovered:  # fmt: skip
        """Give back a worker's runs [(run id, queue)] - with `stale_ms`, only if its last
        heartbeat is that old by Redis's clock; `charged` of its started runs were charged by
        calls before; `current`: the run its supervisor saw it run ('': none; None: nobody
        saw - recover.lua)."""
        k, rq = self.keys, self.rq
        fixed = {**self.globals, "workers": k.workers(), "rq_workers": rq.workers_set,
                 "runs": k.worker_runs(worker), "rq_worker": rq.worker(worker),
                 "inbox": k.worker_inbox(worker), "idle_workers": k.idle_workers(),
                 "handed": k.worker_handed(worker), "schedule": k.schedule()}  # fmt: skip
        keys = RECOVER.pack_keys(fixed, {"run": [self.run_block(r, q) for r, q in runs]})
        args = RECOVER.pack_args(
            {**self.clock(time.time()), "worker": worker, "reason": codec.encode(reason),
             "unregister": int(unregister), "stale_ms": stale_ms, "charged": charged,
             "seen": int(current is not None), "current": current or "", "nruns": len(runs)},
            {"run": [(run_id, session_of(run_id)) for run_id, _ in runs]},
        )  # fmt: skip
        done, destroying, ncharged = self.call("recover", keys, args)
        return Recovered(bool(done), [s.decode() for s in destroying], int(ncharged))

    def heartbeat(
        self, worker: str, counts: Mapping[str, int] | None = None, *, vouch: bool = False,
        client: Any = None,
    ) -> Any:  # fmt: skip
        """One heartbeat of `worker` on Redis's clock (heartbeat.lua), adding `counts` to
        RQ's counters of it; `vouch`: its supervisor's, for a child still registered. The
        reply is {now, steady since} (ms), or a pipeline's when `client` is one."""
        s, g = self.settings, self.gkeys
        keys = HEARTBEAT.pack_keys({"workers": g.workers(), "rq_worker": self.grq.worker(worker),
                                    "steady": g.worker_steady(worker)})  # fmt: skip
        pairs = list((counts or {}).items())
        args = HEARTBEAT.pack_args(
            {"worker": worker, "now_iso": rq_time(time.time()),
             "late_ms": int(s.heartbeat_late_s * 1000),
             "keep_ms": int(2 * s.heartbeat_ttl_s * 1000),
             "expire_s": int(s.heartbeat_ttl_s) + 60, "vouch": int(vouch),
             "ncounts": len(pairs)},
            {"count": pairs},
        )  # fmt: skip
        return self.call("heartbeat", keys, args, client=client)

    def reap_candidates(self, worker: str, *, steady_s: float, lock_s: float) -> list[str]:
        """The workers lost by Redis's clock, if `worker` may judge now (reap.lua)."""
        s = self.settings
        g = self.gkeys
        keys = REAP.pack_keys({"workers": g.workers(), "steady": g.worker_steady(worker),
                               "lock": g.lock("reaper")})  # fmt: skip
        args = REAP.pack_args(
            {"worker": worker, "ttl_ms": int(s.heartbeat_ttl_s * 1000),
             "steady_ms": int(steady_s * 1000), "late_ms": int(s.heartbeat_late_s * 1000),
             "lock_ms": max(1, int(lock_s * 1000))}
        )  # fmt: skip
        return [n.decode() for n in self.call("reap", keys, args)]

    def recount(self) -> dict[str, int]:
        """Set the global run counters to the sum of the sessions'; the corrections made."""
        keys = RECOUNT.pack_keys({"counters": self.keys.run_counts(),
                                  "sessions": self.keys.sessions()})  # fmt: skip
        flat = texts(self.call("recount", keys, RECOUNT.pack_args({})))
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

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
        op_id = f"{self.op_tag(sid)}op-{uuid.uuid4().hex[:16]}"
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
            "status": RQ_STATUS[TaskState.QUEUED],
            "state": TaskState.QUEUED.value,
            "enqueued_at": rq_time(now),
        }
        argv = REQUEST.pack_args(
            {**self.clock(now), "worker": worker, "sid": sid, "status": status, "event": event,
             "op_id": op_id, "op": op, "nfields": len(fields)},
            {"field": list(fields.items())},
        )  # fmt: skip
        return keys, argv
