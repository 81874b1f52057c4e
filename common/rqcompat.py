"""RQ under our prefix: the one place that imports rq and derives RQ's key names from it.

RQ reads RQ_KEY_PREFIX once, when it is first imported, so one process serves one prefix;
asking for a second one is a ConfigError (SPEC §1).
"""

from __future__ import annotations

import copy
import sys
from functools import lru_cache
from types import ModuleType

from sessionq.common.errors import ConfigError
from sessionq.common.keys import Layout
from sessionq.common.settings import Settings, export_rq_prefix, exported_rq_prefix


def load_rq(prefix: str) -> ModuleType:
    """Import rq with its keys under `<prefix>rq`; ConfigError if it serves another prefix."""
    want = f"{prefix}rq"
    if "rq" not in sys.modules:
        export_rq_prefix(prefix)
    import rq.defaults

    if rq.defaults.RQ_KEY_PREFIX != want:
        raise ConfigError(
            f"this process already serves RQ prefix {rq.defaults.RQ_KEY_PREFIX!r} "
            f"(exported: {exported_rq_prefix()!r}); prefix {prefix!r} needs its own process"
        )
    import rq

    return rq


class RQKeys:
    """RQ's key names for our prefix, read off RQ's own classes (so `rq info` agrees)."""

    def __init__(self, prefix: str) -> None:
        load_rq(prefix)
        self.rq_prefix = f"{prefix}rq"
        from rq.job import Job
        from rq.queue import Queue
        from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
        from rq.worker import Worker

        self._job_prefix = Job.redis_job_namespace_prefix
        self._queue_prefix = Queue.redis_queue_namespace_prefix
        self.queues_set = Queue.redis_queues_keys
        # a registry's key around its queue's name (RQ's templates escape a prefix's braces)
        self._started = StartedJobRegistry.key_template.format("\0")
        self._finished = FinishedJobRegistry.key_template.format("\0")
        self._failed = FailedJobRegistry.key_template.format("\0")
        self._worker_prefix = Worker.redis_worker_namespace_prefix
        self.workers_set = Worker.redis_workers_keys
        from rq.worker_registration import WORKERS_BY_QUEUE_KEY

        self._queue_workers = WORKERS_BY_QUEUE_KEY  # (a %s template)
        from rq.command import PUBSUB_CHANNEL_TEMPLATE
        from rq.suspension import WORKERS_SUSPENDED

        self.suspended = WORKERS_SUSPENDED  # `rq suspend` sets it, `rq resume` deletes it

        self._pubsub = PUBSUB_CHANNEL_TEMPLATE

    def under(self, prefix: str) -> RQKeys:
        """RQ's key names under another prefix - a partition's (keys.Layout): `rq info`
        with RQ_KEY_PREFIX=`<that prefix>rq` reads that partition."""
        moved = copy.copy(self)
        want = f"{prefix}rq"
        for name, value in vars(self).items():
            if isinstance(value, str) and value.startswith(self.rq_prefix):
                setattr(moved, name, want + value[len(self.rq_prefix) :])
        return moved

    def job(self, job_id: str) -> str:
        return f"{self._job_prefix}{job_id}"

    def queue(self, name: str) -> str:
        return f"{self._queue_prefix}{name}"

    def started(self, queue: str) -> str:
        return self._started.replace("\0", queue)

    def finished(self, queue: str) -> str:
        return self._finished.replace("\0", queue)

    def failed(self, queue: str) -> str:
        return self._failed.replace("\0", queue)

    def worker(self, name: str) -> str:
        return f"{self._worker_prefix}{name}"

    def queue_workers(self, queue: str) -> str:
        """SET of the RQ worker keys serving `queue` (RQ's register_birth adds a worker)."""
        return self._queue_workers % queue

    def worker_channel(self, name: str) -> str:
        return str(self._pubsub % name)


@lru_cache(maxsize=4)
def rq_keys(prefix: str) -> RQKeys:
    return RQKeys(prefix)


def rq_home(settings: Settings) -> str:
    """The prefix RQ's own classes serve (RQ_KEY_PREFIX is `<it>rq`): the namespace's; on a
    Redis Cluster with partitions that of its global keys (keys.Layout.glob), so that RQ's
    worker registry shares a slot with the heartbeats. Each partition's queues, jobs and
    registries are RQKeys.under it."""
    layout = Layout.of(settings)
    return layout.glob.prefix if layout.partitioned and settings.clustered else settings.prefix


class RoutedRQKeys(RQKeys):
    """RQ's keys of a partitioned namespace seen whole: a job's from its id (its session's
    partition), the worker registry's and `rq suspend`'s RQ's own (`home`);
    queues and registries are a partition's own (ScriptsBase.parts) - here they raise."""

    def __init__(self, home: RQKeys, layout: Layout) -> None:  # (no super: copies `home`)
        self.__dict__.update(vars(home))
        del self.queues_set  # (one per partition)
        self.layout = layout
        self.parts = tuple(home.under(part.prefix) for part in layout.parts())

    def job(self, job_id: str) -> str:
        return self.parts[self.layout.partition_of(job_id)].job(job_id)

    def queue(self, name: str) -> str:
        raise TypeError("RQ queues are per partition")

    def started(self, queue: str) -> str:
        raise TypeError("RQ registries are per partition")

    finished = failed = started
