"""Running one run in the worker process: a function in-process (no fork), a command as a
process group; both can be ended by a timeout or a stop request."""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.vocabulary import Outcome

log = logging.getLogger(__name__)
LOG_FLUSH_S = 0.05
LOG_FLUSH_LINES = 200
PR_SET_PDEATHSIG = 1
RAM_NO_LIMIT_BYTES = 2**62  # a ram= this large caps nothing (and RLIMIT_AS cannot hold it)

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


class RunInterrupted(BaseException):
    """Raised inside a running function to end it. A BaseException, like KeyboardInterrupt,
    so that a task's own `except Exception` does not swallow it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupter:
    """Ends the function running on the main thread: by SIGALRM at its deadline, or by
    SIGUSR1 when another thread asks (stop, shutdown)."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self._armed = False
        self._reason: str | None = None
        self.enabled = threading.current_thread() is threading.main_thread()
        if self.enabled:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.signal(signal.SIGUSR1, self._on_request)

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self._armed:
            self._armed = False
            raise RunInterrupted("timeout")

    def _on_request(self, signum: int, frame: object) -> None:
        if self._armed and self._reason:
            self._armed = False
            raise RunInterrupted(self._reason)

    def reset(self) -> None:
        """Before a run begins: forget a request meant for the one before."""
        self._reason = None

    @property
    def pending(self) -> str | None:
        """The reason of a request made since reset()."""
        return self._reason

    def arm(self, timeout: float | None) -> None:
        """Just before the function is called. A request made since reset() (while the run
        was being set up, say its module imported) ends the run here, before it is called."""
        self._armed = True
        if self._reason:
            self._armed = False
            raise RunInterrupted(self._reason)
        if timeout and self.enabled:
            signal.setitimer(signal.ITIMER_REAL, timeout)

    def disarm(self) -> None:
        self._armed = False
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def request(self, reason: str) -> None:
        """From any thread: interrupt the running function with `reason`."""
        self._reason = reason
        if self.enabled and self._main is not None:
            signal.pthread_kill(self._main, signal.SIGUSR1)


class _Slot:
    """One variable's "KEY=value" in a C buffer of our own, given to libc's putenv once:
    glibc keeps the pointer (putenv copies nothing), so a new value is written in place, and
    the C environment - getenv, a subprocess's - reads it from there. (os.environ's setter
    calls setenv, and glibc keeps every distinct value setenv was ever given: ~80 B a run.)
    A value too long for the buffer gets a bigger one (doubling), put once more."""

    __slots__ = ("name", "buffer", "capacity", "put", "_retired")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.buffer: ctypes.Array[ctypes.c_char] | None = None
        self.capacity = 0
        self.put = False  # whether the C environment holds our buffer now
        self._retired: list[ctypes.Array[ctypes.c_char]] = []  # another thread may read one

    def write(self, libc: ctypes.CDLL, value: bytes) -> None:
        entry = self.name + b"=" + value
        if self.buffer is None or len(entry) >= self.capacity:
            if self.buffer is not None:
                self._retired.append(self.buffer)
            self.capacity = max(64, 2 * self.capacity, len(entry) + 1)
            self.buffer = ctypes.create_string_buffer(entry, self.capacity)
            self.put = False
        else:
            ctypes.memmove(self.buffer, entry + b"\0", len(entry) + 1)
        if not self.put:
            if libc.putenv(self.buffer) != 0:
                raise OSError(ctypes.get_errno(), f"putenv {self.name!r} failed")
            self.put = True

    def unset(self, libc: ctypes.CDLL) -> None:
        libc.unsetenv(self.name)  # drops the pointer; the buffer stays ours, for next time
        self.put = False


class RunEnvironment:
    """os.environ as in-process runs see it: each run's variables are in place while it runs.
    Between runs they stay, and the next run writes only what differs (a putenv per variable
    per run was a tenth of a no-op run's cost); a variable the next run does not set goes
    back to what it was before any run.

    Where libc is glibc's, a variable a run sets lives in a C buffer of our own (_Slot),
    rewritten in place, and os.environ's own mapping is kept in step without its setter: the
    worker does not grow by each new SESSIONQ_TASK_ID, yet a function reads its variables
    with os.environ/os.getenv and a subprocess it starts inherits them. Elsewhere, os.environ
    is set as usual."""

    def __init__(self, libc: ctypes.CDLL | None = None, *, own_buffers: bool = True) -> None:
        self._original: dict[str, str | None] = {}
        self._slots: dict[str, _Slot] = {}
        self._libc = (libc or _environ_libc()) if own_buffers else None

    def apply(self, env: dict[str, str]) -> None:
        for key in [k for k in self._original if k not in env]:
            old = self._original.pop(key)
            self._set(key, old)
        for key, value in env.items():
            if key not in self._original:
                self._original[key] = os.environ.get(key)
            if os.environ.get(key) != value:
                self._set(key, value)

    def _set(self, key: str, value: str | None) -> None:
        if self._libc is None:
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
            return
        data: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]  # the mapping behind os.environ, set without its setenv
        name = os.fsencode(key)
        slot = self._slots.get(key)
        if slot is None:
            if not name or b"=" in name or b"\0" in name:
                raise ValueError(f"illegal environment variable name: {key!r}")
            slot = self._slots[key] = _Slot(name)
        if value is None:
            slot.unset(self._libc)
            data.pop(name, None)
            return
        raw = os.fsencode(value)
        if b"\0" in raw:
            raise ValueError(f"environment variable {key}: embedded null byte")
        slot.write(self._libc, raw)
        data[name] = raw

    def restore(self) -> None:
        self.apply({})

    def base(self) -> dict[str, str]:
        """os.environ as it was before any run's variables were put in place."""
        env = dict(os.environ)
        for key, old in self._original.items():
            if old is None:
                env.pop(key, None)
            else:
                env[key] = old
        return env


def _environ_libc() -> ctypes.CDLL | None:
    """glibc, when it is what this process runs on (its putenv keeps the caller's pointer)
    and os.environ has the mapping RunEnvironment keeps in step; else None."""
    import platform

    if _libc is None or platform.libc_ver()[0] != "glibc" or os.name != "posix":
        return None
    if not isinstance(getattr(os.environ, "_data", None), dict):
        return None
    _libc.putenv.argtypes = [ctypes.c_char_p]
    _libc.putenv.restype = ctypes.c_int
    _libc.unsetenv.argtypes = [ctypes.c_char_p]
    _libc.unsetenv.restype = ctypes.c_int
    return _libc


RUN_ENVIRONMENT = RunEnvironment()


def call_function(
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    env: dict[str, str],
    timeout: float | None,
    interrupter: Interrupter,
    environment: RunEnvironment = RUN_ENVIRONMENT,
) -> Any:
    """Call `fn` with `env` in os.environ (see RunEnvironment), under the deadline."""
    environment.apply(env)
    try:
        interrupter.arm(timeout)
        return fn(*args, **kwargs)
    finally:
        interrupter.disarm()


def stored_result(run_id: str, func: str, result: Any, max_bytes: int) -> tuple[str, bytes]:
    """A function's return value as its run's outcome and payload. The body ran, so a value
    that cannot be stored fails this run only ("failed", which may retry): one msgpack
    cannot encode, or one bigger than max_bytes (Settings.result_max_bytes) encoded."""
    try:
        payload = codec.encode(result)
    except CodecError as exc:
        reason = f"return value of {func} cannot be stored: {exc}"
    else:
        if len(payload) <= max_bytes:
            return Outcome.SUCCEEDED, payload
        reason = (
            f"return value is {len(payload)} bytes, more than SESSIONQ_RESULT_MAX_BYTES={max_bytes}"
        )
    log.info("run %s failed: %s", run_id, reason)
    return Outcome.FAILED, codec.encode(reason)


def _child_setup(ram_bytes: int | None) -> Callable[[], None]:
    def setup() -> None:
        # die with the worker, whatever kills it
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if ram_bytes:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (ram_bytes, ram_bytes))

    return setup


class Command:
    """A command run as its own process group, its output read line by line. `env` is its
    whole environment (see Settings.command_environ for what the worker gives it)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        ram_gb: float | None,
        on_lines: Callable[[list[tuple[str, str]]], None],
    ) -> None:
        self.argv = argv
        self.env = env
        self.ram_bytes = int(ram_gb * 1024**3) if ram_gb else None
        if self.ram_bytes is not None and self.ram_bytes >= RAM_NO_LIMIT_BYTES:
            self.ram_bytes = None  # more than any address space: no cap at all
        self.on_lines = on_lines
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_reason: str | None = None
        self._stop_at: float | None = None
        self._termed = False  # one TERM only: a second often means "quit now, no cleanup"

    def request_stop(self, reason: str) -> None:
        """From any thread: end the process group (TERM now, KILL after the grace)."""
        self.stop_reason = self.stop_reason or reason
        self._term_once()

    def _term_once(self) -> None:
        if not self._termed:
            self._termed = self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> bool:
        """Signal the process group; whether it was sent."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
                return True
            except (ProcessLookupError, PermissionError):
                pass
        return False

    def run(
        self, timeout: float | None, grace_s: float, note_pgid: Callable[[int], None] | None = None
    ) -> int:
        """Run to the end; the exit status (negative: killed by that signal). `note_pgid`
        hears the process group's id at start and 0 at the end."""
        if self.stop_reason is not None:  # stopped before it started: it never starts
            return -signal.SIGTERM
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
            preexec_fn=_child_setup(self.ram_bytes),  # noqa: PLW1509 - only prctl/setrlimit
        )
        if note_pgid is not None:
            note_pgid(self.proc.pid)
        deadline = time.monotonic() + timeout if timeout else None
        try:
            self._pump(deadline, grace_s)
        finally:
            self._signal(signal.SIGKILL)  # nothing of the group outlives the run
            self.proc.wait()
            if note_pgid is not None:
                note_pgid(0)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return self.proc.returncode

    def _leader_exited(self) -> bool:
        """Whether the command's process has exited, leaving it unreaped (WNOWAIT): its group
        id stays its own until run() has killed what is left of the group."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return True
        try:
            return (
                os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            )
        except ChildProcessError:
            return True

    def _pump(self, deadline: float | None, grace_s: float) -> None:
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(self.proc.stderr, selectors.EVENT_READ, "stderr")
        partial = {"stdout": b"", "stderr": b""}
        pending: list[tuple[str, str]] = []
        first_pending = 0.0
        open_streams = 2
        # to the leader's exit, not to its closing its output: a group kill before it has exited
        # (it may close stdout, then exit) would make its status SIGKILL
        while open_streams or not self._leader_exited():
            now = time.monotonic()
            if deadline is not None and now >= deadline and self.stop_reason is None:
                self.request_stop("timeout")
            if self.stop_reason is not None:
                if self._stop_at is None:
                    self._stop_at = now
                    self._term_once()  # the stop may have come before the process started
                if now - self._stop_at >= grace_s:
                    self._signal(signal.SIGKILL)
            ready = sel.select(timeout=LOG_FLUSH_S)
            if not ready and self._leader_exited():
                break  # it exited; whatever still holds its pipes is killed with its group
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                stream = key.data
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    if partial[stream]:
                        pending.append((stream, _text(partial[stream])))
                        partial[stream] = b""
                    continue
                lines = (partial[stream] + chunk).split(b"\n")
                partial[stream] = lines.pop()
                if lines and not pending:
                    first_pending = time.monotonic()
                pending.extend((stream, _text(line)) for line in lines)
            if pending and (
                len(pending) >= LOG_FLUSH_LINES or time.monotonic() - first_pending >= LOG_FLUSH_S
            ):
                self.on_lines(pending)
                pending = []
        sel.close()
        for stream, rest in partial.items():
            if rest:
                pending.append((stream, _text(rest)))
        if pending:
            self.on_lines(pending)


def _text(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exit status {status}"
