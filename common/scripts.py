"""The Lua scripts and the key lists they take: the one module that writes RQ's structures.

Every state change of a session or run is one script call - one round trip, atomic - that
keeps RQ's job hash, queues and registries as RQ's own readers (`rq info`, `Job.fetch`) expect,
and ours (counters, indexes, events) beside them. Lua gets every key through KEYS, but for the
runs a worker's step claims (their ids are known only inside the script): it makes their keys
from templates cut from keys.py's names (`key_templates`).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any, NamedTuple, cast

import hiredis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.keys import CONTROL_QUEUE, DEFAULT_QUEUE, Keys, session_of
from sessionq.common.models import JobFields, Status, rq_time
from sessionq.common.rqcompat import RQKeys, rq_keys
from sessionq.common.settings import Settings

OP_PREFIX = "sessionq.op:"  # func name prefix of control operations in RQ job data
_SCRIPT_NAMES = (
    "run",
    "enqueue",
    "destroy",
    "recover",
    "emit",
    "log",
    "request",
    "control",
    "state",
)


@cache
def lua_source(name: str) -> str:
    """A script's source: the shared prelude, then the script itself."""
    folder = resources.files("sessionq.common") / "lua"
    body = (folder / f"{name}.lua").read_text()
    return (folder / "prelude.lua").read_text() + "\n" + body


RUN_BLOCK_KEYS = 11
Finish = tuple[str, str, str, bytes, int]  # run id, queue, outcome, payload, duration ms
# session index, run id, name, state, queue, job fields, options (enqueue.lua)
Run = tuple[int, str, str, str, str, JobFields, dict[str, Any] | None]


class StepReply(NamedTuple):
    finished: list[tuple[str, str, str, int]]  # run id, queue, result, flags (run.lua)
    # started and claimed runs: run id, queue, result ('run', 'op', ...), data, sq, timeout,
    # attempt
    started: list[tuple[str, str, str, Any, Any, Any, int]]


class WorkerHead(NamedTuple):
    """What every step of one worker sends alike (run.lua's head): its keys, its queues in
    priority order (their keys are in `keys`), and the packed constant arguments."""

    keys: list[str]
    queues: tuple[str, ...]
    args: list[Any]  # nqueues, control queue index, key templates


def _started(run_id: str, queue: str, r: Sequence[Any]) -> tuple[str, str, str, Any, Any, Any, int]:
    """A started (or claimed) run's entry of run.lua's reply."""
    status, data, sq, timeout, attempt = r
    status = status.decode()
    if status != "run" and data:
        data = data.decode()
    return (run_id, queue, status, data, sq, timeout, int(attempt))


def handed_run(entry: bytes) -> tuple[str, str, str, Any, Any, Any, int]:
    """A run an enqueue started for this worker (an inbox entry, see enqueue.lua `hand`), as a
    started entry of run.lua's reply; result 'bad' (and the error as data) for an entry that
    is not one - its run stays on the worker's runs list, to be started again from there."""
    try:
        run_id, queue, data, sq, timeout, attempt = codec.decode_raw(entry)
        return (run_id.decode(), queue.decode(), "run", data, sq or None, timeout or None,
                int(attempt))  # fmt: skip
    except (CodecError, ValueError, TypeError, AttributeError) as exc:
        return ("", "", "bad", f"worker inbox entry {bytes(entry[:80])!r}: {exc}", None, None, 0)


def _evalsha_once(redis: Redis, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA on a connection of redis's pool, packed by hiredis in one call: redis-py's
    command layer (argument encoding, retry, observability) cost more than a loopback round
    trip. No retry here: the caller falls back to redis-py's path on a connection error."""
    command = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    pool = redis.connection_pool
    conn: Any = pool.get_connection()
    try:
        conn.send_packed_command([command])
        reply = conn.read_response()
    except ResponseError:
        pool.release(conn)
        raise
    except BaseException:
        conn.disconnect()
        pool.release(conn)
        raise
    pool.release(conn)
    return reply


def _templates(*names: Any) -> list[str]:
    """Key names cut in two where their one argument goes (for Lua to make keys of ids it
    finds itself), flat: before, after, before, after, ..."""
    mark = "\0"
    parts = [name(mark).split(mark) for name in names]
    assert all(len(p) == 2 for p in parts), "a key template holds the id once"
    return [piece for p in parts for piece in p]


def now_ms() -> int:
    return int(time.time() * 1000)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_NOTE = object()  # the context of a FastLane.note
FIXED_AFTER = 4  # run.lua's per-call now_ms, now_iso, cap, worker come before the fixed args


class FastLane:
    """A worker's hot path to Redis: one dedicated connection, EVALSHA commands packed by hand
    from pieces cached per worker and per session, and pipelined: a command can be sent now
    and its reply read later (replies come back in order). redis-py's client layer (pool,
    retry, argument encoding) costs more than the round trip itself on a loopback; this
    skips it. Connection errors propagate: the caller sends again what was not answered."""

    def __init__(self, redis: Redis, script: Any, head: list[str], fixed: Sequence[Any] = ()
    ) -> None:  # fmt: skip
        self.redis = redis
        self.script = script
        self.conn: Any = None
        self.head = b"".join(bulk(k.encode()) for k in head)
        self.nhead = len(head)
        # arguments every call sends alike, after its first `FIXED_AFTER` ones
        self.fixed = b"".join(bulk(str(a).encode()) for a in fixed)
        self.nfixed = len(fixed)
        self.sent: deque[tuple[bytes, Any]] = deque()  # commands awaiting a reply, with context
        self.notes = 0  # of them, plain commands whose reply is read and dropped (see note)

    def send(self, nkeys: int, keys: bytes, args: list[bytes], context: Any) -> None:
        """Send EVALSHA: the head keys, `keys` (packed), then `args` with the fixed arguments
        spliced in after the first FIXED_AFTER of them."""
        total = self.nhead + nkeys
        command = (
            b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + total + len(args) + self.nfixed)
            + bulk(self.script.sha.encode())
            + bulk(b"%d" % total)
            + self.head
            + keys
            + b"".join(bulk(a) for a in args[:FIXED_AFTER])
            + self.fixed
            + b"".join(bulk(a) for a in args[FIXED_AFTER:])
        )
        self._write(command)
        self.sent.append((command, context))

    def note(self, *command: str) -> None:
        """Send a plain command whose reply nobody waits for: receive drops it on the way."""
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]
        self._write(packed)
        self.sent.append((packed, _NOTE))
        self.notes += 1

    def blpop(self, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """BLPOP on this connection, once every script call sent has been answered: [key,
        value], or None when `timeout` (seconds) passed first."""
        while self.sent and self.sent[0][1] is _NOTE:
            self.receive_note()
        assert not self.sent, "BLPOP while a script call awaits its reply"
        self._write(hiredis.pack_command(("BLPOP", *keys, timeout)))  # type: ignore[arg-type]
        try:
            reply = self.conn.read_response()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self.reset()
            raise
        return cast("list[bytes] | None", reply)

    def receive_note(self) -> None:
        """Read and drop the reply of the oldest command sent, a note."""
        try:
            self.conn.read_response()
        except ResponseError:
            pass
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self.reset()
            raise
        self.sent.popleft()
        self.notes -= 1

    @property
    def unanswered(self) -> int:
        """Script calls sent whose reply has not been read."""
        return len(self.sent) - self.notes

    def _write(self, command: bytes) -> None:
        if self.conn is None:
            self.conn = self.redis.connection_pool.make_connection()
            self.conn.connect()  # as the pool would: a Sentinel pool's asks for the master
        try:
            self.conn.send_packed_command([command], check_health=False)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self.reset()
            raise

    def receive(self) -> tuple[list[Any], Any]:
        """The reply to the oldest script call sent, with its context (notes before it are
        read and dropped)."""
        while True:
            command, context = self.sent[0]
            if context is _NOTE:
                self.receive_note()
                continue
            try:
                reply = self.conn.read_response()
            except NoScriptError:
                # Redis lost its script cache (a restart): load the script, send it again
                self.sent.popleft()
                self.redis.script_load(self.script.script)
                self._write(command)
                self.sent.append((command, context))
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self.reset()
                raise
            except ResponseError:
                self.sent.popleft()  # the script failed: its reply has been read
                raise
            self.sent.popleft()
            return list(reply), context

    def reset(self) -> None:
        """Drop the connection and forget what was sent (the caller knows what to resend)."""
        self.sent.clear()
        self.notes = 0
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None

    close = reset


class Scripts:
    """The scripts registered on one connection, with the key lists they need."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.rq: RQKeys = rq_keys(settings.prefix)
        self._script = {name: redis.register_script(lua_source(name)) for name in _SCRIPT_NAMES}
        self._idx = [self.keys.idx_status(s.value) for s in Status] + [self.keys.run_counts()]
        self._blocks: dict[tuple[str, str], list[str]] = {}
        self._packed: dict[tuple[str, str], bytes] = {}
        self._lane: FastLane | None = None
        self._cap = b"%d" % settings.history_cap
        # enqueue.lua's last arguments: how to name an idle worker's keys, how late its
        # heartbeat may be
        self._handing = [*self.worker_templates(), int(settings.heartbeat_late_s * 1000)]

    # -- key lists -------------------------------------------------------------------------
    def run_block(self, run_id: str, queue: str) -> list[str]:
        """The 11 keys of one run (see prelude.lua `run_block`), cached per session and queue."""
        sid = session_of(run_id)
        base = self._blocks.get((sid, queue))
        if base is None:
            k, rq = self.keys, self.rq
            base = [
                "",
                k.session(sid),
                k.history(sid),
                k.events_channel(sid),
                k.session_running(sid),
                k.session_held(sid),
                rq.started(queue),
                rq.finished(queue),
                rq.failed(queue),
                rq.queue(queue),
                k.wake(queue),
            ]
            if len(self._blocks) > 4096:
                self._blocks.clear()
            self._blocks[(sid, queue)] = base
        block = base.copy()
        block[0] = self.rq.job(run_id)
        return block

    def _head(self, now: float) -> list[Any]:
        return [int(now * 1000), rq_time(now), self.settings.history_cap]

    # -- scripts ---------------------------------------------------------------------------
    def call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, client: Any = None
    ) -> Any:
        """Run script `name` by EVALSHA, packed by hiredis on a connection of the client's pool;
        on NOSCRIPT or a lost connection, through redis-py's Script (which loads it, and
        retries with backoff). Given a pipeline as `client`, the call is only queued on it, as
        a plain EVALSHA that adds no SCRIPT EXISTS round trip (the caller has loaded the
        scripts: ensure_loaded); the reply then comes with the pipeline's."""
        script = self._script[name]
        if isinstance(client, Pipeline):
            client.evalsha(script.sha, len(keys), *keys, *args)
            return []
        redis = client or self.redis
        try:
            return _evalsha_once(redis, script.sha, keys, args)
        except NoScriptError:
            pass  # a restarted or another server: redis-py's Script loads it
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass  # redis-py's retry (with backoff) sends it again: the scripts take a resend
        return script(keys=keys, args=args, client=redis)

    async def call_async(
        self, redis: AsyncRedis, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run script `name` by EVALSHA on redis.asyncio; on NOSCRIPT (a restarted or another
        server) load it and send it again."""
        script = self._script[name]
        try:
            return await redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(script.script)
            return await redis.evalsha(script.sha, len(keys), *keys, *args)

    def enqueue(
        self,
        sessions: Sequence[tuple[str, bool, bytes, str, str, str]],
        runs: Sequence[Run],
        *,
        worker: str = "",
        now: float | None = None,
        client: Any = None,
        claim: str = "",
    ) -> list[Any]:
        """Create sessions (sid, is_new, record, name, kind, owner) and add runs to them
        (session index, run id, name, state, queue, job fields, options). One atomic call;
        see enqueue.lua for the options and the reply; `claim` is the persistent name
        (owner/name) the one new session takes. Given a pipeline as `client`, the call
        is queued on it (the caller has loaded the scripts: ensure_loaded)."""
        keys, args = self.enqueue_call(sessions, runs, worker=worker, now=now, claim=claim)
        reply = self.call("enqueue", keys, args, client=client)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    def enqueue_call(
        self,
        sessions: Sequence[tuple[str, bool, bytes, str, str, str]],
        runs: Sequence[Run],
        *,
        worker: str = "",
        now: float | None = None,
        claim: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The keys and args of `enqueue`, sent by no one: for a caller with its own client."""
        now = time.time() if now is None else now
        k, rq = self.keys, self.rq
        keys: list[str] = [k.events_all_channel(), k.sessions(), rq.queues_set, *self._idx]
        keys += [k.schedule(), k.waiting(), k.names(), k.idle_workers(), k.workers()]
        plan_sessions = []
        for sid, is_new, record, name, kind, owner in sessions:
            keys += [
                k.session(sid),
                k.history(sid),
                k.events_channel(sid),
                k.session_tasks(sid),
                k.session_held(sid),
                k.idx_kind(kind),
                k.idx_owner(owner),
                k.session_names(sid),
                k.session_task_keys(sid),
                k.session_running(sid),
            ]
            plan_sessions.append([sid, is_new, record, name])
        queues: dict[str, int] = {}
        for run in runs:
            queues.setdefault(run[4], len(queues) + 1)
        for queue in queues:
            keys += [rq.queue(queue), k.wake(queue), rq.failed(queue), rq.started(queue),
                     k.idle(queue)]  # fmt: skip
        keys += [rq.job(run[1]) for run in runs]
        extra: dict[str, int] = {}

        def key_index(run_id: str) -> int:
            if run_id not in extra:
                keys.append(rq.job(run_id))
                extra[run_id] = len(keys)  # Lua counts from 1
            return extra[run_id]

        plan_runs = []
        plan_shared: list[list[Any]] = []
        shared_index: dict[int, int] = {}  # by id(): the runs hold each shared mapping alive
        for s_index, run_id, name, state, queue, fields, opts in runs:
            if opts:
                opts = dict(opts)
                if opts.get("deps"):
                    opts["dep_keys"] = [key_index(p) for p in opts["deps"]]
                if opts.get("old_id"):
                    opts["old"] = key_index(opts["old_id"])
            shared = shared_index.get(id(fields.shared))
            if shared is None:
                plan_shared.append([x for pair in fields.shared.items() for x in pair])
                shared = shared_index[id(fields.shared)] = len(plan_shared)  # Lua counts from 1
            flat = [s_index + 1, run_id, name, state, queues[queue], opts or None, shared,
                    fields.data, fields.sq]  # fmt: skip
            if fields.extra:
                flat.append([x for pair in fields.extra.items() for x in pair])
            plan_runs.append(flat)
        plan = codec.encode_for_lua([plan_sessions, list(queues), plan_runs, claim, plan_shared])
        return keys, [*self._head(now), worker, plan, *self._handing]

    def with_queues(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """[(run id, the queue it came from)] - what the scripts need to name its keys."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(self.rq.job(run_id), "origin")
        origins = pipe.execute()
        return [
            (run_id, codec.text(origin) if origin else DEFAULT_QUEUE)
            for run_id, origin in zip(run_ids, origins, strict=True)
        ]

    def ensure_loaded(self) -> None:
        """Load every script now (one round trip), for pipelines that call EVALSHA."""
        pipe = self.redis.pipeline(transaction=False)
        for script in self._script.values():
            pipe.script_load(script.script)
        pipe.execute()

    def control(
        self, op: str, sid: str, plan: dict[str, Any], runs: Sequence[tuple[str, str]] = (),
        extra: Sequence[str] = (), *, worker: str = "", client: Any = None,
    ) -> list[Any]:  # fmt: skip
        """One control.lua step on session `sid` over runs [(run id, queue)]; `extra` keys
        follow the run blocks (plan entries name them by their KEYS index)."""
        k = self.keys
        keys = [k.events_all_channel(), *self._idx, k.schedule(), k.waiting()]
        keys += [k.session(sid), k.history(sid), k.events_channel(sid), k.session_running(sid)]
        keys += [k.session_held(sid), k.session_tasks(sid), k.session_names(sid)]
        keys.append(k.session_task_keys(sid))
        for run_id, queue in runs:
            keys += self.run_block(run_id, queue)
        keys += extra
        plan = {**plan, "runs": [r[0] for r in runs]}
        args = [*self._head(time.time()), worker, op, sid, codec.encode_for_lua(plan)]
        reply = self.call("control", keys, args, client=client)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()

    def key_templates(self) -> list[str]:
        """keys.py's names of a run's job key and of its session's keys, each cut in two where
        the id goes: run.lua makes the keys of the runs it claims from them."""
        k = self.keys
        return _templates(self.rq.job, k.session, k.history, k.events_channel,
                          k.session_running, k.session_held)  # fmt: skip

    def worker_templates(self) -> list[str]:
        """keys.py's names of a worker's runs list, inbox, RQ worker hash and handed run, cut
        where the worker name goes: enqueue.lua makes the keys of an idle worker it hands a
        run to."""
        k = self.keys
        return _templates(k.worker_runs, k.worker_inbox, self.rq.worker, k.worker_handed)

    def worker_head(self, worker: str, queues: Sequence[str]) -> WorkerHead:
        """The head of `worker`'s steps, serving `queues` in priority order."""
        k = self.keys
        keys = [k.events_all_channel(), k.worker_runs(worker), self.rq.worker(worker),
                *self._idx, k.worker_inbox(worker), k.idle_workers(),
                k.worker_handed(worker)]  # fmt: skip
        for q in queues:
            keys += [self.rq.queue(q), k.wake(q), self.rq.started(q), self.rq.finished(q),
                     self.rq.failed(q), k.idle(q)]  # fmt: skip
        control = queues.index(CONTROL_QUEUE) + 1 if CONTROL_QUEUE in queues else 0
        args = [len(queues), control, *self.key_templates()]
        return WorkerHead(keys, tuple(queues), args)

    def step_send(
        self,
        head: WorkerHead,
        worker: str,
        finishes: Sequence[Finish],
        starts: Sequence[tuple[str, str]],
        current: str,
        claim: int = 0,
        waits: bool = False,
    ) -> None:
        """Send run.lua: finish runs (run id, queue, outcome, payload, duration ms), start
        runs (run id, queue), take the runs in the worker's inbox and claim and start up to
        `claim` more from the head's queues - or, if `waits` and there are none, list the
        worker as waiting idle - and say which run the worker goes on to ('': the first
        this step starts). Read the reply with step_receive, now or after more sends."""
        lane = self._lane
        if lane is None:
            lane = self._lane = FastLane(self.redis, self._script["run"], head.keys, head.args)
        now = time.time()
        args = [b"%d" % int(now * 1000), rq_time(now).encode(), self._cap, worker.encode()]
        args += [b"%d" % len(finishes), b"%d" % len(starts), b"%d" % claim, b"%d" % waits]
        blocks = []
        for run_id, queue, outcome, payload, duration_ms in finishes:
            blocks.append(self.packed_block(run_id, queue))
            args += [run_id.encode(), session_of(run_id).encode(), outcome.encode(), payload,
                     b"%d" % duration_ms]  # fmt: skip
        for run_id, queue in starts:
            blocks.append(self.packed_block(run_id, queue))
            args += [run_id.encode(), session_of(run_id).encode()]
        args.append(current.encode())
        context = (finishes, starts, head.queues)
        lane.send(len(blocks) * RUN_BLOCK_KEYS, b"".join(blocks), args, context)

    def step_receive(self) -> StepReply:
        """The oldest step's outcome: per finish (run, queue, result, flags: 1 session
        terminating, 2 runs wait on it), per started or claimed run (run id, queue, result,
        data, sq, timeout, attempt)."""
        assert self._lane is not None
        reply, (finishes, starts, queues) = self._lane.receive()
        fin = [
            (f[0], f[1], reply[2 * i].decode(), int(reply[2 * i + 1]))
            for i, f in enumerate(finishes)
        ]
        i = 2 * len(finishes)
        started = []
        for run_id, queue in starts:
            started.append(_started(run_id, queue, reply[i : i + 5]))
            i += 5
        while i < len(reply):  # claimed: queue index, run id, then as a start; or handed
            if reply[i] == 0:  # 0, an inbox entry
                started.append(handed_run(reply[i + 1]))
                i += 2
                continue
            queue, run_id = queues[int(reply[i]) - 1], reply[i + 1].decode()
            started.append(_started(run_id, queue, reply[i + 2 : i + 7]))
            i += 7
        return StepReply(fin, started)

    def step_now(
        self, head: WorkerHead, worker: str, finishes: Sequence[Finish], current: str = ""
    ) -> None:
        """Finish runs through the ordinary client: for other threads than the worker loop."""
        now = time.time()
        keys = list(head.keys)
        args: list[Any] = [*self._head(now), worker, *head.args, len(finishes), 0, 0, 0]
        for run_id, queue, outcome, payload, duration_ms in finishes:
            keys += self.run_block(run_id, queue)
            args += [run_id, session_of(run_id), outcome, payload, duration_ms]
        args.append(current)
        self._script["run"](keys=keys, args=args)

    @property
    def steps_unanswered(self) -> int:
        return self._lane.unanswered if self._lane is not None else 0

    def took_handed(self, worker: str) -> None:
        """Say, without waiting, that `worker` took the run handed to it and begins it: were
        it lost now, that run used up an attempt (recover.lua)."""
        assert self._lane is not None, "a worker steps before it waits"
        self._lane.note("DEL", self.keys.worker_handed(worker))

    def wait(self, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """A worker's idle wait: BLPOP on its step connection (see FastLane.blpop)."""
        assert self._lane is not None, "a worker steps before it waits"
        return self._lane.blpop(keys, timeout)

    def packed_block(self, run_id: str, queue: str) -> bytes:
        """A run block as RESP bulk strings; all but the job key cached per session/queue."""
        sid = session_of(run_id)
        rest = self._packed.get((sid, queue))
        if rest is None:
            rest = b"".join(bulk(k.encode()) for k in self.run_block(run_id, queue)[1:])
            if len(self._packed) > 4096:
                self._packed.clear()
            self._packed[(sid, queue)] = rest
        return bulk(self.rq.job(run_id).encode()) + rest

    def recover(
        self, worker: str, runs: Sequence[tuple[str, str]], reason: str, *, unregister: bool
    ) -> list[str]:
        """Give back a worker's runs [(run id, queue)]; returns sessions to finish destroying."""
        now = time.time()
        keys = [self.keys.events_all_channel(), self.keys.workers(), self.rq.workers_set]
        keys += [*self._idx, self.keys.worker_runs(worker), self.rq.worker(worker)]
        keys += [self.keys.worker_inbox(worker), self.keys.idle_workers()]
        keys.append(self.keys.worker_handed(worker))
        args: list[Any] = [*self._head(now), worker, codec.encode(reason), int(unregister)]
        for run_id, queue in runs:
            keys += self.run_block(run_id, queue)
            args += [run_id, session_of(run_id)]
        return [s.decode() for s in self._script["recover"](keys=keys, args=args)]

    def destroy(
        self,
        sid: str,
        runs: Sequence[tuple[str, str]],
        *,
        kind: str,
        owner: str,
        names_field: str = "",
        worker: str = "",
    ) -> list[Any]:
        """Destroy one session whose runs are [(run id, queue)]; see destroy.lua."""
        now = time.time()
        k, rq = self.keys, self.rq
        keys = [k.events_all_channel(), k.sessions(), k.names(), *self._idx]
        keys += [
            k.session(sid),
            k.history(sid),
            k.events_channel(sid),
            k.session_tasks(sid),
            k.session_names(sid),
            k.session_task_keys(sid),
            k.session_held(sid),
            k.session_running(sid),
            k.session_objects(sid),
            k.session_state(sid),
            k.logs(sid),
            k.idx_kind(kind),
            k.idx_owner(owner),
            k.schedule(),
            k.waiting(),
        ]
        args: list[Any] = [*self._head(now), worker, sid, names_field]
        args.append(self.settings.destroyed_history_ttl_s)
        for run_id, queue in runs:
            keys += [rq.job(run_id), rq.started(queue), rq.finished(queue), rq.failed(queue)]
            args.append(run_id)
        reply = self._script["destroy"](keys=keys, args=args)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    def request(
        self,
        sid: str,
        op: str,
        args: Sequence[Any],
        *,
        status: str = "",
        event: str = "",
        worker: str = "",
    ) -> bool:
        """Put operation `op` on `sid` on the control queue (setting status / emitting event
        with it); False when the session does not exist."""
        keys, argv = self.request_call(sid, op, args, status=status, event=event, worker=worker)
        return bool(self.call("request", keys, argv))

    def request_call(
        self,
        sid: str,
        op: str,
        args: Sequence[Any],
        *,
        status: str = "",
        event: str = "",
        worker: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The keys and args of `request`, sent by no one: for a caller with its own client."""
        now = time.time()
        op_id = f"op-{uuid.uuid4().hex[:16]}"
        k, rq = self.keys, self.rq
        keys = [k.events_all_channel(), *self._idx, rq.queue(CONTROL_QUEUE)]
        keys += [k.wake(CONTROL_QUEUE), rq.job(op_id)]
        keys += [k.session(sid), k.history(sid), k.events_channel(sid), rq.queues_set]
        fields = {
            "data": codec.encode([f"{OP_PREFIX}{op}", None, list(args), {}]),
            "origin": CONTROL_QUEUE,
            "status": "queued",
            "state": "queued",
            "enqueued_at": rq_time(now),
        }
        argv: list[Any] = [*self._head(now), worker, sid, status, event, op_id, op]
        for key, value in fields.items():
            argv += [key, value]
        return keys, argv

    def emit(
        self,
        sid: str,
        events: Iterable[tuple[str, str | None, dict[str, Any] | None]],
        *,
        worker: str = "",
        client: Any = None,
    ) -> int:
        """Emit (type, task id, data) events of one session; returns the last seq (0: gone)."""
        k = self.keys
        keys = [k.events_all_channel(), k.session(sid), k.history(sid), k.events_channel(sid)]
        args: list[Any] = [now_ms(), self.settings.history_cap, worker, sid]
        for etype, task, data in events:
            args += [etype, task or "", codec.encode(data or {})]
        return int(self._script["emit"](keys=keys, args=args, client=client or self.redis))

    def log(
        self, sid: str, task_id: str, lines: Sequence[tuple[str, str]], *, worker: str = ""
    ) -> None:
        """Append (stream, line) pairs of one run to the session's logs, as task.log events."""
        k = self.keys
        keys = [k.events_all_channel(), k.session(sid), k.history(sid), k.events_channel(sid)]
        keys.append(k.logs(sid))
        args: list[Any] = [now_ms(), self.settings.history_cap, worker, sid, task_id]
        args.append(self.settings.logs_cap)
        for stream, line in lines:
            args += [stream, line]
        self._script["log"](keys=keys, args=args)
