"""What producer and worker share: settings, keys, codec, the status words, validation, job
hashes, records, events, scripts, errors.

Re-exported here: the words records and events use, and what `Client.add_runs` takes.
"""

from sessionq.common.events import EventType
from sessionq.common.jobhash import RunSpec, build_run
from sessionq.common.records import SessionRecord
from sessionq.common.vocabulary import ENDED_STATUSES, Outcome, Status, StepResult, TaskState

__all__ = [
    "ENDED_STATUSES",
    "EventType",
    "Outcome",
    "RunSpec",
    "SessionRecord",
    "Status",
    "StepResult",
    "TaskState",
    "build_run",
]
