"""`Client`: the CANFAR-style session calls of SPEC §2 on Redis (redis-py); what each §2 call
sends and makes of the replies is its plan in producer.plans, shared with `AsyncClient`."""

from __future__ import annotations

import functools
import logging
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionq.common.connection import (
    PASSING,
    RETRY_BACKOFF_CAP_S,
    Backoff,
    bad_database,
    connect,
    redis_says_later,
    sync_reply,
)
from sessionq.common.errors import (
    AccessDenied,
    ConnectionFailed,
    RedisFull,
    RedisUnavailable,
    SessionqError,
    ValidationTypeError,
)
from sessionq.common.jobhash import RunSpec
from sessionq.common.keys import Keys, Layout, RoutedKeys
from sessionq.common.rqcompat import load_rq, rq_home
from sessionq.common.scripts import Scripts, transport
from sessionq.common.scripts.transport import server_of
from sessionq.common.sessionconfig import SessionConfig
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status, TaskState
from sessionq.producer import control, persistent, plans
from sessionq.producer.follow import follow
from sessionq.producer.listen import Listener, access_checked
from sessionq.producer.plans import REGEX_META as REGEX_META
from sessionq.producer.plans import VIEWS as VIEWS
from sessionq.producer.plans import Plan, ScriptCall, Step, Transaction
from sessionq.producer.plans import format_event as format_event
from sessionq.producer.plans import format_log_lines as format_log_lines
from sessionq.producer.session import Session

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def mapped_error(url: str, exc: RedisError, memory: dict[str, Any] | None) -> SessionqError | None:
    """The SessionqError a producer raises for a Redis error (after the connection's own
    retries), None for one it does not map: a lost Redis is ConnectionFailed, a command Redis
    refuses to this ACL user AccessDenied, OOM RedisFull (with `memory`, INFO's memory
    section, when it could be read), any other "try later" reply RedisUnavailable."""
    code = redis_says_later(exc)
    wrong_database = bad_database(url, exc)
    if wrong_database is not None:
        return wrong_database
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
        memory: dict[str, Any] = sync_reply(client.info("memory"))
        return memory
    except RedisError:
        return None


def redis_errors(
    method: Callable[Concatenate[Client, P], R],
) -> Callable[Concatenate[Client, P], R]:
    """Turn a lost, refusing or full Redis into the SessionqError that says so (mapped_error)."""

    @functools.wraps(method)
    def wrapper(client: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(client, *args, **kwargs)
        except RedisError as exc:
            full = redis_says_later(exc) == "OOM"
            error = mapped_error(client.settings.url, exc, _memory(client.redis) if full else None)
            if error is None:
                raise
            raise error from exc

    return wrapper


class Client:
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
        load_rq(rq_home(self.settings))
        self.redis: Redis = connect(self.settings, check=False)
        layout = Layout.of(self.settings)
        # (several partitions: a session's keys found from its id, see keys.RoutedKeys)
        self.keys = RoutedKeys(layout) if layout.partitioned else Keys(self.settings.prefix)
        self._scripts: Scripts | None = None
        # a Redis Cluster with partitions: a plan's batch spans masters (a pipeline each)
        self._per_master = layout.partitioned and self.settings.clustered

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
        retry_delay: float | None = None,
        backoff: str = "exponential",
    ) -> list[str]:
        """Launch `replicas` sessions of one run each; returns their ids (SPEC §2). With
        several partitions, a failure after some were written raises PartlyWritten."""
        written: list[str] = []
        with plans.partly_written(written):
            return self._run(
                plans.create(
                    self.scripts, name, image, cores, ram, kind, gpu, cmd, args, env, replicas,
                    task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
                    retry_delay=retry_delay, backoff=backoff,
                    written=written,
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
        if not isinstance(create, bool):
            raise ValidationTypeError("create", f"expected True or False, got {create!r}")
        wanted = SessionConfig.coerce(config) if config is not None else None
        return Session(self, self._run(persistent.open_session(self.scripts, name, wanted, create)))

    @redis_errors
    def open_session(
        self, name: str, *, kind: str = "session", config: dict[str, Any] | None = None,
        create: bool = True,
    ) -> str:  # fmt: skip
        """The id of the caller's persistent session `name`, created when missing (no
        handle: for adding runs with add_runs)."""
        wanted = SessionConfig.coerce(config) if config is not None else None
        return self._run(persistent.open_id(self.scripts, name, wanted, create, kind=kind))[0]

    @redis_errors
    def add_runs(
        self, sid: str, specs: Sequence[RunSpec], *, state: str = TaskState.QUEUED
    ) -> list[str]:
        """Add validated runs (sessionq.common.build_run) to an existing session in one atomic step;
        their ids."""
        return self._run(persistent.add_runs(self.scripts, sid, specs, state=state))

    # -- control (SPEC §3): one id or a list; id -> accepted ---------------------------------
    @redis_errors
    def pause(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """After this returns no further run of the session starts (runs already started
        carry on and see should_stop); runs dequeued meanwhile are parked, in order."""
        return self._run(control.pause(self.scripts, ids))

    @redis_errors
    def play(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Release the held runs, in order, and let the session run."""
        return self._run(control.play(self.scripts, ids))

    @redis_errors
    def step(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Release exactly one run - the oldest held, else the next one dequeued - and stay
        paused; False for a session that is not paused."""
        return self._run(control.step(self.scripts, ids))

    @redis_errors
    def stop(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Cancel the queued runs and stop the running ones; the session ends Stopped."""
        return self._run(control.stop(self.scripts, ids))

    @redis_errors
    def restart(self, ids: str | Sequence[str], *, failed_only: bool = False) -> dict[str, bool]:
        """Run the sessions' ended tasks again (only the failed ones with failed_only)."""
        return self._run(control.restart(self.scripts, ids, failed_only=failed_only))

    @redis_errors
    def tasks(self, sid: str) -> list[dict[str, Any]]:
        """The task records of one session, in the order they were added; NotFound if the
        session does not exist."""
        return self._run(control.tasks(self.scripts, sid))

    @redis_errors
    def task_records(
        self, sid: str, task_ids: Sequence[str], names: dict[str, str]
    ) -> list[dict[str, Any]]:
        """The records of runs of session `sid` by id (named from `names`, else by id)."""
        return self._run(control.task_records(self.scripts, task_ids, names))

    # -- read ------------------------------------------------------------------------------
    @redis_errors
    def resolve(self, refs: str | Sequence[str]) -> plans.Resolved:
        """Session ids or the caller's session names, as sessions (producer.plans.resolve)."""
        return self._run(plans.resolve(self.scripts, refs))

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
        return self._run(plans.history_after(self.scripts, sid, after))

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

    @redis_errors
    def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = Status.COMPLETED
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
        listener = Listener(self.redis, self.keys, ids, types=types, after=after, timeout=timeout)
        return access_checked(iter(listener), self.settings.url)

    @redis_errors
    def connect(self, ids: str | Sequence[str]) -> None:
        """Open each session's dashboard page; with no dashboard, follow them here."""
        open_or_follow(self, self.info(ids))

    # -- carrying out plans ----------------------------------------------------------------
    @redis_errors  # (a Session's calls come here without a Client method around them)
    def _run(self, plan: Plan[R]) -> R:
        """Carry out a plan (producer.plans) on redis-py, one step at a time."""
        reply: Any = None
        error: RedisError | None = None  # (the last step's: raised in the plan)
        while True:
            try:
                step = plan.send(reply) if error is None else plan.throw(error)
            except StopIteration as done:
                result: R = done.value
                return result
            error = None
            try:
                reply = self._step(step)
            except RedisError as exc:
                error = exc

    def _step(self, step: Step) -> Any:
        if isinstance(step, ScriptCall):
            return self._script_call(step)
        if isinstance(step, Transaction):
            return self._transaction(step)
        if self._per_master:
            return self._batch_per_master(step)
        pipe = server_of(self.redis, step.route).pipeline(transaction=False)
        return step.queue_on(pipe).execute()

    def _batch_per_master(self, step: plans.Batch) -> list[Any]:
        """A batch whose commands' keys live on several masters: a pipeline per master, the
        replies back in the batch's order."""
        pipes: dict[int, tuple[Any, list[int]]] = {}
        for i, command in enumerate(step.commands):
            server = server_of(self.redis, plans.route_of([command]))
            pipe, at = pipes.setdefault(id(server), (server.pipeline(transaction=False), []))
            getattr(pipe, command.method)(*command.args, **command.kwargs)
            at.append(i)
        replies: list[Any] = [None] * len(step.commands)
        for pipe, at in pipes.values():
            for i, reply in zip(at, pipe.execute(), strict=True):
                replies[i] = reply
        return replies

    def _script_call(self, step: ScriptCall) -> Any:
        """A plan's script call, sent again (with backoff, within SESSIONQ_RETRY_BUDGET_S)
        while Redis answers that it will take it soon (connection.PASSING): such a reply
        means the script did not run."""
        started = time.monotonic()
        try:
            return self.scripts.call(step.name, step.keys, step.args)
        except RedisError as exc:
            if redis_says_later(exc) not in PASSING:
                raise
            return self._script_call_again(step, exc, started + self.settings.retry_budget_s)

    def _script_call_again(self, step: ScriptCall, error: RedisError, deadline: float) -> Any:
        """_script_call's tries after Redis said "later" (`error`), until `deadline`."""
        backoff = Backoff(log, f"producer {self.settings.user}", first_s=0.1,
                          cap_s=RETRY_BACKOFF_CAP_S)  # fmt: skip
        while True:
            if time.monotonic() >= deadline:
                raise error
            time.sleep(backoff.failed(error))
            try:
                return self.scripts.call(step.name, step.keys, step.args)
            except RedisError as exc:
                if redis_says_later(exc) not in PASSING:
                    raise
                error = exc

    def _transaction(self, step: Transaction) -> list[Any]:
        replies: list[Any] = []
        if len(step.items) == 1 and isinstance(step.items[0], ScriptCall):
            # one script is atomic by itself: sent as any script call (no MULTI/EXEC, packed
            # by hiredis), its error given back as the transaction would give it
            try:
                return [self._script_call(step.items[0])]
            except ResponseError as exc:
                return [exc]
        for attempt in range(2):
            pipe = server_of(self.redis, step.route).pipeline(transaction=True)
            for item in step.items:
                if isinstance(item, ScriptCall):
                    self.scripts.call(item.name, item.keys, item.args, client=pipe)
                else:
                    getattr(pipe, item.method)(*item.args, **item.kwargs)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(transport.missing(r) for r in replies):
                self.scripts.ensure_loaded()  # first use on this server, or it restarted
                continue
            break
        if step.has_scripts and not any(isinstance(r, Exception) for r in replies):
            self.scripts.ensure_replicated()  # SESSIONQ_WAIT_REPLICAS: acknowledged once replicated
        return replies


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
        follow(client, rest)
