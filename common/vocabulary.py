"""The words producer, worker and Lua share: session statuses, task-run states, run outcomes
and step results (the Lua side's vocabulary is generated from these, common/scripts/contract.py)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Status(StrEnum):
    """Session status (SPEC §2)."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    TERMINATING = "Terminating"
    STOPPED = "Stopped"
    COMPLETED = "Completed"
    FAILED = "Failed"


ENDED_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED})


class TaskState(StrEnum):
    """Task-run state (SPEC §2)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    HELD = "held"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


ENDED_TASK_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED)
# RQ's job `status` that goes with each run state (what `rq info` and Job.fetch read; rq is not
# imported here: it reads its key prefix when first imported); prelude.lua's RQ_STATUS is this
RQ_STATUS: Mapping[TaskState, str] = MappingProxyType({
    TaskState.QUEUED: "queued", TaskState.DEFERRED: "deferred", TaskState.HELD: "deferred",
    TaskState.STARTED: "started", TaskState.SUCCEEDED: "finished", TaskState.FAILED: "failed",
    TaskState.CANCELED: "canceled",
})  # fmt: skip


class Outcome(StrEnum):
    """How a run ended, as its worker reports it to run.lua's finish (Lua: OUTCOME)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # never began: unregistered function, missing command, bad job
    CANCELED = "canceled"
    REQUEUE = "requeue"  # given back unrun (the worker shut down)


class StepResult(StrEnum):
    """What run.lua's finish made of an outcome (Lua: STEP_RESULT)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"  # failed, and queued again for its next attempt
    REQUEUED = "requeued"
    CANCELED = "canceled"
    STALE = "stale"  # recovered, canceled or destroyed while it ran: not recorded
