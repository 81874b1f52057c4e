"""A worker's step (run.lua, contract STEP): finish runs, start runs, claim more - sent on the
worker's FastLane, pipelined, its replies read as named tuples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.keys import CONTROL_QUEUE, session_of
from sessionq.common.scripts.base import BLOCK_CACHE_MAX, ScriptsBase
from sessionq.common.scripts.contracts import STEP, TOOK
from sessionq.common.scripts.transport import FastLane, bulk
from sessionq.common.times import rq_time

Finish = tuple[str, str, str, bytes, int]  # run id, queue, outcome, payload, duration ms
# started or claimed run: run id, queue, result ('run', 'op', ...), data, sq, timeout, attempt
Started = tuple[str, str, str, Any, Any, Any, int]
_RUN_BLOCK_KEYS = STEP.key_blocks[1].size


class StartResult(StrEnum):
    """What a step (or a hand-over) says of a run it started or claimed for the worker."""

    RUN = "run"  # begin it
    OP = "op"  # an operation of the control queue: the worker carries it out
    HELD = "held"  # it waits on runs not ended yet
    SKIP = "skip"  # canceled, or not queued: nothing to do
    GONE = "gone"  # popped from a queue, and no such job
    FOREIGN = "foreign"  # popped from a queue, and no sessionq run (marked failed)
    BAD = "bad"  # an inbox entry that is not one (its run is started again from our list)


class Finished(NamedTuple):
    """How run.lua recorded one finish."""

    run_id: str
    queue: str
    result: str  # succeeded, failed, retrying, requeued, canceled, stale
    terminating: bool  # its session is being destroyed: the destroy is carried out now
    waited_on: bool  # it ended and runs wait on it: judge them now (control.lua resolve)


class StepReply(NamedTuple):
    finished: list[Finished]
    started: list[Started]  # started for this worker, claimed, or handed to it
    suspended: bool = False  # `rq suspend` refused its claim


class WorkerHead(NamedTuple):
    """What every step of one worker sends alike: its fixed keys and queue blocks, its
    queues in priority order, and the fixed arguments (nqueues, control, queue names)."""

    keys: list[str]
    queues: tuple[str, ...]
    args: list[Any]


def _started(run_id: str, queue: str, r: Sequence[Any]) -> Started:
    status, data, sq, timeout, attempt = r
    status = status.decode()
    if status != StartResult.RUN and data:
        data = data.decode()
    return (run_id, queue, status, data, sq, timeout, int(attempt))


def handed_run(entry: bytes) -> Started:
    """A run an enqueue started for this worker (an inbox entry, see prelude.lua `hand`), as a
    started entry of run.lua's reply; result 'bad' (and the error as data) for an entry that
    is not one - its run stays on the worker's runs list, to be started again from there."""
    try:
        run_id, queue, data, sq, timeout, attempt = codec.decode_raw(entry)
        return (run_id.decode(), queue.decode(), StartResult.RUN, data, sq or None, timeout or None,
                int(attempt))  # fmt: skip
    except (CodecError, ValueError, TypeError, AttributeError) as exc:
        why = f"worker inbox entry {bytes(entry[:80])!r}: {exc}"
        return ("", "", StartResult.BAD, why, None, None, 0)


class StepCalls(ScriptsBase):
    _lane: FastLane | None = None
    _packed: dict[tuple[str, str], bytes]
    _took_keys: tuple[str, dict[str, str]] | None = None  # worker, took.lua's fixed keys

    def worker_head(self, worker: str, queues: Sequence[str]) -> WorkerHead:
        """The head of `worker`'s steps, serving `queues` in priority order."""
        k, rq = self.keys, self.rq
        fixed = {**self.globals, "runs": k.worker_runs(worker), "rq_worker": rq.worker(worker),
                 "inbox": k.worker_inbox(worker), "idle_workers": k.idle_workers(),
                 "handed": k.worker_handed(worker), "schedule": k.schedule(),
                 "suspended": rq.suspended}  # fmt: skip
        blocks = [
            STEP.block("queue", {"list": rq.queue(q), "wake": k.wake(q), "started": rq.started(q),
                                 "finished": rq.finished(q), "failed": rq.failed(q),
                                 "idle_line": k.idle(q)})
            for q in queues
        ]  # fmt: skip
        keys = STEP.pack_keys(fixed, {"queue": blocks})
        control = queues.index(CONTROL_QUEUE) + 1 if CONTROL_QUEUE in queues else 0
        return WorkerHead(keys, tuple(queues), [len(queues), control, *queues])

    def _lane_for(self, head: WorkerHead) -> FastLane:
        if self._lane is None:
            self._packed = {}
            # a step that neither claims nor waits (the most, one finish a run) reads no queue:
            # it is sent without the queue blocks (nqueues 0, control 0), 14 strings fewer
            # for Redis to take in per call
            self._lane = FastLane(self.redis, self.script("run"), head.keys, head.args,
                                  fixed_after=STEP.arg_position("nqueues"),
                                  notes=[self.script("took")], wait=self.durability,
                                  short=(len(STEP.keys), [0, 0]))  # fmt: skip
        return self._lane

    def step_send(
        self,
        head: WorkerHead,
        worker: str,
        finishes: Sequence[Finish],
        starts: Sequence[tuple[str, str]],
        current: str,
        claim: int = 0,
        waits: bool = False,
        holds: bool = False,
    ) -> None:
        """Send run.lua: finish runs (run id, queue, outcome, payload, duration ms), start
        runs (run id, queue), take the runs in the worker's inbox and claim and start up to
        `claim` more from the head's queues - or, if `waits` and there are none, list the
        worker as waiting idle - and say which run the worker goes on to ('': the first
        this step starts), and whether it `holds` back the finishes of the runs after it
        (recover.lua). Read the reply with step_receive, now or after more sends."""
        lane = self._lane_for(head)
        now = time.time()
        # STEP's args in order; nqueues and control are the lane's fixed ones
        args = [b"%d" % int(now * 1000), rq_time(now).encode(), b"%d" % self.settings.history_cap,
                worker.encode(), b"%d" % len(finishes), b"%d" % len(starts), b"%d" % claim,
                b"%d" % waits]  # fmt: skip
        blocks = []
        for run_id, queue, outcome, payload, duration_ms in finishes:
            blocks.append(self.packed_block(run_id, queue))
            args += [run_id.encode(), session_of(run_id).encode(), outcome.encode(), payload,
                     b"%d" % duration_ms]  # fmt: skip
        for run_id, queue in starts:
            blocks.append(self.packed_block(run_id, queue))
            args += [run_id.encode(), session_of(run_id).encode()]
        args += [current.encode(), b"1" if holds else b"0"]
        context = (finishes, starts, head.queues)
        short = claim == 0 and not waits
        lane.send(len(blocks) * _RUN_BLOCK_KEYS, b"".join(blocks), args, context, short)

    def step_receive(self) -> StepReply:
        """The oldest step's outcome (see run.lua for its layout)."""
        assert self._lane is not None
        reply, (finishes, starts, queues) = self._lane.receive()
        fin = [
            Finished(
                f[0], f[1], reply[3 * i].decode(), reply[3 * i + 1] == 1, reply[3 * i + 2] == 1
            )  # fmt: skip
            for i, f in enumerate(finishes)
        ]
        i = 3 * len(finishes)
        started = []
        for run_id, queue in starts:
            started.append(_started(run_id, queue, reply[i : i + 5]))
            i += 5
        suspended = False
        while i < len(reply):  # claimed: queue index, run id, then as a start; or handed
            if reply[i] == -1:  # last: the claim was refused (rq suspend)
                suspended = True
                i += 1
                continue
            if reply[i] == 0:  # 0, an inbox entry
                started.append(handed_run(reply[i + 1]))
                i += 2
                continue
            queue, run_id = queues[int(reply[i]) - 1], reply[i + 1].decode()
            started.append(_started(run_id, queue, reply[i + 2 : i + 7]))
            i += 7
        return StepReply(fin, started, suspended)

    def step_now(
        self, head: WorkerHead, worker: str, finishes: Sequence[Finish], current: str = ""
    ) -> None:
        """Finish runs through the ordinary client: for other threads than the worker loop."""
        blocks = [self.run_block(run_id, queue) for run_id, queue, *_ in finishes]
        keys = head.keys + [key for block in blocks for key in block]
        nqueues, control, *names = head.args
        args = STEP.pack_args(
            {**self.clock(time.time()), "worker": worker, "nqueues": nqueues,
             "control": control, "nfinish": len(finishes), "nstart": 0, "nclaim": 0,
             "waits": 0},
            {"queue": [(name,) for name in names],
             "finish": [(run_id, session_of(run_id), outcome, payload, duration_ms)
                        for run_id, _queue, outcome, payload, duration_ms in finishes]},
            {"current": current, "holds": 0},
        )  # fmt: skip
        self.call("run", keys, args)

    @property
    def steps_unanswered(self) -> int:
        return self._lane.unanswered if self._lane is not None else 0

    def took_handed(self, worker: str, run_id: str, attempt: int) -> None:
        """Say, without waiting, that `worker` took the run handed to it and begins it: its
        start shows now (task.started), and were the worker lost from here on, the run used
        up an attempt (took.lua, recover.lua)."""
        assert self._lane is not None, "a worker steps before it waits"
        sid, k = session_of(run_id), self.keys
        if self._took_keys is None or self._took_keys[0] != worker:  # (the same every call)
            self._took_keys = (worker, {**self.globals, "handed": k.worker_handed(worker)})
        keys = TOOK.pack_keys({**self._took_keys[1], "session": k.session(sid),
                               "history": k.history(sid),
                               "chan": k.events_channel(sid)})  # fmt: skip
        args = TOOK.pack_args({**self.clock(time.time()), "worker": worker, "sid": sid,
                               "id": run_id, "attempt": attempt})  # fmt: skip
        self._lane.note_script(self.script("took"), keys, args)

    def wait(self, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """A worker's idle wait: BLPOP on its step connection (see FastLane.blpop)."""
        assert self._lane is not None, "a worker steps before it waits"
        return self._lane.blpop(keys, timeout)

    def packed_block(self, run_id: str, queue: str) -> bytes:
        """A run block as RESP bulk strings; all but the job key cached per session/queue."""
        sid = session_of(run_id)
        rest = self._packed.get((sid, queue))
        if rest is None:
            rest = b"".join(bulk(k.encode()) for k in self.run_block(run_id, queue)[1:])
            if len(self._packed) > BLOCK_CACHE_MAX:
                self._packed.clear()
            self._packed[(sid, queue)] = rest
        return bulk(self.rq.job(run_id).encode()) + rest

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
