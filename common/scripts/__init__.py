"""The Lua scripts: every state change of a session or run is one script call - one round
trip, atomic - that keeps RQ's job hash, queues and registries as RQ's own readers (`rq
info`, `Job.fetch`) expect, and ours (counters, indexes, events) beside them: the one place
that writes RQ's structures.

- contract.py / contracts.py: each script's declared keys, arguments and blocks, from which
  both the Python packers and the Lua prologues are made;
- transport.py: how a call reaches Redis (any thread, or a worker's pipelined FastLane);
- step.py (run.lua), enqueue.py (enqueue.lua, create.lua), control.py (control, request, destroy,
  recover), events.py (emit, log, state): the packers and reply readers, one per purpose.
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from sessionq.common.scripts.base import lua_source, now_ms, reserved
from sessionq.common.scripts.control import OP_PREFIX, ControlCalls
from sessionq.common.scripts.enqueue import EnqueueCalls, NewSession, Run, RunColumns
from sessionq.common.scripts.events import EventCalls
from sessionq.common.scripts.partitioned import PartitionedHead, PartitionedMixin
from sessionq.common.scripts.step import (
    Finish,
    Finished,
    Started,
    StartResult,
    StepCalls,
    StepReply,
    WorkerHead,
    handed_run,
)
from sessionq.common.scripts.transport import FastLane
from sessionq.common.settings import Settings


class Scripts(StepCalls, EnqueueCalls, ControlCalls, EventCalls):
    """Every script of one prefix, registered on one client; with several partitions
    (keys.Layout) a PartitionedScripts, one Scripts per partition (`parts`)."""

    def __new__(cls, redis: Redis, settings: Settings, partition: int | None = None,
                registered: Any = None) -> Scripts:  # fmt: skip
        if cls is Scripts and partition is None and settings.partition_count > 1:
            return super().__new__(PartitionedScripts)
        return super().__new__(cls)


class PartitionedScripts(PartitionedMixin, Scripts):
    """Several partitions seen whole (scripts.partitioned)."""

    _single = Scripts


__all__ = [
    "OP_PREFIX",
    "PartitionedHead",
    "PartitionedScripts",
    "FastLane",
    "Finish",
    "Finished",
    "NewSession",
    "Run",
    "RunColumns",
    "Scripts",
    "StartResult",
    "Started",
    "StepReply",
    "WorkerHead",
    "handed_run",
    "lua_source",
    "now_ms",
    "reserved",
]
