"""`ScriptsBase`: the scripts of one prefix, registered on one client, with what every
script's packer needs (the clock arguments, the global keys, run blocks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from sessionq.common import codec, namespace
from sessionq.common.errors import ConfigError, SessionNotFound
from sessionq.common.keys import DEFAULT_QUEUE, Keys, Layout, run_id, session_of
from sessionq.common.rqcompat import RQKeys, rq_home, rq_keys
from sessionq.common.scripts import library, transport
from sessionq.common.scripts.contract import PREFIX_MARK
from sessionq.common.scripts.contracts import (
    CONTRACTS,
    GLOBAL_KEYS,
    RESERVE,
    RUN_BLOCK,
    STATUS_KEYS,
)
from sessionq.common.settings import Settings
from sessionq.common.times import rq_time

BLOCK_CACHE_MAX = 4096
# prelude.lua's pub/sub verbs, and on a Redis Cluster the sharded ones in their place
PUBLISH_LUA = "local PUBLISH, NUMSUB, NUMPAT = 'PUBLISH', 'NUMSUB', 'NUMPAT'"
SHARDED_PUBLISH_LUA = "local PUBLISH, NUMSUB, NUMPAT = 'SPUBLISH', 'SHARDNUMSUB', false"
_S = TypeVar("_S", bound="ScriptsBase")
# the scripts whose writes are acknowledged to someone (a create, an add, an operation, a
# change of state): with SESSIONQ_WAIT_REPLICAS they return once the replicas have them.
# Heartbeats, reaping and events are bookkeeping that a failover may lose and redo. (A
# worker's steps wait on its FastLane.)
DURABLE = frozenset({"enqueue", "create", "control", "request", "destroy", "state", "reserve",
                     "link"})  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


@cache
def _lua_file(name: str) -> str:
    return (resources.files("sessionq.common") / "lua" / f"{name}.lua").read_text()


def lua_source(
    name: str, builders: dict[str, Callable[..., str]], legacy: bool = False,
    prelude: str | None = None,
) -> str:  # fmt: skip
    """A script's source: its shebang, what its body uses of its contract's prologue and of
    the shared prelude (prelude.lua, or `prelude`), then its body (Contract.source).
    `legacy`: for Redis < 7, which cannot read a shebang - the line becomes a comment (Redis
    6 checks maxmemory at a script's first write, not before it runs)."""
    prelude = _lua_file("prelude") if prelude is None else prelude
    source = CONTRACTS[name].source(_lua_file(name), prelude, builders)
    return "--" + source if legacy else source


def key_builders(layout: Layout, rq: RQKeys) -> dict[str, Callable[..., str]]:
    """The keys.py functions a script may build keys with (contract.py turns them into Lua):
    with one partition, the namespace's own; with several, the same under
    contract.PREFIX_MARK - the Lua takes the partition from the call's first key."""
    k = layout.glob if not layout.partitioned else Keys(PREFIX_MARK)
    rq = rq if not layout.partitioned else rq.under(PREFIX_MARK)
    return {
        "job": rq.job, "session": k.session, "history": k.history,
        "events_channel": k.events_channel, "session_running": k.session_running,
        "session_held": k.session_held, "worker_runs": k.worker_runs,
        "worker_inbox": k.worker_inbox, "rq_worker": rq.worker,
        "worker_handed": k.worker_handed, "queue": rq.queue, "wake": k.wake,
        "session_queue": k.session_queue, "session_throttled": k.session_throttled,
    }  # fmt: skip


def reserved(sid: str, count: int, last: Any) -> list[str]:
    """The task ids of reserve.lua's reply `last` to a reservation of `count`."""
    last = int(last)
    if last < 0:
        raise SessionNotFound(sid)
    return [run_id(sid, n) for n in range(last - count + 1, last + 1)]


class ScriptsBase:
    """The scripts registered on one connection (sources per prefix: the key builders hold
    it), and the pieces their packers share."""

    # Redis 7: the scripts as one function library (library.py) where the server takes it
    use_functions = True

    def __init__(
        self, redis: Redis, settings: Settings, partition: int | None = None,
        registered: dict[str, transport.AnyScript] | None = None,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.settings = settings
        self.layout = Layout.of(settings)
        # the scripts, registered once for every partition (a dict they share)
        self._scripts: dict[str, transport.AnyScript] = {} if registered is None else registered
        self._blocks: dict[tuple[str, str], list[str]] = {}  # run blocks (run_block)
        self._queue_blocks: dict[str, list[str]] = {}  # enqueue.lua's, by queue name
        self._one_calls: dict[tuple[str, str, str], Any] = {}  # (enqueue_one_call)
        self._create_calls: dict[tuple[str, str, str], Any] = {}  # (create_call)
        # Redis 7 reads each script's flags from its shebang, Redis 6 refuses the line: which
        # one this is, is asked before the first script is sent (transport.refuses_shebang)
        self.legacy: bool | None = None
        # SESSIONQ_WAIT_REPLICAS: writes acknowledged only once that many replicas have them
        self.durability = (
            transport.Durability(settings.wait_replicas, int(settings.wait_timeout_s * 1000))
            if settings.wait_replicas else None
        )  # fmt: skip
        # the namespace's own keys (worker heartbeats, locks) and RQ's own (its worker
        # registry, `rq suspend`: under the prefix RQ's classes serve in this process, rq_home)
        self.gkeys: Keys = self.layout.glob
        self.grq: RQKeys = rq_keys(rq_home(settings))
        self.partition = partition or 0
        # this one's partitions (see `of`): itself, unless it is the whole of a partitioned
        # namespace (scripts.partitioned.PartitionedScripts)
        self.parts: tuple[Any, ...] = (self,)
        if self.layout.partitioned:
            self.keys = k = self.layout.part(self.partition)
            self.rq = self.grq.under(k.prefix)
        else:
            self.keys = k = Keys(settings.prefix)
            self.rq = rq_keys(settings.prefix)
        self.builders = key_builders(self.layout, self.rq)
        status_keys = dict(zip(STATUS_KEYS, (k.idx_status(s[4:]) for s in STATUS_KEYS),
                               strict=True))  # fmt: skip
        self.globals = {"chan_all": k.events_all_channel(), **status_keys,
                        "counters": k.run_counts(), "depths": k.queue_depths(),
                        "retention": k.retention()}  # fmt: skip
        self._global_keys = [self.globals[name] for name in GLOBAL_KEYS]
        self._call_lane = transport.Lane()  # `call`'s connection (transport.Lane)

    def of(self: _S, sid: str) -> _S:
        """The scripts of the partition a session (or a run, or an operation) is in."""
        return self

    def op_tag(self, sid: str) -> str:
        """What an operation's id on session `sid` starts with: its partition's mark (the
        session id's first byte, keys.Layout), so that `of` finds it; none with one."""
        return sid[:2] if self.layout.partitioned else ""

    def foreign(self, run_id: str) -> bool:
        """Is run `run_id` of another partition than this one? A script call stays in its
        partition (a slot of a Redis Cluster): a parent of another partition is read and
        told of its children by calls of its own (SPEC §9, producer.links)."""
        return self.layout.partitioned and self.layout.partition_of(run_id) != self.partition

    def grouped(self: _S, ids: Sequence[str]) -> list[tuple[_S, list[str]]]:
        """Session (or run) ids by partition, in the order given within each: (the scripts
        of the partition, its ids)."""
        return [(self, list(ids))]

    @property
    def _script(self) -> dict[str, transport.AnyScript]:
        """The scripts, registered for this server's version (asked once, on first use, with
        the namespace's partition count checked: common.namespace): the function library
        where the server loads it (Redis 7, an ACL allowing FUNCTION LOAD and FCALL), else
        the scripts by EVALSHA."""
        if not self._scripts:
            functions = self._functions()
            run = functions.get("run")
            if self.legacy is None:
                self.legacy, took = self._first_contact(run)
            else:
                took = run is not None and transport.has_functions(self.redis, run)
            self._register(functions if took else {})
        return self._scripts

    def _first_contact(self, run: transport.Function | None) -> tuple[bool, bool]:
        """Whether the server refuses a shebang and whether it takes the function library
        (transport.first_use), and the partition count checked (ConfigError naming
        SESSIONQ_PARTITIONS): in one round trip with one partition on one Redis, else the
        check on its own."""
        if self.layout.partitioned or transport.clustered(self.redis):
            namespace.check(self.redis, self.layout)
            return transport.first_use(self.redis, run)
        pipe = self.redis.pipeline(transaction=False)
        transport.queue_first_use(pipe, run)
        namespace.queue_record(pipe, self.layout)
        replies = pipe.execute(raise_on_error=False)
        namespace.judge(self.layout, replies)
        return transport.first_use_replies(replies[0], replies[1] if run else None)

    def check_namespace(self) -> None:
        """Register the scripts now, and with them check the namespace's partition count
        (ConfigError naming SESSIONQ_PARTITIONS), as a script's first call would."""
        self._script  # noqa: B018 - the property does it

    def _functions(self) -> dict[str, transport.Function]:
        """Every script as a function of the library (library.py), or {} where the scripts
        go by EVALSHA (Redis 6, or use_functions off)."""
        if self.legacy or not self.use_functions:  # (None: not known yet - first_use asks)
            return {}
        bodies = {name: _lua_file(name) for name in CONTRACTS}
        source, names = library.library(CONTRACTS, bodies, self._prelude(), self.builders)
        return {name: transport.Function(names[name], source,
                                         self.redis.register_script(self._source(name)))
                for name in CONTRACTS}  # fmt: skip

    def _register(self, functions: dict[str, transport.Function]) -> None:
        if functions:
            self._scripts.update(functions)
        else:
            self._scripts.update({name: self.redis.register_script(self._source(name))
                                  for name in CONTRACTS})  # fmt: skip

    def _prelude(self) -> str:
        prelude = _lua_file("prelude")
        assert PUBLISH_LUA in prelude, "prelude.lua's pub/sub verbs moved"
        if self.settings.clustered:
            if self.legacy:
                raise ConfigError("a Redis Cluster needs Redis 7 or newer (sharded pub/sub)")
            # sharded pub/sub (the hubs SSUBSCRIBE on a cluster, producer.routing): the cluster
            # bus carries a SPUBLISH to no other master, and SHARDNUMSUB counts the listeners
            prelude = prelude.replace(PUBLISH_LUA, SHARDED_PUBLISH_LUA)
        return prelude

    def _source(self, name: str) -> str:
        return lua_source(name, self.builders, bool(self.legacy), self._prelude())

    async def ensure_version_async(self, redis: AsyncRedis) -> None:
        """Ask `redis` (asyncio) whether it reads shebangs, and load the function library,
        unless known (see _script), and check the namespace's partition count
        (common.namespace)."""
        if not self._scripts:
            functions = self._functions()
            run = functions.get("run")
            if self.legacy is None:
                self.legacy, took = await self._first_contact_async(redis, run)
            else:
                took = run is not None and await transport.has_functions_async(redis, run)
            self._register(functions if took else {})

    async def _first_contact_async(
        self, redis: AsyncRedis, run: transport.Function | None
    ) -> tuple[bool, bool]:
        """_first_contact on redis.asyncio."""
        if self.layout.partitioned or transport.clustered(redis):
            await namespace.check_async(redis, self.layout)
            return await transport.first_use_async(redis, run)
        async with redis.pipeline(transaction=False) as pipe:
            transport.queue_first_use(pipe, run)
            namespace.queue_record(pipe, self.layout)
            replies = await pipe.execute(raise_on_error=False)
        namespace.judge(self.layout, replies)
        return transport.first_use_replies(replies[0], replies[1] if run else None)

    def script(self, name: str) -> transport.AnyScript:
        return self._script[name]

    def clock(self, now: float) -> dict[str, Any]:
        """The clock arguments of a state-changing script (contracts.CLOCK_ARGS)."""
        return {"now_ms": int(now * 1000), "now_iso": rq_time(now),
                "cap": self.settings.history_cap}  # fmt: skip

    # -- key lists -------------------------------------------------------------------------
    def run_keys(self, run_id: str, queue: str) -> dict[str, str]:
        """One run's keys by RUN_BLOCK name."""
        sid, k, rq = session_of(run_id), self.keys, self.rq
        return {"job": rq.job(run_id), "session": k.session(sid), "history": k.history(sid),
                "chan": k.events_channel(sid), "running": k.session_running(sid),
                "held": k.session_held(sid), "started": rq.started(queue),
                "finished": rq.finished(queue), "failed": rq.failed(queue),
                "queue": rq.queue(queue), "wake": k.wake(queue),
                "squeue": k.session_queue(sid, queue),
                "throttled": k.session_throttled(sid)}  # fmt: skip

    def run_block(self, run_id: str, queue: str) -> list[str]:
        """A run's keys in RUN_BLOCK order; all but the job key cached per session and queue."""
        sid = session_of(run_id)
        base = self._blocks.get((sid, queue))
        if base is None:
            named = self.run_keys(run_id, queue)
            base = [named[name] for name in RUN_BLOCK]
            if len(self._blocks) > BLOCK_CACHE_MAX:
                self._blocks.clear()
            self._blocks[(sid, queue)] = base
        block = base.copy()
        block[0] = self.rq.job(run_id)
        return block

    # -- task ids --------------------------------------------------------------------------
    def reserve_call(self, sid: str, count: int) -> tuple[list[str], list[Any]]:
        """The keys and args of reserve.lua: `count` new task ids of session `sid` (see
        reserved), never handed out before, even across a failover."""
        k = self.keys
        return (RESERVE.pack_keys({"session": k.session(sid), "epoch": k.data_epoch()}),
                RESERVE.pack_args({"count": count}))  # fmt: skip

    def reserve(self, sid: str, count: int) -> list[str]:
        """`count` new task ids of session `sid`, in one call (reserve_call)."""
        return reserved(sid, count, self.call("reserve", *self.reserve_call(sid, count)))

    # -- sending ---------------------------------------------------------------------------
    def call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, client: Any = None
    ) -> Any:
        """Run script `name` (transport.call: any thread; a pipeline as `client` queues it);
        a write someone is told of (DURABLE) is acknowledged once SESSIONQ_WAIT_REPLICAS
        replicas have it."""
        wait = self.durability if name in DURABLE else None
        if client is not None:
            return transport.call(self._script[name], keys, args, client, wait,
                                  self.keys.replicated())  # fmt: skip
        return transport.call(self._script[name], keys, args, self.redis, wait,
                              self.keys.replicated(), self._call_lane)  # fmt: skip

    def ensure_replicated(self) -> None:
        """NotReplicated unless SESSIONQ_WAIT_REPLICAS replicas have every write made so far
        (after a pipeline of script calls)."""
        transport.ensure_replicated(self.redis, self.durability, self.keys.replicated())

    async def call_async(
        self, redis: AsyncRedis, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        await self.ensure_version_async(redis)
        return await transport.call_async(redis, self._script[name], keys, args, self.durability)

    def ensure_loaded(self) -> None:
        """Load every script now (one round trip; on a cluster, one per master), for
        pipelines that call them. Where the server refuses the function library (an ACL
        without FUNCTION LOAD, a full Redis: transport.refused), the scripts go by EVALSHA
        from now on."""
        if not transport.load(self.redis, list(self._script.values())):
            self._scripts.update({name: transport.fallback(script)
                                  for name, script in self._scripts.items()})  # fmt: skip

    def with_queues(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """[(run id, the queue it came from)] - what the scripts need to name its keys."""
        pipe = self.redis.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(self.rq.job(rid), "origin")
        origins = pipe.execute()
        return [
            (rid, codec.text(origin) if origin else DEFAULT_QUEUE)
            for rid, origin in zip(run_ids, origins, strict=True)
        ]


def texts(reply: Sequence[Any]) -> list[Any]:
    """A script's reply with its bytes as text."""
    return [r.decode() if isinstance(r, bytes) else r for r in reply]
