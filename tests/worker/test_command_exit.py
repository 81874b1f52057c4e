"""worker.execute.Command: a command's status is its own exit status, whenever it closes its
output; what it leaves behind in its process group ends with the run."""

from __future__ import annotations

import os

from sessionq.worker.execute import Command
from tests.conftest import wait_for

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for init is not alive
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_a_command_that_closes_its_output_before_it_exits_keeps_its_status() -> None:
    # as `env` does at exit (close stdout, then stderr, then exit): it was killed in between
    command = Command(["sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 3"], ENV, ram_gb=None,
                      on_lines=lambda lines: None)  # fmt: skip
    assert command.run(None, 1.0) == 3


def test_what_the_command_leaves_holding_its_output_is_killed() -> None:
    lines: list[tuple[str, str]] = []
    command = Command(["sh", "-c", "sleep 30 & echo $!"], ENV, ram_gb=None, on_lines=lines.extend)
    assert command.run(None, 1.0) == 0
    [(stream, pid)] = lines
    assert stream == "stdout"
    wait_for(lambda: not alive(int(pid)), timeout=5, what="the left-behind sleep to be killed")
