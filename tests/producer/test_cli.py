"""The `sessionq` command: output and exit codes (SPEC §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.producer.cli import cli
from tests.conftest import ROOT, WorkerProcs, ended, wait_for

# the `sessionq` command in-process: (exit code, stdout, stderr)
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(settings: Settings) -> Run:
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli, ["--url", settings.url, "--user", settings.user, *args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_create_ls_info_stats_logs_events(run: Run, client: Client, workers: WorkerProcs) -> None:
    code, out, _ = run(
        "create", "hello", "--task", "tests.tasks:add", "--args", "2 3", "--replicas", "2"
    )
    assert code == 0
    ids = out.split()
    assert len(ids) == 2
    code, out, _ = run("ls", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} == {"hello-1", "hello-2"}
    code, out, _ = run("ls")
    assert "hello-1" in out and "Pending" in out and out.startswith("ID")
    workers.start(1)
    wait_for(lambda: all(ended(client, s) for s in ids), what="sessions to end")
    code, out, _ = run("info", ids[0], "--json")
    # "2 3" is split as a shell would, and each word typed: two ints
    assert code == 0 and json.loads(out)[0]["result"] == 5
    code, out, _ = run("info", ids[0])
    assert f"== {ids[0]}" in out and "Completed" in out
    code, out, err = run("info", "nosuchid")
    assert code == 1 and "no such session: nosuchid" in err
    code, out, _ = run("stats", "--json")
    assert json.loads(out)["sessions"]["Completed"] == 2
    code, out, _ = run("events", ids[0], "--json", "--type", "task.*")
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "task.queued", "task.started", "task.succeeded"]  # fmt: skip
    code, out, _ = run("events", ids[0], "--follow")
    assert code == 0 and "session.completed" in out.splitlines()[-1]
    code, out, _ = run("logs", ids[0])
    assert code == 0 and out == ""
    code, out, err = run("destroy", ids[0], "nosuch")
    assert code == 1 and out == f"{ids[0]} accepted\n"
    assert err == "sessionq: error: no such session: nosuch\n"
    code, out, _ = run("destroy-with", "hello", "--json")
    assert code == 0 and list(json.loads(out)) == [ids[1]]


def test_command_session_logs_follow(run: Run, client: Client, workers: WorkerProcs) -> None:
    workers.start(1, allow_commands=True)
    code, out, _ = run(
        "create", "echo", "--cmd", f"{sys.executable} -c", "--args", "'print(\"hi\")'"
    )
    [sid] = out.split()
    code, out, _ = run("logs", sid, "--follow")
    assert code == 0 and out == "hi\n"
    code, out, _ = run("watch", sid)
    assert code == 0 and "Completed (1/1 done, 0 failed)" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["create", "bad name!", "--cmd", "true"], "name: "),
        (["create", "ok", "--cmd", "true", "--replicas", "0"], "replicas: "),
        (["create", "ok", "--cmd", "true", "--env", "NOEQUALS"], "env: "),
        (["create", "ok", "--cmd", "true", "--cores", "-1"], "cores: "),
        (["create", "ok", "--task", "tests.tasks:add", "--kwargs", "{nope"], "kwargs: "),
        (["create", "ok"], "cmd: "),
        (["ls", "--status", "Sleeping"], "status: "),
        (["destroy-with", "(oops"], "prefix: invalid regex"),
        (["create"], "Missing argument"),
        (["nosuchcommand"], "No such command"),
        (["create", "ok", "--replicas", "many"], "'many' is not a valid integer"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(run: Run, args: list[str], says: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_unreachable_redis_is_exit_1_naming_the_url() -> None:
    url = "redis://127.0.0.1:1/0"
    env = {**os.environ, "SESSIONQ_RETRY_BUDGET_S": "1"}  # the default waits out a failover
    proc = subprocess.run([sys.executable, "-m", "sessionq", "--url", url, "ls"], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    said, error = proc.stderr.splitlines()  # what it waits for, as it starts to; then the error
    assert "Redis unreachable" in said and "trying again for up to 1s" in said
    assert error.startswith("sessionq: error: ") and url in error
    assert "Traceback" not in proc.stderr


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(cli, ["--help"]).stdout
    for name in ("create", "add", "ls", "stats", "info", "logs", "events", "watch", "destroy",
                 "destroy-with", "pause", "play", "step", "stop", "restart", "worker",
                 "dashboard", "up", "demo"):  # fmt: skip
        assert f"  {name} " in out or f"  {name}\n" in out
