"""The words producer, worker and Lua share: session statuses, task-run states, run outcomes
and step results (the Lua side's vocabulary is generated from these, common/scripts/contract.py)."""

from __future__ import annotations

from enum import StrEnum


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
