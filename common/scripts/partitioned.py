"""A namespace of several partitions (keys.Layout, SPEC §9) seen whole: `PartitionedScripts`
holds one `Scripts` per partition (`parts`) and sends each call to the partition it
concerns - a session's to its session's (`of`), a worker's step to the partitions of the runs
it finishes and starts, its claim to one partition at a time. Every script call stays in one
partition. With one partition none of this is made: `Scripts` is used as it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from redis import Redis

from sessionq.common.keys import Keys, RoutedKeys
from sessionq.common.rqcompat import RoutedRQKeys, RQKeys
from sessionq.common.scripts.enqueue import RunColumns
from sessionq.common.scripts.step import Finish, StepReply, WorkerHead
from sessionq.common.settings import Settings


class PartitionedHead(NamedTuple):
    """A worker's heads, one per partition (WorkerHead each), and its queues."""

    parts: tuple[WorkerHead, ...]
    queues: tuple[str, ...]


def _by_session(name: str) -> Callable[..., Any]:
    def call(self: Any, sid: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.of(sid), name)(sid, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _by_op_session(name: str) -> Callable[..., Any]:
    def call(self: Any, op: str, sid: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.of(sid), name)(op, sid, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


# the calls about one session (or run) whose first argument is its id; then (control.lua's)
# those whose second is
SESSION_CALLS = ("destroy", "destroy_call", "request", "resolve", "resolve_call",
                 "request_call", "reserve", "reserve_call", "emit", "emit_call", "log",
                 "state_change", "run_keys", "run_block")  # fmt: skip


class PartitionedMixin:
    """What `Scripts` becomes with several partitions (see the module docstring); mixed into
    Scripts by scripts/__init__.py."""

    parts: tuple[Any, ...]
    layout: Any
    settings: Settings
    keys: Keys
    rq: RQKeys
    grq: RQKeys
    _scripts: dict[str, Any]
    _single: Any  # the Scripts of one partition (scripts/__init__.py)

    def __init__(self, redis: Redis, settings: Settings, partition: int | None = None,
                 registered: Any = None) -> None:  # fmt: skip
        base: Any = super()
        base.__init__(redis, settings, 0, registered)
        self.keys = RoutedKeys(self.layout)
        self.rq = RoutedRQKeys(self.grq, self.layout)
        mine: Any = self
        del mine.globals, mine._global_keys  # (a partition's: asked of parts[n])
        self.parts = tuple(self._single(redis, settings, n, self._scripts)
                           for n in range(self.layout.count))  # fmt: skip
        self._order: deque[Any] = deque()  # the partitions of the steps sent, unanswered
        self.claim_at = 0  # the partition the next claim goes to (they take turns)

    def of(self, sid: str) -> Any:
        return self.parts[self.layout.partition_of(sid)]

    def grouped(self, ids: Sequence[str]) -> list[tuple[Any, list[str]]]:
        groups: dict[int, list[str]] = {}
        for sid in ids:
            groups.setdefault(self.layout.partition_of(sid), []).append(sid)
        return [(self.parts[n], members) for n, members in sorted(groups.items())]

    # -- creating and adding ---------------------------------------------------------------
    def enqueue_call(self, sessions: Sequence[Any], runs: Any, **kwargs: Any) -> Any:
        """enqueue.lua in the partition of its sessions (one partition per call)."""
        return self._enqueue_part(sessions, runs).enqueue_call(sessions, runs, **kwargs)

    def enqueue(self, sessions: Sequence[Any], runs: Any, **kwargs: Any) -> Any:
        return self._enqueue_part(sessions, runs).enqueue(sessions, runs, **kwargs)

    def _enqueue_part(self, sessions: Sequence[Any], runs: Any) -> Any:
        if sessions:
            return self.of(sessions[0][0])
        ids = runs.id if isinstance(runs, RunColumns) else [r[1] for r in runs[:1]]
        return self.of(ids[0]) if ids else self.parts[0]

    # -- namespace-wide ------------------------------------------------------------------------
    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return self.parts[0].heartbeat(*args, **kwargs)

    def reap_candidates(self, *args: Any, **kwargs: Any) -> Any:
        return self.parts[0].reap_candidates(*args, **kwargs)

    def recount(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.parts:
            for state, n in part.recount().items():
                out[state] = out.get(state, 0) + n
        return out

    def remove_ended(self, sids: Sequence[str], *, worker: str = "") -> list[str]:
        return [sid for part, ids in self.grouped(sids)
                for sid in part.remove_ended(ids, worker=worker)]  # fmt: skip

    # -- a worker's steps --------------------------------------------------------------------
    def worker_head(self, worker: str, queues: Sequence[str]) -> Any:  # a PartitionedHead
        return PartitionedHead(tuple(p.worker_head(worker, queues) for p in self.parts),
                               tuple(queues))  # fmt: skip

    def _split(
        self, finishes: Sequence[Finish], starts: Sequence[tuple[str, str]]
    ) -> dict[int, tuple[list[Finish], list[tuple[str, str]]]]:
        groups: dict[int, tuple[list[Finish], list[tuple[str, str]]]] = {}
        for finish in finishes:
            groups.setdefault(self.layout.partition_of(finish[0]), ([], []))[0].append(finish)
        for start in starts:
            groups.setdefault(self.layout.partition_of(start[0]), ([], []))[1].append(start)
        return groups

    def step_send(
        self, head: Any, worker: str, finishes: Sequence[Finish],
        starts: Sequence[tuple[str, str]], current: str, claim: int = 0, waits: bool = False,
        holds: bool = False,
    ) -> None:  # fmt: skip
        """One step per partition of the runs finished and started, the claim last, to one
        partition (they take turns). Partitioned workers do not wait idle in a partition
        (`waits`): enqueues wake them (the wake lists); nor do they hold finishes back."""
        assert not holds, "a partitioned worker holds no finishes back (worker.loop)"
        groups = self._split(finishes, starts)
        claimed = self.claim_at if claim else -1
        if claim:
            self.claim_at = (self.claim_at + 1) % len(self.parts)
            groups.setdefault(claimed, ([], []))
        for n in [n for n in sorted(groups) if n != claimed] + ([claimed] if claim else []):
            fins, runs = groups[n]
            self.parts[n].step_send(head.parts[n], worker, fins, runs, current,
                                    claim=claim if n == claimed else 0)  # fmt: skip
            self._order.append(self.parts[n])

    def step_receive(self) -> StepReply:
        reply: StepReply = self._order.popleft().step_receive()
        return reply

    @property
    def steps_unanswered(self) -> int:
        return len(self._order)

    def step_now(
        self, head: Any, worker: str, finishes: Sequence[Finish], current: str = ""
    ) -> None:
        for n, (fins, _) in sorted(self._split(finishes, []).items()):
            self.parts[n].step_now(head.parts[n], worker, fins, current)

    def took_handed(self, worker: str, run_id: str, attempt: int) -> None:
        self.of(run_id).took_handed(worker, run_id, attempt)

    def wait(self, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """BLPOP on the step connection of a partition (every one has stepped: a worker
        waits after a claim in every partition found nothing), on the keys of every
        partition: one Redis. (On a Redis Cluster, where a BLPOP takes the keys of one slot,
        the worker waits on shard channels instead: worker.shardwake.)"""
        assert not self.settings.clustered, "a cluster's worker waits on shard channels"
        lane = next(p for p in self.parts if p._lane is not None)
        popped: list[bytes] | None = lane.wait(keys, timeout)
        return popped

    def close(self) -> None:
        self._order.clear()
        for part in self.parts:
            part.close()


for _name in SESSION_CALLS:
    setattr(PartitionedMixin, _name, _by_session(_name))
for _name in ("control", "control_call"):
    setattr(PartitionedMixin, _name, _by_op_session(_name))
