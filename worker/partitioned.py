"""A worker of a namespace of several partitions (keys.Layout, SPEC §9): the loop of
worker.loop, its steps sent per partition (scripts.partitioned.PartitionedScripts: the runs
it finishes and starts go to their own partition's step, its claim to one partition at a
time, in turn). When the partition of its turn has nothing, it asks the next ones, in turn,
before it waits idle; it waits on every partition's wake lists (on one Redis, one BLPOP; on a
Redis Cluster, where a BLPOP takes one slot's keys, on their shard channels: worker.shardwake),
and its next claim goes to the partition that woke it. It never lists itself as waiting idle
in a partition (an enqueue hands no run to it): enqueues wake it instead. `rq suspend` sets
RQ's key outside the partitions, which a partition's step cannot read: the worker reads it
itself before it claims, at most once a second while it is not set (SUSPEND_CHECK_S), and
claims nothing while it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.scripts import Finish, StartResult, handed_run
from sessionq.common.scripts.transport import server_of
from sessionq.common.settings import Settings
from sessionq.worker.loop import IDLE_WAIT_S, SessionWorker
from sessionq.worker.shardwake import Waker

STAY_S = 0.05  # how long a partition whose claims come back full keeps the claims' turn
SUSPEND_CHECK_S = 1.0  # how long a claim may go on after `rq suspend` (RQ's own key, read here)


def worker_class(settings: Settings) -> type[SessionWorker]:
    """The worker of the namespace `settings` name: PartitionedWorker with several
    partitions, else SessionWorker."""
    return PartitionedWorker if settings.partition_count > 1 else SessionWorker


class PartitionedWorker(SessionWorker):
    """SessionWorker over every partition of its namespace."""

    partitioned = True

    def _wait_keys(self) -> tuple[str, list[str]]:
        parts = self.scripts.parts
        self.spread: Any = self.scripts  # (a PartitionedScripts)
        self.inboxes = {p.keys.worker_inbox(self.name) for p in parts}
        # a wake list's partition: the next claim goes there
        self.woken_by = {p.keys.wake(q): n for n, p in enumerate(parts) for q in self.queues}
        waits = []
        for p in parts:
            waits += [p.keys.worker_inbox(self.name), *(p.keys.wake(q) for q in self.queues)]
        # on a cluster: the wake lists' shard channels (no run is handed to its inboxes)
        self.waker = Waker(self.redis, self.woken_by) if self.settings.clustered else None
        self.woken: list[int] = []  # the next claim asks these partitions (woken), no other
        return "", waits

    def register(self) -> bool:
        """SessionWorker's; its fields also in each partition's RQ worker hash (recover.lua
        reads max_jobs there; run.lua writes its current run there)."""
        super().register()
        fields = self.rq_fields()
        for part in self.scripts.parts:
            self.redis.hset(part.rq.worker(self.name), mapping=fields)
        return True

    def held_runs(self) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for part in self.scripts.parts:
            pipe.lrange(part.keys.worker_runs(self.name), 0, -1)
        return [codec.text(i) for held in pipe.execute() for i in held]

    def _claim(
        self, finishes: list[Finish], claim: int = 0, waits: bool | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:  # fmt: skip
        """As SessionWorker's, its claim to the partition of its turn; if that has nothing,
        to the next partitions in turn, until one has (a worker holds the runs of one
        partition's claim at a time, as it would with one partition). While `rq suspend`
        holds, `finishes` are sent without a claim."""
        if self._rq_suspended():
            if finishes:
                self._finish(finishes)
            self._collect(0)
            if meanwhile is not None:
                meanwhile()
            self._claim_refused = True  # (as a suspended step's reply says: see _suspended)
            if self.waker is not None and self.waker.armed:
                self.waker.disarm()  # (no wakes buffered for a worker that reads none)
            return False
        woken, self.woken = self.woken, []
        asked = claim or self.batch
        # a worker about to wait idle on a cluster subscribes to the wakes once the claim of
        # the turn's partition finds nothing, then asks the others - and that one again
        waker = self.waker if (self.waits if waits is None else waits) else None
        tries, n = len(woken) or len(self.scripts.parts), 0
        while n < tries:
            if woken:
                self.spread.claim_at = woken[n]
            at, before = self.spread.claim_at, self.runs_claimed
            if super()._claim(finishes, claim, False, meanwhile):
                self._stay(at, self.runs_claimed - before >= asked)
                return self._busy()
            finishes, meanwhile, self._stay_since = [], None, None
            if n == 0 and waker is not None and not woken and not waker.armed:
                waker.arm()
                tries += 1
            n += 1
        return False

    def _stay(self, at: int, full: bool) -> None:
        """After a claim in partition `at` that took runs: a partition that filled the claim
        likely has more, and keeps the turn for STAY_S (the other partitions' runs wait
        their turn no longer than that); else the turn passes on."""
        now = time.monotonic()
        if full and (self._stay_since is None or now < self._stay_since + STAY_S):
            if self._stay_since is None:
                self._stay_since = now
            self.spread.claim_at = at
        else:
            self._stay_since = None

    _stay_since: float | None = None  # since when the partition of the turn has kept it

    def _busy(self) -> bool:
        """The worker took work: wakes are for idle workers."""
        if self.waker is not None and self.waker.armed:
            self.waker.disarm()
        return True

    def _rq_suspended(self) -> bool:
        """Is RQ's `rq suspend` key set? Read when the last read said so (a suspended worker
        claims nothing and sleeps between its reads), else at most every SUSPEND_CHECK_S."""
        now = time.monotonic()
        if self._claim_refused or now >= self._suspend_checked + SUSPEND_CHECK_S:
            self._suspend_checked = now
            self._suspend_set = bool(self.redis.exists(self.scripts.grq.suspended))
        return self._suspend_set

    _suspend_checked = float("-inf")
    _suspend_set = False

    def wait_idle(self) -> None:
        if self.waker is not None:
            self.woken = self.waker.wait(IDLE_WAIT_S) or []  # (none: every partition)
            return
        popped = self.scripts.wait(self.wait_keys, IDLE_WAIT_S)
        if not popped:
            return
        key = codec.text(popped[0])
        if key in self.inboxes:
            handed = handed_run(popped[1])
            if handed[2] == StartResult.RUN:
                self.scripts.took_handed(self.name, handed[0], handed[6])
            self._take([handed])
        elif key in self.woken_by:
            self.spread.claim_at = self.woken_by[key]

    def _leave(self) -> None:
        try:
            super()._leave()
        finally:
            if self.waker is not None:
                self.waker.close()

    def _take_inbox(self, unlist: bool = False, *, leaving: bool = False) -> None:
        """SessionWorker's, in every partition (one transaction each)."""
        handed: list[Any] = []
        for part in self.scripts.parts:
            k = part.keys
            # (on a cluster, on the partition's master, as producer.client's steps: redis-py
            # before 6 refuses a cluster pipeline's transaction)
            pipe = server_of(self.redis, k.worker_inbox(self.name)).pipeline(transaction=True)
            if unlist:
                pipe.srem(k.idle_workers(), self.name)
                for q in self.queues[1:]:
                    pipe.lrem(k.idle(q), 0, self.name)
            pipe.lrange(k.worker_inbox(self.name), 0, -1)
            pipe.delete(k.worker_inbox(self.name))
            if leaving:
                pipe.delete(k.worker_handed(self.name))
            entries = sync_reply(pipe.execute())[-3 if leaving else -2]
            handed += [handed_run(e) for e in entries]
        if not leaving:
            for run in handed:
                if run[2] == StartResult.RUN:
                    self.scripts.took_handed(self.name, run[0], run[6])
        self._take(handed)
