"""`SessionConfig`: how a persistent session treats its tasks (SPEC §3, redengine's config)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sessionq.common.errors import ValidationError, ValidationTypeError

TASK_PRE_EXIST = ("raise", "replace", "ignore", "rename")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Stored with the session; every process that opens it follows the same rules.

    - task_pre_exist: adding a task whose name the session holds "raise"s a ValidationError,
      "replace"s the old task (canceled if it has not started; it leaves the session as with
      forget; a running one is refused, as for remove), "ignore"s the new one (add returns
      the old id) or "rename"s the new one name-1, name-2, ...
    - use_instance_naming: an unnamed task is named by its id, not its function or command.
    - silence_task_prerun: a run that fails before its body starts (unregistered function,
      unreadable job, missing program) fails that task only; otherwise it stops the session,
      which ends Failed.
    - silence_cond_check: an error while judging a task's dependencies (a parent that no
      longer exists) cancels the task as "condition not met"; otherwise the task fails.
    - force_status_from_logs: progress and status are recounted from the task records
      rather than read from the session's counters.
    - cycle_sleep: seconds between two scheduler cycles of this session: a scheduled task
      starts at the first cycle at or after its time (cycles count from the session's
      creation). None or 0: as soon as a worker's scheduler looks.
    - autoplay: tasks run as soon as they are added and ready; False opens the session
      paused, and added tasks wait, held, for play()/run()/step().
    - max_running: at most this many runs of the session run at once, across all workers;
      the rest wait in the queue's line without a busy loop. None: no cap.
    - retention_s: the session, with everything under it (runs, logs, history), is removed
      this long after it ends (Completed, Failed or Stopped); running again (a task added)
      makes it no longer due. None: kept until destroyed. (A session made by create()
      follows SESSIONQ_RETENTION_S.)
    """

    task_pre_exist: str = "raise"
    use_instance_naming: bool = False
    silence_task_prerun: bool = False
    silence_cond_check: bool = False
    force_status_from_logs: bool = False
    cycle_sleep: float | None = None
    autoplay: bool = True
    max_running: int | None = None
    retention_s: float | None = None

    def __post_init__(self) -> None:
        if self.task_pre_exist not in TASK_PRE_EXIST:
            raise ValidationError(
                "task_pre_exist", f"{self.task_pre_exist!r} is not one of {TASK_PRE_EXIST}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValidationTypeError(f.name, f"expected True or False, got {value!r}")
        cycle = self.cycle_sleep
        if cycle is not None and (
            isinstance(cycle, bool) or not isinstance(cycle, (int, float))
            or not 0 <= cycle < math.inf
        ):  # fmt: skip
            raise ValidationError("cycle_sleep", f"must be seconds >= 0 or None, got {cycle!r}")
        cap = self.max_running
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValidationError("max_running", f"must be an integer >= 1 or None, got {cap!r}")
        keep = self.retention_s
        if keep is not None and (
            isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < math.inf
        ):  # fmt: skip
            raise ValidationError("retention_s", f"must be seconds > 0 or None, got {keep!r}")

    @property
    def retention_ms(self) -> int | None:
        """retention_s in ms, as the session hash keeps it (None: kept until destroyed)."""
        return None if self.retention_s is None else max(1, int(self.retention_s * 1000))

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> SessionConfig:
        """From a stored config; fields this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (wire or {}).items() if k in known})

    @classmethod
    def coerce(cls, value: SessionConfig | Mapping[str, Any] | None) -> SessionConfig:
        """A SessionConfig from one, from a dict of its fields, or the defaults for None;
        an unknown field is a ValidationError naming it."""
        if value is None:
            return cls()
        if isinstance(value, SessionConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValidationTypeError("config", f"expected a SessionConfig or a dict, got "
                                                f"{type(value).__name__}")  # fmt: skip
        known = {f.name for f in fields(cls)}
        for key in value:
            if key not in known:
                raise ValidationError(f"config.{key}", f"unknown field; known: {sorted(known)}")
        return cls(**value)
