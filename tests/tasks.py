"""Registered functions the test workers run (`--import tests.tasks`)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Any

from sessionq.worker import current_task, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def noop() -> None:
    return None


@task
def with_progress(steps: int = 4) -> str:
    ctx = current_task()
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(0.06)  # past the progress coalescing window, so every step is an event
    ctx.log("all steps done")
    return "done"


@task
def environment() -> dict[str, str]:
    keys = ("REPLICA_ID", "REPLICA_COUNT", "SESSIONQ_SESSION_ID", "SESSIONQ_TASK_ID", "GREETING")
    return {k: os.environ.get(k, "") for k in keys}


@task
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def gil_holder(seconds: int) -> str:
    """A C call that keeps the GIL and hears no signal until it returns, as `sum(range(10**9))`
    does, without burning a core: libc's sleep through ctypes.PyDLL (which keeps the GIL),
    the worker's timeout and stop signals blocked meanwhile. No other thread of the worker
    runs until it returns."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    try:
        ctypes.PyDLL(None).sleep(int(seconds))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return "finished"


@task
def stubborn_sleeper(seconds: float) -> str:
    """Ignores should_stop; only an interrupt ends it early."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


@task
def boom(message: str = "boom") -> None:
    raise ValueError(message)


@task
def unencodable() -> Any:
    return object()


@task
def flaky(marker: str) -> int:
    """Fails on its first attempt, succeeds after."""
    return current_task().attempt if current_task().attempt > 1 else 1 // 0


@task
def set_state(key: str, value: Any) -> Any:
    """Writes the session's shared state from inside a run."""
    current_task().state[key] = value
    return value


@task
def get_state(key: str) -> Any:
    return current_task().state.get(key)


@task
def until_stopped(limit_s: float = 20.0) -> str:
    """Runs until the session is paused or stopped (should_stop), at most limit_s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if current_task().should_stop:
            return "saw should_stop"
        time.sleep(0.02)
    return "limit reached"


@task
def echo(value: Any) -> Any:
    return value


@task
def blob(size: int) -> bytes:
    """A return value of `size` bytes (a little more, msgpack-encoded)."""
    return b"x" * size


@task
def fails_before(attempt: int) -> int:
    """Fails until its `attempt`-th attempt, which returns the attempt number."""
    if current_task().attempt < attempt:
        raise RuntimeError(f"attempt {current_task().attempt} fails")
    return current_task().attempt


@task
def touch(path: str) -> None:
    """Appends "1" to the file at `path`: how many times the run ran."""
    with open(path, "a") as out:
        out.write("1")


@task
def ids_here_and_in_a_child() -> dict[str, Any]:
    """The run's ids as os.environ, os.getenv and a subprocess it starts see them."""
    import subprocess
    import sys

    keys = ("SESSIONQ_SESSION_ID", "SESSIONQ_TASK_ID")
    code = f"import json, os; print(json.dumps([os.environ.get(k) for k in {keys!r}]))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)  # fmt: skip
    import json

    return {
        "environ": [os.environ.get(k) for k in keys],
        "getenv": [os.getenv(k) for k in keys],
        "child": json.loads(child.stdout),
    }


@task
def ledgered_exit(path: str, leave: bool = False) -> None:
    """As ledgered; with `leave`, the first time only, end the worker process with
    sys.exit(0) (a SystemExit: no exception a run's boundary catches)."""
    ledgered(path)
    if leave and not os.path.exists(path + ".left"):
        open(path + ".left", "w").close()  # noqa: SIM115 - an empty mark
        sys.exit(0)


@task
def ledgered(path: str, die: bool = False, host: bool = False) -> None:
    """Append this run's id to the ledger at `path` as it begins; with `die`, the first time
    only (a file beside the ledger says it happened), SIGKILL the worker process - with
    `host`, its whole process group (its supervisor too: a host lost)."""
    with open(path, "a") as ledger:
        ledger.write(current_task().task_id + "\n")
    if die and not os.path.exists(path + ".died"):
        open(path + ".died", "w").close()  # noqa: SIM115 - an empty mark
        if host:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
