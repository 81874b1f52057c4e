"""A task module that breaks its worker's watcher thread on demand (`--import tests.faulty`):
after `break_heartbeat` runs, the next heartbeat of that worker process raises an error the
watcher does not expect, as a bug in it would."""

from __future__ import annotations

import threading

from sessionq.worker import task
from sessionq.worker.watch import Watcher

BROKEN = threading.Event()
_heartbeat = Watcher.heartbeat


def _breakable_heartbeat(self: Watcher) -> None:
    if BROKEN.is_set():
        raise RuntimeError("heartbeat broken on purpose by tests.faulty")
    _heartbeat(self)


Watcher.heartbeat = _breakable_heartbeat  # type: ignore[method-assign]  # the fault itself


@task
def break_heartbeat() -> str:
    BROKEN.set()
    return "broken"
