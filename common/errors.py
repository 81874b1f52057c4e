"""Every error sessionq raises, under one root.

SessionqError
├── ConfigError            bad settings, or a second prefix in one process
├── ConnectionFailed       Redis cannot be reached (names the URL)
├── AccessDenied           Redis refused a command: the ACL user may not touch these keys
├── NotReplicated          a write reached fewer replicas than SESSIONQ_WAIT_REPLICAS in time
├── RedisUnavailable       Redis answers "not now" (BUSY, LOADING, READONLY, MASTERDOWN, MISCONF)
│   └── RedisFull              Redis is over its maxmemory (OOM): nothing more can be written
├── ValidationError        invalid argument (also a ValueError)
│   └── ValidationTypeError    wrong type (also a TypeError)
├── CodecError             bytes that are not our msgpack (also a ValueError)
├── NotFound               unknown name where one is required (also a KeyError)
│   ├── SessionNotFound
│   ├── TaskNotFound
│   └── ObjectNotFound
├── RunRejected            a worker refuses a run (unregistered function, bad job)
└── TaskFailed             a run failed; carries the remote traceback or exit status
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def redact_url(url: str) -> str:
    """The URL with its passwords (if any) replaced by ***, fit for messages and logs: the
    one before the @ and any query parameter named `password` or `..._password` (a
    Sentinel URL's `sentinel_password`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    if query:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            name + sep + ("***" if sep and _secret(name) else value) for name, sep, value in pairs
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    query = f"?{query}" if query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def _secret(name: str) -> bool:
    name = unquote(name).lower()
    return name == "password" or name.endswith("_password")


class SessionqError(Exception):
    """Root of every error raised by sessionq."""


class ConfigError(SessionqError):
    """A setting is invalid, or the process was asked to serve a second prefix."""


class ConnectionFailed(SessionqError):
    """Redis is unreachable at the configured URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach Redis at {redact_url(url)}: {reason}")
        self.url = url


class AccessDenied(SessionqError):
    """Redis refused a command (NOPERM): the ACL user may not touch this prefix's keys or
    channels, or may not run that command."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Redis at {redact_url(url)} refused access: {reason}")
        self.url = url


class NotReplicated(SessionqError):
    """Redis has the write, but fewer replicas than asked acknowledged it in time: it may not
    survive a failover (SESSIONQ_WAIT_REPLICAS / SESSIONQ_WAIT_TIMEOUT_S)."""

    def __init__(self, wanted: int, got: int, timeout_s: float) -> None:
        super().__init__(
            f"Redis has the write, but only {got} of {wanted} replica(s) acknowledged it within "
            f"{timeout_s:g}s: it may not survive a failover (SESSIONQ_WAIT_REPLICAS={wanted})"
        )
        self.wanted, self.got = wanted, got


class PartlyWritten(SessionqError):
    """A create() over several partitions (SPEC §9: atomic per slot) wrote the sessions of
    some partitions, then failed: `ids` are written, `error` stopped the rest."""

    def __init__(self, ids: list[str], error: BaseException) -> None:
        super().__init__(
            f"create() failed after writing {len(ids)} session(s) "
            f"({', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''}): {error}"
        )
        self.ids, self.error = ids, error


class RedisUnavailable(SessionqError):
    """Redis answered but refused the command for now (a busy script, a dataset loading, a
    replica or a master without replicas, a failed save), past the client's retries."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Redis at {redact_url(url)} is not taking commands now: {reason}")
        self.url = url


class RedisFull(RedisUnavailable):
    """Redis is over its maxmemory (an OOM reply): it takes no more writes until memory is
    freed or the limit raised."""

    def __init__(self, url: str, used: str, maxmemory: str) -> None:
        SessionqError.__init__(
            self,
            f"Redis is full: Redis at {redact_url(url)} uses {used} of its maxmemory "
            f"{maxmemory} and refuses writes (free memory, or raise maxmemory)",
        )
        self.url = url


class ValidationError(SessionqError, ValueError):
    """An argument is invalid; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class ValidationTypeError(ValidationError, TypeError):
    """An argument has the wrong type; the message names the field."""


class CodecError(SessionqError, ValueError):
    """Bytes that do not decode as sessionq's msgpack, or a value msgpack cannot encode."""


class NotFound(SessionqError, KeyError):
    """An unknown name where one is required."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SessionNotFound(NotFound):
    """No session with this id (or name) exists."""

    def __init__(self, what: str) -> None:
        super().__init__(f"no such session: {what}")
        self.what = what


class TaskNotFound(NotFound):
    """No task with this id exists in the session."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no such task: {task_id}")
        self.task_id = task_id


class ObjectNotFound(NotFound):
    """No object with this id was saved in the session (Session.save / load)."""

    def __init__(self, object_id: str) -> None:
        super().__init__(f"no such object: {object_id}")
        self.object_id = object_id


class RunRejected(SessionqError):
    """A worker refused to run a job: unregistered function, undecodable or broken job."""


class TaskFailed(SessionqError):
    """A run failed; `error` is the remote traceback or the command's exit status."""

    def __init__(self, session_id: str, task_id: str | None, error: str) -> None:
        where = f"task {task_id} of session {session_id}" if task_id else f"session {session_id}"
        super().__init__(f"{where} failed: {error}")
        self.session_id = session_id
        self.task_id = task_id
        self.error = error
