"""A task module whose worker dies by SIGKILL right after it ends a run other runs wait on,
before it tells them (`--import tests.silent_end`): once `die_before_telling` has run in a
worker process, that process kills itself where it would judge the runs waiting on the runs it
ended (worker.schedule.resolve_children, right after their end is written) - as a worker lost
at that very moment would be. Its supervisor starts another process, which knows nothing of it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable

from sessionq.common.scripts import Scripts
from sessionq.worker import schedule, task

ARMED = threading.Event()
_resolve_children = schedule.resolve_children


def _dying(scripts: Scripts, parent_ids: Iterable[str], worker: str = "") -> None:
    if ARMED.is_set():
        os.kill(os.getpid(), signal.SIGKILL)
    _resolve_children(scripts, parent_ids, worker)


schedule.resolve_children = _dying


@task
def die_before_telling() -> str:
    ARMED.set()
    return "armed"
