"""Every Redis key and pub/sub channel sessionq owns, under one prefix (SPEC §1).

RQ's own keys (under `<prefix>rq`) are not spelled here: `common.rqcompat.RQKeys` takes them
from RQ's classes, so they stay exactly what RQ's tools read.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from sessionq.common.settings import DEFAULT_PREFIX, Settings

CONTROL_QUEUE = "control"
DEFAULT_QUEUE = "default"
COMMANDS_QUEUE = "commands"
COMMANDS_SUFFIX = ".commands"


def command_queue_for(queue: str | None) -> str:
    """The queue command runs of `queue` go to: only --allow-commands workers serve it."""
    return COMMANDS_QUEUE if queue in (None, DEFAULT_QUEUE) else f"{queue}{COMMANDS_SUFFIX}"


RUN_ID_SEPARATOR = "-"


def run_id(sid: str, number: int) -> str:
    """A task id is `<session id>-<n>`, n counting the session's runs from 1: the session is
    derived from it, never stored twice (the Lua side's rule comes from the same constant,
    common/scripts/contract.py)."""
    return f"{sid}{RUN_ID_SEPARATOR}{number}"


def session_of(task_id: str) -> str:
    """The session of a task id (see run_id)."""
    return task_id.rpartition(RUN_ID_SEPARATOR)[0]


def run_number(task_id: str) -> int:
    """The n of a task id: the order runs were added in (0 for an id not of that form)."""
    tail = task_id.rpartition(RUN_ID_SEPARATOR)[2]
    return int(tail) if tail.isdigit() else 0


class Keys:
    """Key and channel names under one prefix (Settings.prefix, default "sq:")."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    # -- the session index -------------------------------------------------------------
    def sessions(self) -> str:
        """HASH session id -> msgpack static record; producer.client writes; destroy deletes."""
        return f"{self.prefix}sessions"

    def names(self) -> str:
        """HASH "<owner>/<name>" -> id of a persistent session; producer.session; destroy."""
        return f"{self.prefix}names"

    def idx_status(self, status: str) -> str:
        """SET of session ids with this status; the Lua scripts keep it; destroy deletes."""
        return f"{self.prefix}idx:status:{status}"

    def run_counts(self) -> str:
        """HASH run state -> count over all sessions; the Lua scripts keep it (stats())."""
        return f"{self.prefix}runs:counts"

    def queue_depths(self) -> str:
        """HASH a queue's line key (RQ's queue list) -> runs waiting on that queue: its line
        holds one run per session (fair share), the rest wait in the sessions' own lists;
        the scripts that queue and claim runs keep it (prelude `push_run`, run.lua); stats
        read it. Never deleted (one field per queue)."""
        return f"{self.prefix}queues:depths"

    def idx_kind(self, kind: str) -> str:
        """SET of session ids of this kind; create adds; destroy removes."""
        return f"{self.prefix}idx:kind:{kind}"

    def idx_owner(self, owner: str) -> str:
        """SET of session ids of this owner; create adds; destroy removes."""
        return f"{self.prefix}idx:owner:{owner}"

    # -- one session -------------------------------------------------------------------
    def session(self, sid: str) -> str:
        """HASH status, counters by task state, seq, timestamps; Lua scripts; destroy."""
        return f"{self.prefix}session:{sid}"

    def session_tasks(self, sid: str) -> str:
        """HASH task id -> task name, in add order by id; create/add; remove/destroy."""
        return f"{self.prefix}session:{sid}:tasks"

    def session_names(self, sid: str) -> str:
        """HASH task name -> task id (persistent sessions); producer.session; destroy."""
        return f"{self.prefix}session:{sid}:names"

    def session_task_keys(self, sid: str) -> str:
        """HASH idempotency key -> task id; producer.session; destroy."""
        return f"{self.prefix}session:{sid}:keys"

    def session_queue(self, sid: str, queue: str) -> str:
        """LIST the session's runs waiting on `queue` behind the one it has in the queue's
        line (fair share: RQ's queue list holds each waiting session's next run, served in
        turn); enqueue/run/control scripts push, run.lua's claim pops; destroy deletes."""
        return f"{self.prefix}session:{sid}:queue:{queue}"

    def session_throttled(self, sid: str) -> str:
        """SET of the queues (msgpack: their line, wake and session-queue keys) whose line
        the session left because max_running of its runs were running; run.lua's claim adds,
        a run's end takes one back (prelude `unthrottle`); destroy deletes."""
        return f"{self.prefix}session:{sid}:throttled"

    def session_held(self, sid: str) -> str:
        """ZSET runs parked while the session is paused, scored by task number (add order);
        run/enqueue scripts park, play/step release; destroy/stop delete."""
        return f"{self.prefix}session:{sid}:held"

    def session_running(self, sid: str) -> str:
        """SET of the session's started runs; start/finish scripts; destroy."""
        return f"{self.prefix}session:{sid}:running"

    def session_objects(self, sid: str) -> str:
        """HASH object id -> msgpack object (Session.save); producer.session; destroy."""
        return f"{self.prefix}session:{sid}:objects"

    def session_state(self, sid: str) -> str:
        """HASH key -> msgpack value, the shared state; producer and tasks; destroy."""
        return f"{self.prefix}session:{sid}:state"

    def history(self, sid: str) -> str:
        """ZSET event bytes scored by seq, capped at history_cap; emit; expires after destroy."""
        return f"{self.prefix}history:{sid}"

    def logs(self, sid: str) -> str:
        """LIST msgpack log entries, capped at logs_cap; worker log script; destroy."""
        return f"{self.prefix}logs:{sid}"

    # -- workers -----------------------------------------------------------------------
    def workers(self) -> str:
        """ZSET worker name -> last heartbeat (epoch ms, Redis's clock: TIME); the heartbeat
        script (the worker's watcher, its supervisor vouching); recover.lua removes."""
        return f"{self.prefix}workers"

    def worker_steady(self, worker: str) -> str:
        """STRING the time (Redis's clock, epoch ms) since which this worker's heartbeats
        have gone through on time; the heartbeat script writes it with PX; expires."""
        return f"{self.prefix}worker:{worker}:steady"

    def worker_runs(self, worker: str) -> str:
        """LIST runs a worker holds (claimed, then started); claim/finish; reaper deletes."""
        return f"{self.prefix}worker:{worker}:runs"

    def worker_inbox(self, worker: str) -> str:
        """LIST runs an enqueue started for this worker while it waited idle, one msgpack
        [run id, queue, data, sq, timeout, attempt] each; enqueue pushes, the worker pops
        (BLPOP, or its next step); what is left when it is lost goes back unrun."""
        return f"{self.prefix}worker:{worker}:inbox"

    def worker_handed(self, worker: str) -> str:
        """STRING the run last handed to this worker, until the worker says it has taken it
        (deletes it): recovery gives a run still named here back unrun, uncharged."""
        return f"{self.prefix}worker:{worker}:handed"

    def idle_workers(self) -> str:
        """SET of workers waiting idle for work; a worker's empty claim adds it; an enqueue
        that hands it a run or finds its heartbeat late, its next claim, its leaving or its
        recovery removes it."""
        return f"{self.prefix}idle"

    def idle(self, queue: str) -> str:
        """LIST of the workers waiting on a queue, in the order they last found nothing (one
        entry each; an entry of a worker no longer in idle_workers, or that does not serve
        the queue - a lost worker's, whose name came back - is dropped); run.lua pushes,
        enqueue pops."""
        return f"{self.prefix}idle:{queue}"

    def wake(self, queue: str) -> str:
        """LIST of at most one token: "queue may have work"; enqueuers push, workers BLPOP.
        On a Redis Cluster also the shard channel of the same name, where scripts SPUBLISH
        each wake for the idle workers subscribed there (worker.shardwake)."""
        return f"{self.prefix}wake:{queue}"

    def schedule(self) -> str:
        """ZSET run id -> due time (epoch ms) of runs waiting on `at`/`in_`/`cron`; enqueue
        and control scripts add; the scheduler's fire step removes (once, whoever wins)."""
        return f"{self.prefix}schedule"

    def retention(self) -> str:
        """ZSET session id -> when it is due for removal (epoch ms: its end + its retention,
        the session hash's retention_ms); the scripts add a session as it ends (prelude
        `set_status`) and take it out as it runs again or is destroyed; the workers'
        scheduler removes the due ones (ControlCalls.remove_ended)."""
        return f"{self.prefix}retention"

    def waiting(self) -> str:
        """SET of run ids deferred on dependencies; enqueue/control scripts; resolve removes."""
        return f"{self.prefix}waiting"

    def lock(self, name: str) -> str:
        """STRING held with PX by one worker at a time (reaper, scheduler); expires."""
        return f"{self.prefix}lock:{name}"

    def data_epoch(self) -> str:
        """HASH server (the Redis process and replication history that last wrote here: INFO's
        run_id and master_replid), gen (a number new with each of them): the scripts' rule
        that task ids are never handed out twice (reserve.lua, prelude `data_gen`)."""
        return f"{self.prefix}epoch"

    def replicated(self) -> str:
        """CHANNEL nobody listens to: a PUBLISH on it marks a point in the replication stream
        that WAIT counts from (scripts.transport.ensure_replicated)."""
        return f"{self.prefix}replicated"

    def dashboard(self) -> str:
        """STRING the running dashboard's base URL; the dashboard sets it with a TTL."""
        return f"{self.prefix}dashboard"

    # -- channels ----------------------------------------------------------------------
    def events_channel(self, sid: str) -> str:
        """CHANNEL one session's live events (msgpack, one event a message)."""
        return f"{self.prefix}events:{sid}"

    def events_all_channel(self) -> str:
        """CHANNEL every session's live events."""
        return f"{self.prefix}events"


# -- partitions (SPEC §9, Redis Cluster) ------------------------------------------------------
SESSION_ID_BYTES = 6  # a session id is 12 hex digits; with partitions its first byte says which


def _tag(partition: int, partitions: int) -> str:
    """The hash tag of a partition: the first `p<n>.<k>` whose slot lies in the n-th of
    `partitions` equal slices of the slots - a cluster whose masters hold equal slot ranges
    (as `redis-cli --cluster create` makes them) then holds equal numbers of partitions."""
    low = partition * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    k = 0
    while not low <= key_slot(f"p{partition}.{k}".encode()) < high:
        k += 1
    return f"p{partition}.{k}"


@cache
def tags(partitions: int) -> tuple[str, ...]:
    return tuple(_tag(n, partitions) for n in range(partitions))


class Layout:
    """Where a namespace's keys live. One partition (one Redis, the default): every key under
    the prefix, with today's names. P partitions (a Redis Cluster): partition n's keys - its
    sessions and everything of them, its indexes and counters, its RQ queues, job hashes and
    registries, its workers' run lists - under `<prefix>{<tag n>}:`, so they share one slot;
    the keys of the whole namespace (worker heartbeats, locks, the dashboard) under
    `<prefix>{g}:`. A session id's first byte names its partition, so that run id -> session
    -> partition needs no lookup."""

    __slots__ = ("count", "glob", "prefix", "_parts")

    def __init__(self, prefix: str = DEFAULT_PREFIX, partitions: int = 1) -> None:
        self.prefix, self.count = prefix, partitions
        self._parts: tuple[Keys, ...]
        if partitions == 1:
            self._parts = (Keys(prefix),)
            self.glob = self._parts[0]
        else:
            self._parts = tuple(Keys(f"{prefix}{{{tag}}}:") for tag in tags(partitions))
            self.glob = Keys(f"{prefix}{{g}}:")

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(settings.prefix, settings.partition_count)

    def partitions_key(self) -> str:
        """STRING the namespace's partition count, the same name whatever the count (under
        the bare prefix, no hash tag): set (NX) at a process's first script call
        (common.namespace), so that a process with another count is refused; never deleted.
        Absent on a namespace whose one-partition keys exist: 1 (made before it was kept)."""
        return f"{self.prefix}partitions"

    @property
    def partitioned(self) -> bool:
        return self.count > 1

    def part(self, partition: int) -> Keys:
        """The keys of one partition."""
        return self._parts[partition]

    def parts(self) -> tuple[Keys, ...]:
        """The keys of every partition, in partition order."""
        return self._parts

    def partition_of(self, sid: str) -> int:
        """The partition of a session id (or of a run id: its session's)."""
        if self.count == 1:
            return 0
        head = sid[:2]
        try:
            return int(head, 16) % self.count
        except ValueError:  # not an id this layout made: still one fixed partition
            return key_slot(sid.encode()) % self.count

    def of_session(self, sid: str) -> Keys:
        """The keys of the partition a session (or a run: session_of first) lives in."""
        return self._parts[self.partition_of(sid)]

    def partition_of_name(self, owner: str, name: str) -> int:
        """The partition of a persistent session, from its owner and name alone: its name's
        claim and its record live there, so that claiming the name and making the session
        are one atomic step."""
        return key_slot(f"{owner}/{name}".encode()) % self.count if self.count > 1 else 0

    def new_session_id(self, partition: int | None = None) -> str:
        """A new session id: random, in `partition` (None: a random one, spreading the
        sessions over every partition)."""
        sid = secrets.token_hex(SESSION_ID_BYTES)
        if partition is None or self.count == 1:
            return sid
        spread = secrets.randbelow(256 // self.count) * self.count
        return f"{partition + spread:02x}{sid[2:]}"


# a session's own keys (Keys methods whose first argument is a session id): found from the id
SESSION_KEY_METHODS = ("session", "session_tasks", "session_names", "session_task_keys",
                       "session_queue", "session_throttled", "session_held", "session_running",
                       "session_objects", "session_state", "history", "logs",
                       "events_channel")  # fmt: skip
# a partition's own globals: with several partitions, there is one of each per partition
PARTITION_KEY_METHODS = ("sessions", "names", "idx_status", "run_counts", "queue_depths",
                         "idx_kind", "idx_owner", "worker_runs", "worker_inbox", "worker_handed",
                         "idle_workers", "idle", "wake", "schedule", "retention", "waiting",
                         "data_epoch", "events_all_channel")  # fmt: skip


class RoutedKeys(Keys):
    """The keys of a partitioned namespace seen whole (keys.Layout with P > 1): a session's
    own keys from its id (its partition's), the namespace's own (worker heartbeats, locks,
    the dashboard) from Layout.glob; a partition's globals are asked of that partition
    (Layout.part) - here they raise, so that no caller reads one partition for all."""

    __slots__ = ("layout",)

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout.glob.prefix)
        self.layout = layout

    def all_channels(self) -> list[str]:
        """Every partition's channel of all its sessions' events."""
        return [part.events_all_channel() for part in self.layout.parts()]


def _routed(name: str) -> Any:
    def key(self: RoutedKeys, sid: str, *rest: str) -> str:
        made: str = getattr(self.layout.of_session(sid), name)(sid, *rest)
        return made

    key.__name__ = key.__qualname__ = name
    return key


def _per_partition(name: str) -> Any:
    def key(self: RoutedKeys, *_: str) -> str:
        raise TypeError(f"keys.{name}: one per partition - ask Layout.part(n)")

    key.__name__ = key.__qualname__ = name
    return key


for _name in SESSION_KEY_METHODS:
    setattr(RoutedKeys, _name, _routed(_name))
for _name in PARTITION_KEY_METHODS:
    setattr(RoutedKeys, _name, _per_partition(_name))
