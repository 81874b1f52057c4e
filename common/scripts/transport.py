"""How a script call reaches Redis: the one module that sends EVALSHA and FCALL.

A script is a redis-py `Script` (EVALSHA of its source) or, on a Redis 7 that allows it, a
`Function` of sessionq's function library (FCALL; library.py): `verb`, `handle`,
`load_command` and `missing` say how each is called, loaded, and found lacking. Two ways,
one rule each: `call` (any thread; a connection of the client's pool, packed by hiredis,
falling back to redis-py's command layer on a missing script or a lost connection, or queued
on a pipeline) and `FastLane` (a worker's own connection, commands packed by hand from
cached pieces and pipelined). Both load a script on the connection that reported NOSCRIPT
(or "Function not found": a restarted server, FUNCTION FLUSH), and try a bounded number of
times. On a Redis Cluster both go to the master of the slot of the call's first key
(`server_of`); a MOVED (the slot went elsewhere) is handled as a lost connection: the
cluster client learns the new layout and the call is sent again.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import hiredis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.errors import NotReplicated

NOSCRIPT_RETRIES = 3  # a server that keeps forgetting scripts is not tried for ever
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
# a cluster's "not here" (MOVED, ASK: the slot moved) and "not now" (a failover under way)
ELSEWHERE = (AskError, ClusterDownError, TryAgainError)


class Function:
    """A script of sessionq's function library (library.py), called by FCALL: its
    function's `name`, and the `library` source, loaded (FUNCTION LOAD) wherever the server
    lacks it; `fallback`, the same script sent by EVALSHA, where the server refuses to load
    the library again (`refused`: an ACL without FUNCTION LOAD, a full Redis)."""

    __slots__ = ("name", "library", "fallback")

    def __init__(self, name: str, library: str, fallback: Script) -> None:
        self.name = name
        self.library = library
        self.fallback = fallback


AnyScript = Script | Function  # what the scripts' registry holds


def verb(script: AnyScript) -> str:
    return "FCALL" if isinstance(script, Function) else "EVALSHA"


def handle(script: AnyScript) -> str:
    """What `verb` names the script by: the function's name, or the source's SHA1."""
    return script.name if isinstance(script, Function) else script.sha


def load_command(script: AnyScript) -> tuple[Any, ...]:
    """The command that defines `script` on a server (the whole library, for a Function)."""
    if isinstance(script, Function):  # (no REPLACE: the name is a hash of the source)
        return ("FUNCTION", "LOAD", script.library)
    return ("SCRIPT", "LOAD", script.script)


def refused(error: BaseException) -> bool:
    """Is `error` a server refusing FUNCTION LOAD where SCRIPT LOAD may pass: NOPERM (an ACL
    that allows FCALL, not FUNCTION LOAD), OOM (a full Redis: SCRIPT LOAD is not refused),
    READONLY? The call then goes by EVALSHA (Function.fallback)."""
    return isinstance(error, (NoPermissionError, OutOfMemoryError, ReadOnlyError)) or (
        isinstance(error, ResponseError) and str(error).startswith(("NOPERM", "OOM", "READONLY"))
    )


def _loaded(reply: Any) -> Any:
    """A load's reply, its error raised - but "Library ... already exists": the server has
    the very source (its name is a hash of it)."""
    if isinstance(reply, ResponseError) and not _exists(reply):
        raise reply
    return reply


def _exists(error: ResponseError) -> bool:
    return str(error).startswith("Library ") and "already exists" in str(error)


def missing(reply: Any) -> bool:
    """Is `reply` (an exception, or a pipeline's reply) a server's "I have no such script":
    NOSCRIPT, or FCALL's "Function not found"?"""
    if isinstance(reply, NoScriptError):
        return True
    return isinstance(reply, ResponseError) and str(reply).startswith("Function not found")


def command(script: AnyScript, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
    """The call of `script` with `keys` and `args`, as a command's words."""
    return (verb(script), handle(script), len(keys), *keys, *args)


def queue(pipe: Any, script: AnyScript, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue a call of `script` on a pipeline (sync or asyncio, a cluster's too): the caller
    has loaded the scripts (load_all), and looks for `missing` among the replies."""
    if isinstance(script, Function):
        pipe.fcall(script.name, len(keys), *keys, *args)
    else:
        pipe.evalsha(script.sha, len(keys), *keys, *args)


def load(redis: Any, scripts: Sequence[AnyScript]) -> bool:
    """Define `scripts` on `redis` (on a cluster, on every master), the library once for all
    its functions. False where the server refused the library (`refused`): the Functions'
    fallbacks were loaded instead, for the caller to send them by EVALSHA."""
    try:
        _load_commands(redis, [load_command(s) for s in scripts])
    except ResponseError as exc:
        if not refused(exc):
            raise
        _load_commands(redis, [load_command(fallback(s)) for s in scripts])
        return False
    return True


def fallback(script: AnyScript) -> Script:
    """`script` as sent by EVALSHA."""
    return script.fallback if isinstance(script, Function) else script


def _load_commands(redis: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    commands = list(dict.fromkeys(commands))
    servers = (
        [redis.get_redis_connection(node) for node in redis.get_primaries()]
        if clustered(redis) else [redis]
    )  # fmt: skip
    for server in servers:
        pipe = server.pipeline(transaction=False)
        for words in commands:
            pipe.execute_command(*words)
        for reply in pipe.execute(raise_on_error=False):
            _loaded(reply)


async def load_async(redis: Any, scripts: Sequence[AnyScript]) -> bool:
    """load, on redis.asyncio (`redis`: Any, as redis-py 5.3's execute_command is
    unannotated)."""
    try:
        await _load_commands_async(redis, [load_command(s) for s in scripts])
    except ResponseError as exc:
        if not refused(exc):
            raise
        await _load_commands_async(redis, [load_command(fallback(s)) for s in scripts])
        return False
    return True


async def _load_commands_async(redis: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    nodes = redis.get_primaries() if clustered(redis) else [None]
    for words in dict.fromkeys(commands):
        for node in nodes:
            target = {} if node is None else {"target_nodes": node}
            try:  # ("FUNCTION LOAD": one word, as a cluster's client knows the command)
                await redis.execute_command(f"{words[0]} {words[1]}", *words[2:], **target)
            except ResponseError as exc:
                _loaded(exc)


def library_of(function: Function) -> str:
    """The name of `function`'s library (its source's shebang: `#!lua name=...`)."""
    return function.library.split("\n", 1)[0].split("name=", 1)[1]


def first_use(redis: Any, function: Function | None) -> tuple[bool, bool]:
    """What a server is, asked before the first script is sent: does it refuse a script's
    shebang (Redis 6: `refuses_shebang`), and does it take `function`'s library
    (`has_functions`; None: the scripts go by EVALSHA)? On one server in one round trip
    (queue_first_use: as many as the probe alone); on a cluster, the probe, then the library
    on every master."""
    if function is None or clustered(redis):
        legacy = refuses_shebang(redis)
        return legacy, function is not None and not legacy and has_functions(redis, function)
    pipe = redis.pipeline(transaction=False)
    queue_first_use(pipe, function)
    return first_use_replies(*pipe.execute(raise_on_error=False))


async def first_use_async(redis: Any, function: Function | None) -> tuple[bool, bool]:
    """first_use, on redis.asyncio."""
    if function is None or clustered(redis):
        legacy = await refuses_shebang_async(redis)
        took = function is not None and not legacy and await has_functions_async(redis, function)
        return legacy, took
    pipe = redis.pipeline(transaction=False)
    queue_first_use(pipe, function)
    return first_use_replies(*await pipe.execute(raise_on_error=False))


def queue_first_use(pipe: Any, function: Function | None) -> None:
    """Queue first_use's questions on `pipe` (a pipeline of one server, raise_on_error=False):
    the shebang probe, and FUNCTION LOAD of `function`'s library unless None; their replies
    go to first_use_replies."""
    pipe.execute_command("SCRIPT", "LOAD", SHEBANG_PROBE)
    if function is not None:
        pipe.execute_command(*load_command(function))


def first_use_replies(probe: Any, loaded: Any = None) -> tuple[bool, bool]:
    """(refuses a shebang, takes the library) from queue_first_use's replies (`loaded`: None
    when no library was offered)."""
    if isinstance(probe, ResponseError):
        if _refused_shebang(probe):
            return True, False
        raise probe
    return False, loaded is not None and _took(loaded)


def has_functions(redis: Any, function: Function) -> bool:
    """Does the server take `function`'s library (FUNCTION LOAD; "already exists" too - no
    FUNCTION LIST: a library another user loaded says nothing of this one's rights)? False
    where it refuses for good - no such command (Redis 6), an ACL without FUNCTION and FCALL
    (README: Security), a full Redis: the scripts then go by EVALSHA; any other refusal
    (BUSY, READONLY, ...: not now) is raised, for the caller's retry. On a cluster it is
    loaded on every master."""
    try:
        _load_commands(redis, [load_command(function)])
    except ResponseError as exc:
        return _took(exc)
    return True


async def has_functions_async(redis: Any, function: Function) -> bool:
    """has_functions, on redis.asyncio."""
    try:
        await _load_commands_async(redis, [load_command(function)])
    except ResponseError as exc:
        return _took(exc)
    return True


def _took(reply: Any) -> bool:
    """Is `reply` to FUNCTION LOAD the library's being there (False: refused for good)?"""
    if isinstance(reply, ResponseError) and not _exists(reply):
        if _for_good(reply):
            return False
        raise reply
    return True


def _for_good(error: ResponseError) -> bool:
    """Does `error` say the server will not take the library in this process's life?"""
    return isinstance(error, (NoPermissionError, OutOfMemoryError)) or str(error).startswith(
        ("NOPERM", "OOM", "ERR unknown command", "unknown command")
    )


def _call_slow(script: AnyScript, keys: Sequence[str], args: Sequence[Any], redis: Any) -> Any:
    """A call through redis-py's command layer (its retry with backoff, a cluster's
    routing), the script loaded first if the server lacks it (`redis`: Any, as redis-py
    5.3's execute_command is unannotated)."""
    if not isinstance(script, Function):
        return script(keys=keys, args=args, client=redis)
    try:
        return redis.execute_command(*command(script, keys, args))
    except ResponseError as exc:
        if not missing(exc):
            raise
    if not load(server_of(redis, keys[0] if keys else None), [script]):
        return script.fallback(keys=keys, args=args, client=redis)  # (refused: EVALSHA)
    return redis.execute_command(*command(script, keys, args))


_KINDS: dict[tuple[type, tuple[type, ...]], bool] = {}


def _is(kind: type, kinds: tuple[type, ...]) -> bool:
    """issubclass, cached by type: redis-py's clients are Protocols, whose isinstance costs
    microseconds - several on the path of every call."""
    found = _KINDS.get((kind, kinds))
    if found is None:
        found = _KINDS[(kind, kinds)] = issubclass(kind, kinds)
    return found


_SYNC_CLUSTER = (RedisCluster,)
_CLUSTERS = (RedisCluster, AsyncRedisCluster)
_PIPELINES = (Pipeline, ClusterPipeline)


def clustered(redis: Any) -> bool:
    """Is `redis` a Redis Cluster's client (sync or asyncio)?"""
    return _is(type(redis), _CLUSTERS)


def server_of(redis: Any, key: str | None) -> Redis:
    """The client of the one server holding `key`: `redis` itself, or, for a RedisCluster,
    the client of the master that serves the key's slot (any master for None)."""
    if _is(type(redis), _SYNC_CLUSTER):
        cluster: Any = redis  # (redis-py's slot lookups are unannotated)
        node = cluster.get_node_from_key(key) if key is not None else cluster.get_default_node()
        node_client: Redis = cluster.get_redis_connection(node)
        return node_client
    return cast("Redis", redis)


async def pool_of(redis: Any, key: str) -> Any:
    """What makes connections to the one server holding `key`, on redis.asyncio: the
    client's pool, or, for a RedisCluster, the node of the key's slot (it has a pool's
    `connection_kwargs` and `connection_class`)."""
    if isinstance(redis, AsyncRedisCluster):
        await redis.initialize()  # (a no-op once it knows the slots)
        return redis.get_node_from_key(key)
    return redis.connection_pool


def relayout(redis: Any) -> None:
    """After a MOVED or ASK on a connection of our own: have the cluster client read the
    slots' layout again before its next command."""
    if _is(type(redis), _SYNC_CLUSTER):
        redis.nodes_manager.initialize()


class Durability(NamedTuple):
    """SESSIONQ_WAIT_REPLICAS: a write counts once this many replicas have it (WAIT, sent
    after it on the same connection), waiting at most timeout_ms."""

    replicas: int
    timeout_ms: int

    @property
    def command(self) -> bytes:
        packed: bytes = hiredis.pack_command(("WAIT", self.replicas, self.timeout_ms))  # type: ignore[arg-type]  # hiredis stub: a 1-tuple
        return packed

    def check(self, got: Any) -> None:
        """NotReplicated unless WAIT's reply `got` counts enough replicas."""
        if int(got) < self.replicas:
            raise NotReplicated(self.replicas, int(got), self.timeout_ms / 1000)


# a script Redis 7 reads (its shebang line flags it read-only) and Redis 6 cannot compile
SHEBANG_PROBE = "#!lua flags=no-writes\nreturn 1"


def _refused_shebang(exc: ResponseError) -> bool:
    return "near '#'" in str(exc)


def refuses_shebang(redis: Redis) -> bool:
    """Does this server (Redis < 7) refuse a script's shebang line? Loads a two-line
    script to see (SCRIPT LOAD: allowed wherever scripts are, unlike INFO)."""
    try:
        redis.script_load(SHEBANG_PROBE)
    except ResponseError as exc:
        if _refused_shebang(exc):
            return True
        raise
    return False


async def refuses_shebang_async(redis: AsyncRedis) -> bool:
    """refuses_shebang on redis.asyncio."""
    try:
        await redis.script_load(SHEBANG_PROBE)
    except ResponseError as exc:
        if _refused_shebang(exc):
            return True
        raise
    return False


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Lane:
    """One connection of a client's pool kept out of it for the script calls of `call`, taken
    by one thread at a time (another meanwhile goes through the pool): redis-py's pool
    (its lock, a readiness poll, its observability records) cost about a third of a call
    of one run. Taken anew in a forked child; disconnected with the pool (the client's
    close: it is one of the pool's connections in use), and after any error but a reply's."""

    __slots__ = ("lock", "conn", "pool", "pid")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.pool: Any = None
        self.pid = 0

    def connection(self, pool: Any) -> Any:
        """The lane's connection to `pool`'s server (the caller holds `lock`)."""
        if self.conn is None or self.pool is not pool or self.pid != os.getpid():
            if self.conn is not None and self.pid == os.getpid():
                self.pool.release(self.conn)  # (another pool's: given back)
            self.conn = pool.get_connection()  # (connected and checked by the pool)
            self.pool, self.pid = pool, os.getpid()
        return self.conn


def _evalsha_once(
    redis: Redis, script: AnyScript, keys: Sequence[str], args: Sequence[Any],
    wait: Durability | None = None, lane: Lane | None = None,
) -> Any:  # fmt: skip
    """EVALSHA (or FCALL) on `lane`'s connection, or one of redis's pool while another thread
    has it, packed by hiredis in one call: redis-py's command layer (argument encoding,
    retry, observability) cost more than a loopback round trip; with `wait`, WAIT goes with
    it. No retry here: the caller falls back to redis-py's path."""
    packed = [hiredis.pack_command(command(script, keys, args))]
    if wait is not None:
        packed.append(wait.command)
    pool = server_of(redis, keys[0] if keys else None).connection_pool
    if lane is not None and lane.lock.acquire(blocking=False):
        try:
            return _send(lane.connection(pool), packed, wait)
        finally:
            lane.lock.release()
    conn: Any = pool.get_connection()
    try:
        reply = _send(conn, packed, wait)
    finally:
        pool.release(conn)
    return reply


def _send(conn: Any, packed: list[bytes], wait: Durability | None) -> Any:
    """Send `packed` on `conn` and read the reply (and WAIT's, checked); the connection is
    dropped after any error but a reply's (a reply half read, a lost server)."""
    try:
        conn.send_packed_command(packed)
        try:
            reply = conn.read_response()
        finally:
            replicated = conn.read_response() if wait is not None else None
    except ResponseError:
        raise
    except BaseException:
        conn.disconnect()
        raise
    if wait is not None:
        wait.check(replicated)
    return reply


def ensure_replicated(redis: Redis, wait: Durability | None, marker: str) -> None:
    """Wait until `wait.replicas` replicas have every write made so far, on any connection:
    WAIT counts the writes of its own connection, so a PUBLISH on `marker` (a channel nobody
    listens to) goes first - replication keeps order, so once it is there, all before it is."""
    if wait is None:
        return
    pipe = server_of(redis, marker).pipeline(transaction=False)  # (on a cluster: its slot's)
    pipe.publish(marker, b"")
    pipe.wait(wait.replicas, wait.timeout_ms)
    wait.check(pipe.execute()[-1])


def call(
    script: AnyScript, keys: Sequence[str], args: Sequence[Any], client: Any,
    wait: Durability | None = None, marker: str = "", lane: Lane | None = None,
) -> Any:  # fmt: skip
    """Run `script` (EVALSHA or FCALL) on `client` (a Redis, or a Pipeline to queue it on - the
    caller has loaded the scripts, and waits for replicas itself - whose reply comes with the
    pipeline's, [] here). On NOSCRIPT or a lost connection, through redis-py's command layer
    (_call_slow), which loads it and retries with backoff. With `wait`, NotReplicated unless
    enough replicas have the call's writes in time (`marker`: see ensure_replicated).
    `lane`: a connection kept for such calls on one server (not on a cluster's)."""
    if _is(type(client), _PIPELINES):
        queue(client, script, keys, args)
        return []
    redis: Redis = client
    try:
        return _evalsha_once(redis, script, keys, args, wait,
                             lane if not _is(type(redis), _SYNC_CLUSTER) else None)  # fmt: skip
    except LOST:
        pass  # redis-py's retry (with backoff) sends it again: the scripts take a resend
    except ELSEWHERE:
        relayout(redis)  # the slot moved: the cluster client finds where
    except ResponseError as exc:
        if not missing(exc):
            raise  # (a restarted or another server lacks it: _call_slow loads it)
    reply = _call_slow(script, keys, args, redis)
    ensure_replicated(redis, wait, marker)
    return reply


async def call_async(
    redis: AsyncRedis, script: AnyScript, keys: Sequence[str], args: Sequence[Any],
    wait: Durability | None = None,
) -> Any:  # fmt: skip
    """Run `script` (EVALSHA or FCALL) on redis.asyncio; on NOSCRIPT (a restarted or another server)
    load it and send it again; with `wait`, WAIT on the same connection after it."""
    for attempt in range(NOSCRIPT_RETRIES + 1):
        pipe: AsyncPipeline = redis.pipeline(transaction=False)
        queue(pipe, script, keys, args)
        if wait is not None:
            pipe.wait(wait.replicas, wait.timeout_ms)
        replies = await pipe.execute(raise_on_error=False)
        if missing(replies[0]) and attempt < NOSCRIPT_RETRIES:
            if not await load_async(redis, [script]):
                script = fallback(script)  # (the library refused: this call by EVALSHA)
            continue
        if isinstance(replies[0], Exception):
            raise replies[0]
        if wait is not None:
            wait.check(replies[1])
        return replies[0]
    raise AssertionError("unreachable")


class _Note:
    """The context of a command sent as a note (FastLane.note_script, or a script's load):
    its reply is read and dropped. A script note that meets NOSCRIPT is sent again after its
    script is loaded (SCRIPT or FUNCTION LOAD), packed only then (a source is kilobytes:
    packing it for every note cost more than the call)."""

    __slots__ = ("script", "call")

    def __init__(self, script: AnyScript | None = None, call: tuple[Any, ...] = ()) -> None:
        self.script = script
        self.call = call  # (nkeys, *keys, *args)

    @property
    def again(self) -> list[bytes]:
        """What to send when the server lacked the script: its load, then the call - a
        Function's by EVALSHA this once, as its library's load may be refused (`refused`);
        the calls after it find the library, if loaded."""
        if self.script is None:
            return []
        loads = [load_command(self.script)]
        if isinstance(self.script, Function):
            loads.append(load_command(self.script.fallback))
        plain = fallback(self.script)
        words = (verb(plain), handle(plain), *self.call)
        return [hiredis.pack_command(w) for w in (*loads, words)]


_NOTE = _Note()


class FastLane:
    """A worker's hot path to Redis: one dedicated connection, EVALSHA commands packed by hand
    from pieces cached per worker and per session, and pipelined: a command can be sent now
    and its reply read later (replies come back in order). redis-py's client layer (pool,
    retry, argument encoding) costs more than the round trip itself on a loopback; this
    skips it. Connection errors propagate: the caller sends again what was not answered.

    `fixed_after`: per call, the first that many arguments vary; `fixed` come next and are
    the same in every call (packed once); the rest vary again. `short`: a shorter head and
    fixed arguments for the calls that need no more (send's `short`): the first that many
    keys of `head`, and those arguments instead of `fixed`. `notes`: scripts sent as notes
    (note_script), loaded on each new connection ahead of them."""

    def __init__(
        self, redis: Redis, script: AnyScript, head: list[str], fixed: Sequence[Any] = (),
        fixed_after: int = 0, notes: Sequence[AnyScript] = (), wait: Durability | None = None,
        short: tuple[int, Sequence[Any]] | None = None,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.route = head[0] if head else None  # on a cluster: the slot's master serves it
        self.script = script
        # with a Durability, each script call is followed by WAIT: its reply counts only
        # once enough replicas have its writes (NotReplicated otherwise, after both replies)
        self.wait = wait
        self.waited = wait.command if wait is not None else b""
        self.note_scripts = tuple(notes)
        self.conn: Any = None
        self.verb = b"$%d\r\n%b\r\n" % (len(verb(script)), verb(script).encode())
        self.handle = bulk(handle(script).encode())
        self.head = b"".join(bulk(k.encode()) for k in head)
        self.nhead = len(head)
        self.fixed = b"".join(bulk(str(a).encode()) for a in fixed)
        self.nfixed = len(fixed)
        nshort, short_fixed = short if short is not None else (len(head), fixed)
        # (the head and fixed arguments of a short call, and their counts)
        short_head = b"".join(bulk(k.encode()) for k in head[:nshort])
        packed = b"".join(bulk(str(a).encode()) for a in short_fixed)
        self.short = (short_head, nshort, packed, len(short_fixed))
        self.fixed_after = fixed_after
        self.sent: deque[tuple[bytes, Any]] = deque()  # commands awaiting a reply, with context
        self.notes = 0  # of them, commands whose reply is read and dropped (see _Note)
        self.noscript = 0  # NOSCRIPT replies since the last good one

    def send(
        self, nkeys: int, keys: bytes, args: list[bytes], context: Any, short: bool = False
    ) -> None:
        """Send the script's call (EVALSHA or FCALL): the head keys, `keys` (packed), then
        `args` with the fixed arguments spliced in after the first `fixed_after` of them
        (`short`: the short head and fixed arguments, see the class)."""
        if short:
            head, nhead, fixed, nfixed = self.short
        else:
            head, nhead, fixed, nfixed = self.head, self.nhead, self.fixed, self.nfixed
        total = nhead + nkeys
        cut = self.fixed_after
        command = (
            b"*%d\r\n" % (3 + total + len(args) + nfixed)
            + self.verb
            + self.handle
            + bulk(b"%d" % total)
            + head
            + keys
            + b"".join(bulk(a) for a in args[:cut])
            + fixed
            + b"".join(bulk(a) for a in args[cut:])
            + self.waited
        )
        self._write(command)
        self.sent.append((command, context))

    def note_script(self, script: AnyScript, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Send a script call whose reply nobody waits for (loaded and sent again if the
        server has lost the script)."""
        call = (len(keys), *keys, *args)
        self._note(hiredis.pack_command(command(script, keys, args)), _Note(script, call))

    def _note(self, packed: bytes, context: _Note) -> None:
        self._write(packed)
        self.sent.append((packed, context))
        self.notes += 1

    def blpop(self, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """BLPOP on this connection, once every script call sent has been answered: [key,
        value], or None when `timeout` (seconds) passed first."""
        while self.sent and isinstance(self.sent[0][1], _Note):
            self.receive_note()
        assert not self.sent, "BLPOP while a script call awaits its reply"
        self._write(hiredis.pack_command(("BLPOP", *keys, timeout)))  # type: ignore[arg-type]  # hiredis stub: a 1-tuple
        try:
            reply = self.conn.read_response()
        except LOST:
            self.reset()
            raise
        return cast("list[bytes] | None", reply)

    def receive_note(self) -> None:
        """Read and drop the reply of the oldest command sent, a note."""
        context = self.sent[0][1]
        again: list[bytes] = []
        try:
            self.conn.read_response()
        except ResponseError as exc:
            if missing(exc):
                again = context.again
        except LOST:
            self.reset()
            raise
        self.sent.popleft()
        self.notes -= 1
        for packed in again:
            self._note(packed, _NOTE)

    @property
    def unanswered(self) -> int:
        """Script calls sent whose reply has not been read."""
        return len(self.sent) - self.notes

    def _write(self, command: bytes) -> None:
        if self.conn is None:
            conn: Any = server_of(self.redis, self.route).connection_pool.make_connection()
            try:
                conn.connect()  # to the server the pool names (a Sentinel's current master)
            except BaseException as exc:
                conn.disconnect()
                if isinstance(exc, LOST):
                    relayout(self.redis)  # a cluster's master lost: its replica may take over
                raise
            self.conn = conn
            for script in self.note_scripts:  # before any call that may use them
                if not isinstance(script, Function):  # (a library is loaded once a server)
                    self._note(hiredis.pack_command(load_command(script)), _NOTE)
        try:
            self.conn.send_packed_command([command], check_health=False)
        except LOST:
            self.reset()
            raise

    def receive(self) -> tuple[list[Any], Any]:
        """The reply to the oldest script call sent, with its context (notes before it are
        read and dropped)."""
        while True:
            command, context = self.sent[0]
            if isinstance(context, _Note):
                self.receive_note()
                continue
            try:
                try:
                    reply = self.conn.read_response()
                finally:
                    replicated = self.conn.read_response() if self.wait is not None else None
            except LOST:
                self.reset()
                raise
            except ELSEWHERE as exc:
                # the slot moved (a failover, a resharding): as after a lost connection, the
                # caller sends again what was not answered - to the slot's new master
                self.reset()
                relayout(self.redis)
                raise RedisConnectionError(f"the cluster moved this lane's slot: {exc}") from exc
            except ResponseError as exc:
                if not missing(exc):
                    self.sent.popleft()  # the script failed: its reply has been read
                    raise
                # this server lost its script cache (a restart, a failover): load the script
                # on this very connection and send the call again - a few times at most
                self.sent.popleft()
                self.noscript += 1
                if self.noscript > NOSCRIPT_RETRIES:
                    self.reset()
                    raise
                command = self._load(command)
                self._write(command)
                self.sent.append((command, context))
                continue
            self.noscript = 0
            self.sent.popleft()
            if self.wait is not None:
                try:
                    self.wait.check(replicated)
                except NotReplicated:
                    self.reset()  # as after a lost connection: the caller sends it again
                    raise
            return list(reply), context

    def _load(self, refused_call: bytes) -> bytes:
        """SCRIPT LOAD on the lane's own connection (not the pool's: that may be another
        server), its reply read ahead of the calls sent after the one refused; the calls
        sent again (and `refused_call`, returned) by EVALSHA if the library was refused."""
        waiting = list(self.sent)
        for _, context in waiting:  # their replies (NOSCRIPT too: sent before the load)
            for _ in range(1 if isinstance(context, _Note) or self.wait is None else 2):
                try:
                    self.conn.read_response()
                except ResponseError:
                    pass
        self.sent.clear()
        self.notes = 0
        try:
            self._send_loads(self.script, *self.note_scripts)
        except ResponseError as exc:
            if not refused(exc):
                raise
            # the library refused (an ACL without FUNCTION LOAD, a full Redis): this lane
            # goes by EVALSHA from now on (SCRIPT LOAD is allowed when full)
            was = self.verb + self.handle
            self.script = fallback(self.script)
            self.note_scripts = tuple(fallback(s) for s in self.note_scripts)
            self._send_loads(self.script, *self.note_scripts)
            self.verb = bulk(verb(self.script).encode())
            self.handle = bulk(handle(self.script).encode())
            waiting = [(c.replace(was, self.verb + self.handle, 1), x) for c, x in waiting]
            refused_call = refused_call.replace(was, self.verb + self.handle, 1)
        for command, context in waiting:
            if not isinstance(context, _Note):
                self._write(command)
                self.sent.append((command, context))
        return refused_call

    def _send_loads(self, *scripts: AnyScript) -> None:
        """Load `scripts` on the lane's connection, each reply read (an error raised)."""
        for words in dict.fromkeys(load_command(s) for s in scripts):
            self.conn.send_packed_command([hiredis.pack_command(words)], check_health=False)
            try:
                self.conn.read_response()
            except ResponseError as exc:
                _loaded(exc)

    def reset(self) -> None:
        """Drop the connection and forget what was sent (the caller knows what to resend)."""
        self.sent.clear()
        self.notes = 0
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None

    close = reset
