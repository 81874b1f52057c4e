"""`Client`: the CANFAR-style session calls of SPEC §2 on Redis (redis-py); what each §2 call
sends and makes of the replies is its plan in producer.plans, shared with `AsyncClient`."""

from __future__ import annotations

import functools
import logging
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common import codec
from sessionq.common.connection import (
    PASSING,
    RETRY_BACKOFF_CAP_S,
    Backoff,
    connect,
    redis_says_later,
)
from sessionq.common.errors import (
    AccessDenied,
    ConnectionFailed,
    RedisFull,
    RedisUnavailable,
    SessionNotFound,
    SessionqError,
    ValidationTypeError,
)
from sessionq.common.keys import DEFAULT_QUEUE, Keys, command_queue_for, run_id
from sessionq.common.models import (
    ENDED_STATUSES,
    RunSpec,
    SessionRecord,
    check_kind,
    check_name,
)
from sessionq.common.rqcompat import load_rq
from sessionq.common.scripts import Scripts
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.settings import Settings
from sessionq.producer import plans
from sessionq.producer.control import SessionControl
from sessionq.producer.plans import REGEX_META as REGEX_META
from sessionq.producer.plans import VIEWS as VIEWS
from sessionq.producer.plans import Plan, ScriptCall, new_session_id
from sessionq.producer.plans import decode_events as _decode_events
from sessionq.producer.plans import format_event as format_event
from sessionq.producer.plans import format_log_lines as format_log_lines

if TYPE_CHECKING:
    from sessionq.producer.session import Session

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
DEFAULT_SESSION_NAME = "default"


def mapped_error(url: str, exc: RedisError, memory: dict[str, Any] | None) -> SessionqError | None:
    """The SessionqError a producer raises for a Redis error (after the connection's own
    retries), None for one it does not map: a lost Redis is ConnectionFailed, a command Redis
    refuses to this ACL user AccessDenied, OOM RedisFull (with `memory`, INFO's memory
    section, when it could be read), any other "try later" reply RedisUnavailable."""
    code = redis_says_later(exc)
    if code == "OOM":
        memory = memory or {}
        return RedisFull(url, str(memory.get("used_memory_human", "more")),
                         str(memory.get("maxmemory_human", "")) or "limit")  # fmt: skip
    if code == "NOPERM":  # an ACL user outside its prefix
        return AccessDenied(url, str(exc))
    if code:
        return RedisUnavailable(url, f"{code} {exc}" if not str(exc).startswith(code) else str(exc))
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return ConnectionFailed(url, str(exc))
    return None


def _memory(client: Redis) -> dict[str, Any] | None:
    """INFO's memory section, for RedisFull's message (None when it cannot be read)."""
    try:
        return client.info("memory")
    except RedisError:
        return None


def redis_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a lost, refusing or full Redis into the SessionqError that says so (mapped_error)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            client: Client = args[0]  # type: ignore[assignment]  # the decorated methods' self
            full = redis_says_later(exc) == "OOM"
            error = mapped_error(client.settings.url, exc, _memory(client.redis) if full else None)
            if error is None:
                raise
            raise error from exc

    return wrapper


class Client(SessionControl):
    """Create, list, inspect, log, follow and destroy sessions (CANFAR's Session API), open
    persistent ones (`session()`) and control them (pause, play, step, stop, restart)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        user: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(url, prefix=prefix, user=user)
        load_rq(self.settings.prefix)
        self.redis: Redis = connect(self.settings, check=False)
        self.keys = Keys(self.settings.prefix)
        self._scripts: Scripts | None = None

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.redis, self.settings)
        return self._scripts

    @property
    def user(self) -> str:
        return self.settings.user

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- create ----------------------------------------------------------------------------
    @redis_errors
    def create(
        self,
        name: str,
        image: str | None = None,
        cores: float | None = None,
        ram: float | None = None,
        kind: str = "headless",
        gpu: float | None = None,
        cmd: str | Sequence[str] | None = None,
        args: str | Sequence[Any] | None = None,
        env: dict[str, Any] | None = None,
        replicas: int = 1,
        *,
        task: str | Callable[..., Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[str]:
        """Launch `replicas` sessions of one run each; returns their ids (SPEC §2)."""
        return self._run(
            plans.create(
                self.scripts, name, image, cores, ram, kind, gpu, cmd, args, env, replicas,
                task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
            )
        )  # fmt: skip

    # -- persistent sessions (SPEC §3) ----------------------------------------------------------
    @redis_errors
    def session(
        self,
        name: str | None = None,
        *,
        create: bool = True,
        config: SessionConfig | dict[str, Any] | None = None,
    ) -> Session:
        """The caller's persistent session `name` (no name: the caller's default session),
        created when missing unless create=False (then NotFound). A config given here is
        stored with the session (replacing the stored one); else the stored one applies."""
        from sessionq.producer.session import Session

        if not isinstance(create, bool):
            raise ValidationTypeError("create", f"expected True or False, got {create!r}")
        wanted = SessionConfig.coerce(config) if config is not None else None
        sid, created = self._open(DEFAULT_SESSION_NAME if name is None else name, wanted, create)
        raw = self.redis.hget(self.keys.sessions(), sid)
        if raw is None:
            raise SessionNotFound(sid)
        record = SessionRecord.from_wire(codec.decode_map(raw, f"session {sid}"))
        if wanted is not None and not created and record.config != wanted.to_wire():
            record = replace(record, config=wanted.to_wire())
            self.redis.hset(self.keys.sessions(), sid, codec.encode(record.to_wire()))
            self._keep_for(sid, wanted.retention_ms)
        cfg = SessionConfig.from_wire(record.config)
        # the cap the claim script reads (run.lua, prelude `room`), kept with the session
        if cfg.max_running is not None:
            self.redis.hset(self.keys.session(sid), "max_running", cfg.max_running)
        elif not created:
            self.redis.hdel(self.keys.session(sid), "max_running")
        if created and not cfg.autoplay:
            self.pause(sid)
        return Session(self, sid, record.name, cfg, record.created_at_ms)

    def _keep_for(self, sid: str, retention_ms: int | None) -> None:
        """A persistent session's new retention (SessionConfig.retention_s), kept in its hash
        for the scripts that end it; if it has ended already, due that long after its end.
        (The removal itself checks again that it has ended: remove_ended.)"""
        k = self.keys
        if retention_ms is None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hdel(k.session(sid), "retention_ms")
            pipe.zrem(k.retention(), sid)
            pipe.execute()
            return
        self.redis.hset(k.session(sid), "retention_ms", retention_ms)
        status, finished = self.redis.hmget(k.session(sid), "status", "finished_at")
        if status is not None and codec.text(status) in ENDED_STATUSES:
            due = int(finished or time.time() * 1000) + retention_ms
            self.redis.zadd(k.retention(), {sid: due})

    def open_session(
        self, name: str, *, kind: str = "session", config: dict[str, Any] | None = None,
        create: bool = True,
    ) -> str:  # fmt: skip
        """The id of the caller's persistent session `name`, created when missing."""
        wanted = SessionConfig.coerce(config) if config is not None else None
        return self._open(name, wanted, create, kind=kind)[0]

    @redis_errors
    def _open(
        self, name: str, config: SessionConfig | None, create: bool, *, kind: str = "session"
    ) -> tuple[str, bool]:
        """(id, created now) of the caller's persistent session `name`."""
        check_name(name)
        check_kind(kind)
        field = f"{self.user}/{name}"
        existing = self.redis.hget(self.keys.names(), field)
        if existing is not None:
            return codec.text(existing), False
        if not create:
            raise SessionNotFound(f"{name} (owner {self.user})")
        sid = new_session_id()
        record = SessionRecord(
            id=sid, name=name, kind=kind, owner=self.user,
            created_at_ms=int(time.time() * 1000), persistent=True,
            config=(config or SessionConfig()).to_wire(),
        )  # fmt: skip
        # the name is claimed in the step that creates the session: a process opening it at
        # the same time finds both or neither
        reply = self.scripts.enqueue(
            [(sid, True, codec.encode(record.to_wire()), name, kind, self.user)], [],
            claim=field, retention_ms=(config or SessionConfig()).retention_ms,
        )  # fmt: skip
        if reply and reply[0] == "named":
            return str(reply[1]), False  # another process won
        return sid, True

    @redis_errors
    def add_runs(self, sid: str, specs: Sequence[RunSpec], *, state: str = "queued") -> list[str]:
        """Add validated runs to an existing session in one atomic step; their ids."""
        if not specs:
            return []
        last = int(self.redis.hincrby(self.keys.session(sid), "next", len(specs)))
        now = time.time()
        runs = []
        for n, spec in enumerate(specs, start=last - len(specs) + 1):
            queue = command_queue_for(spec.queue) if spec.is_command else spec.queue
            queue = queue or DEFAULT_QUEUE
            runs.append((0, run_id(sid, n), spec.name, state, queue, spec.job_fields(queue, now),
                         None))  # fmt: skip
        reply = self.scripts.enqueue([(sid, False, b"", "", "session", self.user)], runs, now=now)
        if reply and reply[0] == "gone":
            raise SessionNotFound(sid)
        return [run[1] for run in runs]

    # -- read ------------------------------------------------------------------------------
    @redis_errors
    def resolve(self, refs: str | Sequence[str]) -> plans.Resolved:
        """Session ids or the caller's session names, as sessions (producer.plans.resolve)."""
        return self._run(plans.resolve(self.scripts, refs))

    def _connect_base(self) -> str | None:
        raw = self.redis.get(self.keys.dashboard())
        return codec.text(raw) if raw else None

    def _records(self, ids: Sequence[str], *, quiet: bool = False) -> list[dict[str, Any]]:
        """Public records of the ids that exist, in the given order; the rest are logged."""
        return self._run(plans.records(self.scripts, ids, quiet=quiet))

    @redis_errors
    def info(self, ids: str | Sequence[str]) -> list[dict[str, Any]]:
        """The session records; unknown ids are left out and logged."""
        return self._run(plans.info(self.scripts, ids))

    @redis_errors
    def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's sessions (every user's with view="all"), filtered by kind and status;
        answered from the index sets, not a scan."""
        return self._run(plans.fetch(self.scripts, kind, status, view))

    @redis_errors
    def stats(self) -> dict[str, Any]:
        """Sessions by status, runs by state, queue depths, workers, cores and ram."""
        return self._run(plans.stats(self.scripts))

    @redis_errors
    def logs(self, ids: str | Sequence[str], verbose: bool = False) -> dict[str, str] | None:
        """id -> the session's captured output and task log lines, in order."""
        return self._run(plans.logs(self.scripts, ids, verbose))

    @redis_errors
    def events(
        self, ids: str | Sequence[str], verbose: bool = False
    ) -> list[dict[str, Any]] | None:
        """The sessions' kept events, oldest first (session by session, in the order given)."""
        return self._run(plans.events(self.scripts, ids, verbose))

    @redis_errors
    def history_after(self, sid: str, after: int) -> list[dict[str, Any]]:
        """The kept events of one session with seq > after."""
        raws = self.redis.zrangebyscore(self.keys.history(sid), f"({after}", "+inf")
        return list(_decode_events(raws))

    # -- destroy ---------------------------------------------------------------------------
    @redis_errors
    def destroy(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """id -> accepted; workers cancel queued runs, stop running ones, then delete it all."""
        return self._run(plans.destroy(self.scripts, ids))

    @redis_errors
    def prune(self, older_than: float | None = None, *, view: str | None = None) -> list[str]:
        """Remove the caller's (view="all": everyone's) ended sessions made by create() now,
        with everything under them and their history (SPEC §9 Retention); with
        `older_than`, only those ended at least that many seconds ago. The ids removed."""
        candidates = self._run(plans.prune_candidates(self.scripts, older_than, view))
        removed = self.scripts.remove_ended(candidates)
        log.info("pruned %d ended session(s)", len(removed))
        return removed

    def _stop_running(self, sid: str) -> None:
        """Send RQ's stop-job command to the workers running this session's runs."""
        self._run(plans.stop_running(self.scripts, sid))

    @redis_errors
    def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = "Completed"
    ) -> dict[str, bool]:
        """Destroy sessions whose name starts with `prefix`, or matches it as a regex when it
        has regex metacharacters; a bad regex is a ValueError."""
        return self._run(plans.destroy_with(self.scripts, prefix, kind=kind, status=status))

    # -- follow ----------------------------------------------------------------------------
    def listen(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events as they happen, with no gap and no duplicate per session (SPEC §5)."""
        from sessionq.producer.listen import Listener, access_checked

        listener = Listener(self.redis, self.keys, ids, types=types, after=after, timeout=timeout)
        return access_checked(iter(listener), self.settings.url)

    @redis_errors
    def connect(self, ids: str | Sequence[str]) -> None:
        """Open each session's dashboard page; with no dashboard, follow them here."""
        open_or_follow(self, self.info(ids))

    # -- carrying out plans ----------------------------------------------------------------
    def _run(self, plan: Plan[R]) -> R:
        """Carry out a plan (producer.plans) on redis-py, one step at a time."""
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                result: R = done.value
                return result
            if isinstance(step, ScriptCall):
                reply = self._script_call(step)
                continue
            reply = step.queue_on(self.redis.pipeline(transaction=False)).execute()

    def _script_call(self, step: ScriptCall) -> Any:
        """A plan's script call, sent again (with backoff, within the connection's retry
        budget) while Redis answers that it will take it soon (connection.PASSING): such a
        reply means the script did not run."""
        backoff = Backoff(log, f"producer {self.settings.user}", first_s=0.1,
                          cap_s=RETRY_BACKOFF_CAP_S)  # fmt: skip
        deadline = time.monotonic() + self.settings.retry_budget_s
        while True:
            try:
                return self.scripts.call(step.name, step.keys, step.args)
            except RedisError as exc:
                if redis_says_later(exc) not in PASSING or time.monotonic() >= deadline:
                    raise
                time.sleep(backoff.failed(exc))


def open_or_follow(client: Client, records: Sequence[dict[str, Any]]) -> None:
    """connect()'s blocking part: open the dashboard page of each record that has one in the
    browser, and follow the others in the terminal until they end (or Ctrl-C)."""
    if not records:
        return
    with_url = [r for r in records if r["connect_url"]]
    for record in with_url:
        webbrowser.open_new_tab(record["connect_url"])
    rest = [r["id"] for r in records if not r["connect_url"]]
    if rest:
        from sessionq.producer.follow import follow

        follow(client, rest)
