"""Prometheus metrics for `/metrics`: Redis read at each scrape, run durations from events.

`RedisCollector` answers each scrape from Redis (`Client.stats()` and RQ's own queues and
registries, read without RQ's cleanup so a scrape never changes anything); `EventMetrics`
follows every session's events and keeps the run-duration and event-lag histograms, so these
cover the runs that ended while the dashboard was running (as Prometheus counters do).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sessionq.common.codec import RQSerializer, text
from sessionq.common.events import EventType
from sessionq.common.vocabulary import TaskState
from sessionq.producer.client import Client

log = logging.getLogger(__name__)
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_TRACKED_STARTS = 100_000
ENDS = {EventType.TASK_SUCCEEDED: TaskState.SUCCEEDED, EventType.TASK_FAILED: TaskState.FAILED}
RQ_REGISTRIES = {
    "started": "started_job_registry",
    "finished": "finished_job_registry",
    "failed": "failed_job_registry",
    "deferred": "deferred_job_registry",
    "scheduled": "scheduled_job_registry",
    "canceled": "canceled_job_registry",
}


class RedisCollector(Collector):
    """Sessions, runs, queues and workers as Redis holds them at scrape time."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        stats = self.client.stats()
        sessions = GaugeMetricFamily("sessionq_sessions", "Sessions by status.", labels=["status"])
        for status, n in stats["sessions"].items():
            sessions.add_metric([status], n)
        runs = GaugeMetricFamily(
            "sessionq_runs", "Task runs of all sessions by state.", labels=["state"]
        )
        for state, n in stats["tasks"].items():
            runs.add_metric([state], n)
        workers = GaugeMetricFamily("sessionq_workers", "Live workers (heartbeat within TTL).")
        workers.add_metric([], stats["workers"]["count"])
        busy = GaugeMetricFamily("sessionq_workers_busy", "Live workers running a run.")
        busy.add_metric([], stats["workers"]["busy"])
        cores = GaugeMetricFamily(
            "sessionq_cores", "Cores requested by running sessions and offered by live workers.",
            labels=["kind"],
        )  # fmt: skip
        ram = GaugeMetricFamily(
            "sessionq_ram_gigabytes", "RAM (GB) requested by running sessions and offered by "
            "live workers.", labels=["kind"],
        )  # fmt: skip
        for family, key in ((cores, "cores"), (ram, "ram")):
            family.add_metric(["requested"], stats[key]["requested"])
            family.add_metric(["available"], stats[key]["available"])
        yield from (sessions, runs, workers, busy, cores, ram)
        yield from self._queues()

    def _queues(self) -> Iterator[Metric]:
        from rq.job import Job
        from rq.queue import Queue

        depth = GaugeMetricFamily("sessionq_queue_depth", "Runs waiting in each queue.",
                                  labels=["queue"])  # fmt: skip
        by_state = GaugeMetricFamily(
            "sessionq_queue_runs", "Runs of each queue by RQ state (RQ's queue and registries).",
            labels=["queue", "state"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "sessionq_oldest_queued_run_age_seconds",
            "Seconds since the oldest run still waiting in each queue was enqueued (0: none).",
            labels=["queue"],
        )  # fmt: skip
        redis = self.client.redis
        now = time.time()
        # runs waiting: RQ's queue list is a line of one run per session (fair share)
        depths = self.client.stats()["queues"]
        for queue in sorted(Queue.all(connection=redis, serializer=RQSerializer),
                            key=lambda q: q.name):  # fmt: skip
            waiting = depths.get(queue.name, queue.count)
            depth.add_metric([queue.name], waiting)
            by_state.add_metric([queue.name, TaskState.QUEUED], waiting)
            for state, attr in RQ_REGISTRIES.items():
                registry = getattr(queue, attr)
                by_state.add_metric([queue.name, state], registry.get_job_count(cleanup=False))
            age = 0.0
            head = queue.get_job_ids(0, 1)
            if head:
                stamp = redis.hget(Job.key_for(head[0]), "enqueued_at")
                if stamp:
                    age = max(0.0, now - _rq_epoch(text(stamp)))
            oldest.add_metric([queue.name], age)
        yield from (depth, by_state, oldest)


def _rq_epoch(stamp: str) -> float:
    from rq.utils import utcparse

    return utcparse(stamp).replace(tzinfo=dt.UTC).timestamp()


class EventMetrics:
    """Histograms fed by the dashboard's listener on every session's events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.durations = Histogram(
            "sessionq_run_duration_seconds",
            "Duration of task runs that ended while the dashboard ran, by outcome.",
            ["outcome"], buckets=DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.lag = Histogram(
            "sessionq_event_lag_seconds",
            "Seconds between an event's timestamp and the dashboard receiving it.",
            buckets=LAG_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self._starts: OrderedDict[str, float] = OrderedDict()

    def observe(self, event: dict[str, Any]) -> None:
        etype, task, ts = event["type"], event.get("task"), float(event["ts"])
        if etype == EventType.LISTENER_GAP:
            return
        self.lag.observe(max(0.0, time.time() - ts))
        if not task:
            return
        if etype == EventType.TASK_STARTED:
            self._starts[task] = ts
            if len(self._starts) > MAX_TRACKED_STARTS:
                self._starts.popitem(last=False)
            return
        started = self._starts.pop(task, None)
        outcome = ENDS.get(etype)
        if outcome is None:
            return
        duration_ms = (event.get("data") or {}).get("duration_ms")
        if isinstance(duration_ms, int | float):
            self.durations.labels(outcome).observe(duration_ms / 1000)
        elif started is not None:
            self.durations.labels(outcome).observe(max(0.0, ts - started))


def build_registry(client: Client) -> tuple[CollectorRegistry, EventMetrics]:
    """A private registry (not the process-wide default) with both kinds of metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client))
    return registry, EventMetrics(registry)
