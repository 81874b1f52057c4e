"""The workers' scheduler: due `at`/`in_`/`cron` runs, and runs waiting on dependencies.

Any number of workers run it; a lock lets one at a time scan, and the fire step removes each
due run from the schedule atomically (ZREM), so a due run is released once whoever scans.
A cron run, when fired, leaves its next firing in the schedule in the same step. Runs waiting
on dependencies are judged when a parent ends (the worker that ran it calls `resolve_children`
right after), and again by a periodic sweep in case that worker died in between. A parent
of another partition than its child (keys.Layout; SPEC §9: depends_on names a task of
another session) is read in its own partition and judged by that state in the child's - no
call spans two partitions - so the sweep delivers its end too, whenever the worker that
ended it died before telling its children.

Every RECONCILE_EVERY_TICKS ticks the holder of the lock also reconciles what RQ's own tools
did behind our back (`rq empty`, Job.delete, Job.cancel): a session whose live counters hold
runs whose RQ job is gone, or waiting runs RQ canceled, is settled (control.lua settle: those
runs end canceled, and the session ends if nothing else is left); and every
RECOUNT_EVERY_RECONCILES of those the global run counters are recounted from the sessions'.

Every tick it also removes the ended sessions whose retention is over (keys.retention: the
scripts add a session as it ends), up to EXPIRE_BATCH of them, each with everything under it
(ControlCalls.remove_ended, destroy.lua's removal path, its history too).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.errors import CodecError, SessionNotFound
from sessionq.common.keys import DEFAULT_QUEUE, session_of
from sessionq.common.records import SessionRecord
from sessionq.common.scripts import Scripts
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.timing import next_fire_ms
from sessionq.common.vocabulary import RQ_STATUS, Status, TaskState

log = logging.getLogger(__name__)
DUE_BATCH = 500
SWEEP_BATCH = 1000
SWEEP_EVERY_TICKS = 10
RECONCILE_EVERY_TICKS = 20
RECONCILE_RUNS = 20_000  # runs read per reconcile, about (a bigger session is read alone)
RECONCILE_BATCH = 500  # runs read per round trip
RECOUNT_EVERY_RECONCILES = 10
LIVE_STATES = tuple(s.value for s in (TaskState.QUEUED, TaskState.DEFERRED, TaskState.HELD,
                                       TaskState.STARTED))  # fmt: skip
LIVE_STATUSES = tuple(s.value for s in (Status.PENDING, Status.RUNNING, Status.PAUSED))
RQ_CANCELED = RQ_STATUS[TaskState.CANCELED].encode()  # `rq cancel`'s mark on a waiting run
EXPIRE_BATCH = 500  # ended sessions removed per tick, at most


def _texts(reply: object) -> list[str]:
    """A sync client's reply of members (of a list, a set, a sorted set without scores) as text:
    redis-py 5.3 types it `Awaitable[Any] | Any`, 8.x a sorted set's range by `withscores`."""
    return [codec.text(m) for m in cast("Iterable[bytes]", reply)]


def _queues(scripts: Scripts, run_ids: list[str], *fields: str) -> list[list[Any]]:
    pipe = scripts.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(scripts.rq.job(run_id), ["origin", *fields])
    return [list(row) for row in pipe.execute()]


def _one_of_several(scripts: Scripts) -> bool:
    """Are these one partition's scripts of several (keys.Layout), not the namespace's?"""
    return scripts.layout.partitioned and len(scripts.parts) == 1


def resolve_runs(scripts: Scripts, run_ids: Iterable[str], worker: str = "") -> list[str]:
    """Judge runs waiting on dependencies; returns those that ended (canceled or failed) and
    so may have waiting runs of their own. `scripts`: the whole namespace's (a run may wait
    on runs of other partitions, whose states are read there first)."""
    assert not _one_of_several(scripts), "resolve_runs: the namespace's scripts, not a partition's"
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return []
    rows = _queues(scripts, ids, "deps")
    by_session: dict[str, list[tuple[str, str, list[str]]]] = defaultdict(list)
    for run_id, (origin, deps_raw) in zip(ids, rows, strict=True):
        if origin is None or deps_raw is None:
            # gone, or waits on nothing
            scripts.redis.srem(scripts.of(run_id).keys.waiting(), run_id)
            continue
        try:
            deps = [str(d) for d in codec.decode(deps_raw)]
        except CodecError as exc:
            log.error("run %s: unreadable dependencies: %s", run_id, exc)
            deps = []
        by_session[session_of(run_id)].append((run_id, codec.text(origin), deps))
    states = _foreign_states(scripts, by_session) if scripts.layout.partitioned else {}
    ended: list[str] = []
    for sid, runs in by_session.items():
        reply = scripts.resolve(sid, runs, states, worker=worker)
        ended += [str(r) for r in reply[1:]]
    return ended


def _foreign_states(
    scripts: Scripts, by_session: dict[str, list[tuple[str, str, list[str]]]]
) -> dict[str, str | None]:
    """The states of the parents of another partition than their child's (keys.Layout), read
    in their own (one pipeline): what control.lua's resolve judges them by (resolve_call)."""
    layout = scripts.layout
    foreign = list(dict.fromkeys(
        p for sid, runs in by_session.items() for _, _, deps in runs for p in deps
        if layout.partition_of(p) != layout.partition_of(sid)
    ))  # fmt: skip
    if not foreign:
        return {}
    pipe = scripts.redis.pipeline(transaction=False)
    for parent in foreign:
        pipe.hget(scripts.rq.job(parent), "state")
    read = pipe.execute()
    return {p: codec.text(st) if st else None for p, st in zip(foreign, read, strict=True)}


def resolve_children(scripts: Scripts, parent_ids: Iterable[str], worker: str = "") -> None:
    """The runs that wait on these (ended) runs: judge them, and on through any that end."""
    frontier = list(parent_ids)
    while frontier:
        pipe = scripts.redis.pipeline(transaction=False)
        for run_id in frontier:
            pipe.hget(scripts.rq.job(run_id), "children")
        children: list[str] = []
        for raw in pipe.execute():
            if raw:
                try:
                    children += [str(c) for c in codec.decode(raw)]
                except CodecError as exc:
                    log.error("unreadable children list: %s", exc)
        frontier = resolve_runs(scripts, children, worker)


class Scheduler:
    """One worker's share of the scheduling: call `tick()` every scheduler_interval_s."""

    def __init__(self, scripts: Scripts, worker: str, whole: Scripts | None = None) -> None:
        """`scripts`: the namespace's, or one partition's of several with `whole`, the
        namespace's: a run waiting there may wait on runs of other partitions, and runs there
        on it - judged with their parents' states read under their own prefixes."""
        if whole is None and _one_of_several(scripts):
            raise ValueError(
                f"the scheduler of partition {scripts.partition} needs the namespace's "
                "scripts too (whole=)"
            )
        self.scripts = scripts
        self.whole = whole or scripts
        self.worker = worker
        self.ticks = 0
        self._sweep_cursor = 0  # SSCAN position: each sweep goes on where the last stopped
        self._sessions: dict[str, tuple[float, int]] = {}  # sid -> (cycle_sleep s, created ms)
        self._to_reconcile: list[str] = []  # live sessions this round has not read yet
        self.reconciles = 0

    def tick(self) -> int:
        """Fire what is due (and every few ticks sweep the waiting runs); returns how many
        runs were looked at. Only the holder of the scheduler lock does anything."""
        r, k = self.scripts.redis, self.scripts.keys
        interval = self.scripts.settings.scheduler_interval_s
        if not r.set(k.lock("scheduler"), self.worker, nx=True, px=int(interval * 3000)):
            return 0
        try:
            self.ticks += 1
            seen = self.fire_due()
            seen += len(self.expire_due())
            if self.ticks % SWEEP_EVERY_TICKS == 0:
                seen += self.sweep()
            if self.ticks % RECONCILE_EVERY_TICKS == 0:
                seen += self.reconcile()
            return seen
        finally:
            r.delete(k.lock("scheduler"))

    def _cycle(self, sid: str) -> tuple[float, int] | None:
        """(cycle_sleep, created ms) of a session, from its record; None if it is gone."""
        known = self._sessions.get(sid)
        if known is None:
            raw = self.scripts.redis.hget(self.scripts.keys.sessions(), sid)
            if raw is None:
                return None
            try:
                record = SessionRecord.from_wire(codec.decode_map(raw, f"session {sid}"))
                cycle = SessionConfig.from_wire(record.config).cycle_sleep or 0.0
            except (CodecError, ValueError) as exc:
                log.error("session %s: unreadable record or config: %s", sid, exc)
                return None
            known = self._sessions[sid] = (cycle, record.created_at_ms)
            if len(self._sessions) > 10_000:
                self._sessions.clear()
        return known

    def fire_due(self) -> int:
        r, k = self.scripts.redis, self.scripts.keys
        now_ms = int(time.time() * 1000)
        due = _texts(r.zrangebyscore(k.schedule(), "-inf", now_ms, 0, DUE_BATCH))
        by_session: dict[str, list[str]] = defaultdict(list)
        for run_id in due:
            by_session[session_of(run_id)].append(run_id)
        for sid, ids in by_session.items():
            cycle = self._cycle(sid)
            if cycle is None:
                r.zrem(k.schedule(), *ids)  # the session is gone
                continue
            cycle_sleep, created_ms = cycle
            if cycle_sleep:
                last = sync_reply(r.hget(k.session(sid), "cycle_at"))
                if now_ms < int(last or created_ms) + cycle_sleep * 1000:
                    continue  # this session's next scheduler cycle is not yet
            self._fire(sid, ids, now_ms)
        return len(due)

    def _fire(self, sid: str, ids: list[str], now_ms: int) -> None:
        rows = _queues(self.scripts, ids, "cron", "attempts")
        runs: list[tuple[str, str]] = []
        nexts: dict[int, list[Any]] = {}
        extra: list[str] = []
        first_extra = self.scripts.control_extra_index(len(ids))
        # a cron run's next firing is made as it fires first (a retry of it makes none)
        crons = [(i, codec.text(row[1])) for i, row in enumerate(rows)
                 if row[1] and not int(row[2] or 0)]  # fmt: skip
        if crons:
            try:
                next_ids = self.scripts.reserve(sid, len(crons))
            except SessionNotFound:
                return self._gone(sid, ids)
            for next_id, (i, expr) in zip(next_ids, crons, strict=True):
                try:
                    fire_at = next_fire_ms(expr, now_ms)
                except (ValueError, KeyError) as exc:
                    log.error("run %s: bad cron expression %r: %s", ids[i], expr, exc)
                    continue
                nexts[i + 1] = [next_id, fire_at, first_extra + len(extra)]
                extra.append(self.scripts.rq.job(next_id))
        for run_id, row in zip(ids, rows, strict=True):
            runs.append((run_id, codec.text(row[0]) if row[0] else DEFAULT_QUEUE))
        reply = self.scripts.control("fire", sid, {"next": nexts}, runs, extra,
                                     worker=self.worker)  # fmt: skip
        if reply and reply[0] == "gone":
            self._gone(sid, ids)

    def _gone(self, sid: str, ids: list[str]) -> None:
        """Session `sid` was destroyed since its record was cached: its runs `ids` must not
        stay due forever."""
        self.scripts.redis.zrem(self.scripts.keys.schedule(), *ids)
        self._sessions.pop(sid, None)

    def expire_due(self) -> list[str]:
        """Remove (a batch of) the ended sessions whose retention is over; their ids."""
        r, k = self.scripts.redis, self.scripts.keys
        now_ms = int(time.time() * 1000)
        due = _texts(r.zrangebyscore(k.retention(), "-inf", now_ms, 0, EXPIRE_BATCH))
        if not due:
            return []
        removed = self.scripts.remove_ended(due, worker=self.worker)
        log.info("retention: removed %d ended session(s)", len(removed))
        return removed

    def sweep(self) -> int:
        """Judge (a batch of) the runs waiting on dependencies."""
        r, k = self.scripts.redis, self.scripts.keys
        waiting = r.sscan(k.waiting(), self._sweep_cursor, count=SWEEP_BATCH)
        self._sweep_cursor, members = sync_reply(waiting)
        ids = _texts(members)
        ended = resolve_runs(self.whole, ids, self.worker)
        if ended:
            resolve_children(self.whole, ended, self.worker)
        return len(ids)

    # -- what RQ's own tools did ---------------------------------------------------------
    def reconcile(self) -> int:
        """Read (a budget of) the live sessions' runs and settle those RQ's tools deleted or
        canceled; every RECOUNT_EVERY_RECONCILES calls, recount the global counters. Returns
        how many runs were read."""
        r, k = self.scripts.redis, self.scripts.keys
        if not self._to_reconcile:
            pipe = r.pipeline(transaction=False)
            for status in LIVE_STATUSES:
                pipe.smembers(k.idx_status(status))
            self._to_reconcile = sorted({codec.text(s) for m in pipe.execute() for s in m})
        read = 0
        while self._to_reconcile and read < RECONCILE_RUNS:
            read += self._reconcile_session(self._to_reconcile.pop())
        self.reconciles += 1
        if self.reconciles % RECOUNT_EVERY_RECONCILES == 0:
            self.recount()
        return read

    def recount(self) -> dict[str, int]:
        """The global run counters set from the sessions'; logs what it corrected."""
        corrected = self.scripts.recount()
        if corrected:
            log.warning("global run counters corrected from the sessions': %s", corrected)
        return corrected

    def _reconcile_session(self, sid: str) -> int:
        r, k = self.scripts.redis, self.scripts.keys
        counters = [int(c or 0) for c in sync_reply(r.hmget(k.session(sid), list(LIVE_STATES)))]
        if not any(counters):
            return 1
        found = dict.fromkeys(LIVE_STATES, 0)
        missing: list[str] = []
        canceled = read = 0
        batch: list[str] = []
        # in batches: a worker's memory does not take the size of the biggest session
        for raw, _name in r.hscan_iter(k.session_tasks(sid), count=RECONCILE_BATCH):
            batch.append(codec.text(raw))
            if len(batch) < RECONCILE_BATCH:
                continue
            canceled += self._read_runs(batch, found, missing)
            read += len(batch)
            batch = []
        canceled += self._read_runs(batch, found, missing)
        read += len(batch) + 1
        lost = any(c > found[s] for s, c in zip(LIVE_STATES, counters, strict=True))
        if not canceled and not (missing and lost):
            return read
        orphans = self._orphans(sid, missing)
        settled = self.scripts.control("settle", sid, {"orphans": orphans}, [],
                                       worker=self.worker)  # fmt: skip
        if len(settled) > 1:
            log.warning("session %s: %d run(s) deleted or canceled with RQ's tools ended "
                        "canceled: %s", sid, len(settled) - 1,
                        ", ".join(settled[1:11]))  # fmt: skip
        return read

    def _read_runs(self, ids: list[str], found: dict[str, int], missing: list[str]) -> int:
        """Count these runs by live state into `found`, those without a job hash into
        `missing`; returns how many waiting ones RQ canceled."""
        if not ids:
            return 0
        pipe = self.scripts.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(self.scripts.rq.job(run_id), ["state", "status"])
        canceled = 0
        for run_id, (state, status) in zip(ids, pipe.execute(), strict=True):
            st = codec.text(state) if state else None
            if st is None:
                missing.append(run_id)
            elif st in found:
                found[st] += 1
                canceled += st != TaskState.STARTED and status == RQ_CANCELED
        return canceled

    def _orphans(self, sid: str, missing: list[str]) -> list[str]:
        """Of the runs whose RQ job is gone, those the session counts as running that no live
        worker holds (a worker holding one settles it as it finishes it); their entries in
        RQ's started registries are removed here (their queue went with their job)."""
        r, k, rq = self.scripts.redis, self.scripts.keys, self.scripts.rq
        running = set(_texts(r.smembers(k.session_running(sid))))
        candidates = [i for i in missing if i in running]
        if not candidates:
            return []
        held: set[str] = set()
        for worker in _texts(r.zrange(self.scripts.gkeys.workers(), 0, -1)):
            held.update(_texts(r.lrange(k.worker_runs(worker), 0, -1)))
        orphans = [i for i in candidates if i not in held]
        prefixes = tuple(f"{i}:" for i in orphans)
        for queue_key in _texts(r.smembers(rq.queues_set)) if orphans else ():
            name = queue_key.removeprefix(rq.queue(""))
            started = _texts(r.zrangebyscore(rq.started(name), "+inf", "+inf"))
            stale = [m for m in started if m.startswith(prefixes)]
            if stale:
                r.zrem(rq.started(name), *stale)
        return orphans
