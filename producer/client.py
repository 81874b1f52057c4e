"""`Client`: the CANFAR-style session calls of SPEC §2 on Redis."""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import codec
from common.connection import connect
from common.errors import CodecError, ConnectionFailed, SessionNotFound, ValidationError
from common.events import decode_event
from common.keys import DEFAULT_QUEUE, Keys, command_queue_for
from common.models import (
    MAX_REPLICAS,
    RunSpec,
    SessionRecord,
    Status,
    TaskState,
    as_id_list,
    build_run,
    check_int_range,
    check_kind,
    check_name,
    decode_error,
    decode_result,
    names_for_replicas,
    session_dict,
)
from common.rqcompat import load_rq
from common.scripts import Scripts
from common.sessionconfig import SessionConfig
from common.settings import Settings
from producer.control import SessionControl

if TYPE_CHECKING:
    from producer.session import Session

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
REGEX_META = frozenset(".^$*+?{}[]()|")
DEFAULT_SESSION_NAME = "default"
VIEWS = (None, "all")


def new_session_id() -> str:
    return secrets.token_hex(6)


def redis_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a lost Redis (after the connection's own retries) into ConnectionFailed."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            client = args[0]
            raise ConnectionFailed(client.settings.url, str(exc)) from exc  # type: ignore[attr-defined]

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
        check_name(name)
        check_kind(kind)
        check_int_range(replicas, "replicas", 1, MAX_REPLICAS)
        if image is not None and not isinstance(image, str):
            raise ValidationError("image", f"expected a string, got {type(image).__name__}")
        names = [check_name(n) for n in names_for_replicas(name, replicas)]
        base = build_run(
            name=name, cmd=cmd, task=task, args=args, kwargs=kwargs, env=env, queue=queue,
            timeout=timeout, retries=retries, cores=cores, ram=ram, gpu=gpu,
            replica_count=replicas,
        )  # fmt: skip
        run_queue = command_queue_for(base.queue) if base.is_command else base.queue
        run_queue = run_queue or DEFAULT_QUEUE
        now = time.time()
        data = base.job_data()
        sessions, runs, ids = [], [], []
        for i, replica_name in enumerate(names):
            sid = new_session_id()
            record = SessionRecord(
                id=sid, name=replica_name, kind=kind, owner=self.user,
                created_at_ms=int(now * 1000), image=image, cores=base.cores, ram=base.ram,
                gpu=base.gpu, replica_id=i + 1, replica_count=replicas,
            )  # fmt: skip
            spec = replace(base, name=replica_name, replica_id=i + 1)
            fields = spec.job_fields(run_queue, now, data)
            sessions.append((sid, True, codec.encode(record.to_wire()), replica_name, kind,
                             self.user))  # fmt: skip
            runs.append((i, f"{sid}-1", replica_name, TaskState.QUEUED.value, run_queue, fields,
                         None))  # fmt: skip
            ids.append(sid)
        self.scripts.enqueue(sessions, runs, now=now)
        log.debug("created %d %s session(s) %s", replicas, kind, ids[:3])
        return ids

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
        from producer.session import Session

        wanted = SessionConfig.coerce(config) if config is not None else None
        sid, created = self._open(name or DEFAULT_SESSION_NAME, wanted, create)
        raw = self.redis.hget(self.keys.sessions(), sid)
        if raw is None:
            raise SessionNotFound(sid)
        record = SessionRecord.from_wire(codec.decode_map(raw, f"session {sid}"))
        if wanted is not None and not created and record.config != wanted.to_wire():
            record = replace(record, config=wanted.to_wire())
            self.redis.hset(self.keys.sessions(), sid, codec.encode(record.to_wire()))
        cfg = SessionConfig.from_wire(record.config)
        if created and not cfg.autoplay:
            self.pause(sid)
        return Session(self, sid, record.name, cfg, record.created_at_ms)

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
        if not self.redis.hsetnx(self.keys.names(), field, sid):
            # another process won
            return codec.text(self.redis.hget(self.keys.names(), field)), False
        record = SessionRecord(
            id=sid, name=name, kind=kind, owner=self.user,
            created_at_ms=int(time.time() * 1000), persistent=True,
            config=(config or SessionConfig()).to_wire(),
        )  # fmt: skip
        self.scripts.enqueue(
            [(sid, True, codec.encode(record.to_wire()), name, kind, self.user)], []
        )
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
            runs.append((0, f"{sid}-{n}", spec.name, state, queue, spec.job_fields(queue, now),
                         None))  # fmt: skip
        reply = self.scripts.enqueue([(sid, False, b"", "", "session", self.user)], runs, now=now)
        if reply and reply[0] == "gone":
            raise SessionNotFound(sid)
        return [run[1] for run in runs]

    # -- read ------------------------------------------------------------------------------
    def _connect_base(self) -> str | None:
        raw = self.redis.get(self.keys.dashboard())
        return codec.text(raw) if raw else None

    def _records(self, ids: Sequence[str], *, quiet: bool = False) -> list[dict[str, Any]]:
        """Public records of the ids that exist, in the given order; the rest are logged."""
        k, rq = self.keys, self.scripts.rq
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(k.dashboard())
        for sid in ids:
            pipe.hget(k.sessions(), sid)
            pipe.hgetall(k.session(sid))
            pipe.hmget(rq.job(f"{sid}-1"), "result", "error")
        replies = pipe.execute()
        base = replies[0].decode() if replies[0] else None
        out = []
        for n, sid in enumerate(ids):
            raw, state, (result, error) = replies[1 + 3 * n : 4 + 3 * n]
            if raw is None:
                if not quiet:
                    log.warning("no such session: %s", sid)
                continue
            try:
                record = SessionRecord.from_wire(codec.decode_map(raw, f"session {sid}"))
            except CodecError as exc:
                log.error("session %s: unreadable record: %s", sid, exc)
                continue
            url = f"{base.rstrip('/')}/sessions/{sid}" if base else None
            out.append(
                session_dict(record, state, result=decode_result(result),
                             error=decode_error(error), connect_url=url)
            )  # fmt: skip
        return out

    @redis_errors
    def info(self, ids: str | Sequence[str]) -> list[dict[str, Any]]:
        """The session records; unknown ids are left out and logged."""
        return self._records(as_id_list(ids))

    @redis_errors
    def fetch(
        self, kind: str | None = None, status: str | None = None, view: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's sessions (every user's with view="all"), filtered by kind and status;
        answered from the index sets, not a scan."""
        if view not in VIEWS:
            raise ValidationError("view", f"{view!r} must be None or 'all'")
        sets = []
        if view != "all":
            sets.append(self.keys.idx_owner(self.user))
        if kind is not None:
            sets.append(self.keys.idx_kind(check_kind(kind)))
        if status is not None:
            if status not in Status.__members__.values():
                raise ValidationError(
                    "status", f"{status!r} is not one of {', '.join(s.value for s in Status)}"
                )
            sets.append(self.keys.idx_status(status))
        if sets:
            raw_ids = self.redis.sinter(sets)
        else:
            raw_ids = set(self.redis.hkeys(self.keys.sessions()))
        ids = sorted(codec.text(i) for i in raw_ids)
        records = self._records(ids, quiet=True)
        records.sort(key=lambda r: (r["created_at"] or "", r["name"]))
        return records

    @redis_errors
    def stats(self) -> dict[str, Any]:
        """Sessions by status, runs by state, queue depths, workers, cores and ram."""
        k, rq = self.keys, self.scripts.rq
        pipe = self.redis.pipeline(transaction=False)
        for status in Status:
            pipe.scard(k.idx_status(status.value))
        pipe.hgetall(k.run_counts())
        pipe.smembers(rq.queues_set)
        pipe.zrange(k.workers(), 0, -1, withscores=True)
        pipe.smembers(k.idx_status(Status.RUNNING.value))
        replies = pipe.execute()
        sessions = {s.value: int(n) for s, n in zip(Status, replies[: len(Status)], strict=True)}
        counts = {key.decode(): int(v) for key, v in replies[len(Status)].items()}
        queue_keys = sorted(q.decode() for q in replies[len(Status) + 1])
        workers = replies[len(Status) + 2]
        running_ids = [i.decode() for i in replies[len(Status) + 3]]
        deadline_ms = (time.time() - self.settings.heartbeat_ttl_s) * 1000
        live = [name.decode() for name, score in workers if score >= deadline_ms]
        pipe = self.redis.pipeline(transaction=False)
        for qk in queue_keys:
            pipe.llen(qk)
        for name in live:
            pipe.hmget(rq.worker(name), "current_job", "cores", "ram")
        for sid in running_ids:
            pipe.hget(k.sessions(), sid)
        replies = pipe.execute()
        prefix = rq.queue("")
        queues = {qk[len(prefix) :]: int(n) for qk, n in zip(queue_keys, replies, strict=False)}
        worker_rows = replies[len(queue_keys) : len(queue_keys) + len(live)]
        busy = sum(1 for row in worker_rows if row[0])
        offered_cores = sum(float(row[1] or 0) for row in worker_rows)
        offered_ram = sum(float(row[2] or 0) for row in worker_rows)
        req_cores = req_ram = 0.0
        for raw in replies[len(queue_keys) + len(live) :]:
            if raw:
                wire = codec.decode_map(raw, "session record")
                req_cores += float(wire.get("cores") or 0)
                req_ram += float(wire.get("ram") or 0)
        return {
            "sessions": sessions,
            "tasks": {s.value: counts.get(s.value, 0) for s in TaskState},
            "queues": queues,
            "workers": {"count": len(live), "busy": busy},
            "cores": {"requested": req_cores, "available": offered_cores},
            "ram": {"requested": req_ram, "available": offered_ram},
        }

    @redis_errors
    def logs(self, ids: str | Sequence[str], verbose: bool = False) -> dict[str, str] | None:
        """id -> the session's captured output and task log lines, in order."""
        ids = as_id_list(ids)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hexists(self.keys.sessions(), sid)
            pipe.lrange(self.keys.logs(sid), 0, -1)
        replies = pipe.execute()
        out: dict[str, str] = {}
        for n, sid in enumerate(ids):
            exists, entries = replies[2 * n], replies[2 * n + 1]
            if not exists:
                log.warning("no such session: %s", sid)
                continue
            out[sid] = format_log_lines(entries)
        if verbose:
            for sid, text in out.items():
                click.echo(f"== {sid}")
                click.echo(text, nl=False)
            return None
        return out

    @redis_errors
    def events(
        self, ids: str | Sequence[str], verbose: bool = False
    ) -> list[dict[str, Any]] | None:
        """The sessions' kept events, oldest first (session by session, in the order given)."""
        ids = as_id_list(ids)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.zrange(self.keys.history(sid), 0, -1)
        out: list[dict[str, Any]] = []
        for sid, raws in zip(ids, pipe.execute(), strict=True):
            if not raws:
                log.warning("no events kept for session %s", sid)
            out.extend(_decode_events(raws))
        if verbose:
            for event in out:
                click.echo(format_event(event))
            return None
        return out

    @redis_errors
    def history_after(self, sid: str, after: int) -> list[dict[str, Any]]:
        """The kept events of one session with seq > after."""
        raws = self.redis.zrangebyscore(self.keys.history(sid), f"({after}", "+inf")
        return list(_decode_events(raws))

    # -- destroy ---------------------------------------------------------------------------
    @redis_errors
    def destroy(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """id -> accepted; workers cancel queued runs, stop running ones, then delete it all."""
        ids = as_id_list(ids)
        out: dict[str, bool] = {}
        raws = self.redis.hmget(self.keys.sessions(), ids) if ids else []
        for sid, raw in zip(ids, raws, strict=True):
            if raw is None:
                log.warning("destroy: no such session: %s", sid)
                out[sid] = False
                continue
            owner = codec.decode_map(raw, f"session {sid}").get("owner")
            if owner != self.user:
                log.warning("destroy: session %s belongs to %s, not %s", sid, owner, self.user)
                out[sid] = False
                continue
            out[sid] = self.scripts.request(sid, "destroy", [sid], status=Status.TERMINATING.value)
            if out[sid]:
                # the control queue may wait behind busy workers: tell those running it now
                self._stop_running(sid)
        return out

    def _stop_running(self, sid: str) -> None:
        """Send RQ's stop-job command to the workers running this session's runs."""
        from rq.command import send_command

        run_ids = [codec.text(r) for r in self.redis.smembers(self.keys.session_running(sid))]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(self.scripts.rq.job(run_id), "worker_name")
        for run_id, holder in zip(run_ids, pipe.execute(), strict=True):
            if holder:
                send_command(self.redis, holder.decode(), "stop-job", job_id=run_id)

    @redis_errors
    def destroy_with(
        self, prefix: str, *, kind: str = "headless", status: str = "Completed"
    ) -> dict[str, bool]:
        """Destroy sessions whose name starts with `prefix`, or matches it as a regex when it
        has regex metacharacters; a bad regex is a ValueError."""
        if not isinstance(prefix, str) or not prefix:
            raise ValidationError("prefix", "must be a non-empty string")
        try:
            if REGEX_META.intersection(prefix):
                log.info("destroy_with using regex pattern: %s", prefix)
                regex = re.compile(prefix)
            else:
                regex = re.compile(rf"^{re.escape(prefix)}")
        except re.error as exc:
            raise ValidationError("prefix", f"invalid regex {prefix!r}: {exc}") from exc
        sessions = self.fetch(kind=kind, status=status)
        return self.destroy([s["id"] for s in sessions if regex.search(s["name"])])

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
        from producer.listen import Listener

        listener = Listener(self.redis, self.keys, ids, types=types, after=after, timeout=timeout)
        return iter(listener)

    @redis_errors
    def connect(self, ids: str | Sequence[str]) -> None:
        """Open each session's dashboard page; with no dashboard, follow them here."""
        records = self.info(ids)
        if not records:
            return
        with_url = [r for r in records if r["connect_url"]]
        for record in with_url:
            webbrowser.open_new_tab(record["connect_url"])
        rest = [r["id"] for r in records if not r["connect_url"]]
        if rest:
            from producer.follow import follow

            follow(self, rest)


def _decode_events(raws: Sequence[Any]) -> Iterator[dict[str, Any]]:
    for raw in raws:
        try:
            yield decode_event(raw)
        except CodecError as exc:
            log.error("skipping an undecodable event: %s", exc)


def format_log_lines(entries: Sequence[Any]) -> str:
    """Log entries as text: bare lines for one run, `[task] line` when several runs wrote."""
    rows = []
    for raw in entries:
        try:
            entry = codec.decode_map(raw, "log entry")
        except CodecError as exc:
            rows.append((None, f"<undecodable log entry: {exc}>"))
            continue
        rows.append((entry.get("task"), str(entry.get("line", ""))))
    many = len({task for task, _ in rows}) > 1
    return "".join(f"[{task}] {line}\n" if many else f"{line}\n" for task, line in rows)


def format_event(event: dict[str, Any]) -> str:
    """One event as a line of text."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    where = event["session"] + (f"/{event['task']}" if event.get("task") else "")
    data = " ".join(f"{k}={v}" for k, v in (event.get("data") or {}).items())
    return f"{stamp} #{event['seq']:<4} {event['type']:<18} {where} {data}".rstrip()
