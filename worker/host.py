"""What every part of a worker reads of the worker it serves (SessionWorker is one): its name,
its Redis, its scripts and its settings. Each part's own Protocol extends this one."""

from __future__ import annotations

from typing import Protocol

from redis import Redis

from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings


class WorkerHost(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def redis(self) -> Redis: ...

    @property
    def scripts(self) -> Scripts: ...

    @property
    def settings(self) -> Settings: ...
