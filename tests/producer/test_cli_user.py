"""The `sessionq` command as people type it (issue 15): typed --args, names and ids, unknown
sessions, messages that name the right thing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sessionq.common.errors import ValidationError
from sessionq.common.jobhash import parse_job_data
from sessionq.common.records import task_dict
from sessionq.common.settings import Settings
from sessionq.common.timing import in_seconds
from sessionq.producer import Client
from sessionq.producer.cli import cli
from sessionq.producer.cli_base import typed_word
from tests.conftest import ENV_KNOBS, ROOT, WorkerProcs, wait_for

# the `sessionq` command in-process: (exit code, stdout, stderr)
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(settings: Settings, caplog: pytest.LogCaptureFixture) -> Run:
    runner = CliRunner()

    def invoke(*args: str, user: str | None = None) -> tuple[int, str, str]:
        who = user or settings.user
        result = runner.invoke(cli, ["--url", settings.url, "--user", who, *args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def job_args(client: Client, task_id: str) -> list[Any]:
    raw = client.redis.hget(client.scripts.rq.job(task_id), "data")
    return parse_job_data(raw)[1]


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("7", 7), ("-3", -3), ("7.5", 7.5), ("1e3", 1000.0), ("true", True), ("false", False),
        ("null", None), ('"7"', "7"), ("s:7", "7"), ("s:", ""), ("007", "007"), ("abc", "abc"),
        ("NaN", "NaN"), ("[1]", "[1]"), ('"unclosed', '"unclosed'), ("2026-11-21", "2026-11-21"),
    ],
)  # fmt: skip
def test_typed_words(word: str, value: Any) -> None:
    assert typed_word(word) == value and type(typed_word(word)) is type(value)


def test_task_args_are_typed_and_command_args_stay_strings(run: Run, client: Client) -> None:
    code, out, _ = run("create", "sq", "--task", "tests.tasks:echo", "--args", "7")
    assert code == 0
    assert job_args(client, f"{out.strip()}-1") == [7]
    code, out, _ = run(
        "create", "mix", "--task", "tests.tasks:add", "--args", "1.5 null s:7 '\"8\"' x"
    )
    assert job_args(client, f"{out.strip()}-1") == [1.5, None, "7", "8", "x"]
    code, out, _ = run("create", "c", "--cmd", "echo", "--args", "7 true")
    assert code == 0 and job_args(client, f"{out.strip()}-1") == ["echo", "7", "true"]
    code, out, err = run("add", "nightly", "--task", "tests.tasks:echo", "--args", "false")
    assert code == 0 and job_args(client, out.strip()) == [False]
    help_text = run("create", "--help")[1] + run("add", "--help")[1]
    assert help_text.count("s:7") == 2


UNKNOWN_ID_COMMANDS = [
    ["info"], ["info", "--tasks"], ["logs"], ["logs", "--follow"], ["events"],
    ["events", "--follow"], ["watch"], ["destroy"], ["pause"], ["play"], ["step"], ["stop"],
    ["restart"],
]  # fmt: skip


@pytest.mark.parametrize("command", UNKNOWN_ID_COMMANDS, ids=" ".join)
def test_an_unknown_session_is_one_line_and_exit_1_without_log_records(
    run: Any, client: Client, command: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, err = run(*command, "deadbeef0000")
    assert (code, out) == (1, "")
    assert err == "sessionq: error: no such session: deadbeef0000\n"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_names_are_taken_wherever_ids_are(run: Run, client: Client) -> None:
    [sid] = client.create("fit", task="tests.tasks:noop")
    persistent = client.session("nightly")
    code, out, _ = run("info", "fit", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == sid
    code, out, err = run("pause", "nightly")
    assert (code, out, err) == (0, f"{persistent.id} accepted\n", "")
    code, out, err = run("step", "nightly", "fit")
    assert code == 1 and out == f"{persistent.id} accepted\n"
    assert err == f"sessionq: error: session {sid} (fit) is Pending, not paused; step refused\n"
    code, out, _ = run("events", "nightly", "--json", "--type", "session.*")
    assert code == 0 and "session.paused" in out
    # another user's session of that name is not the caller's
    code, _, err = run("info", "fit", user="bob")
    assert code == 1 and err == "sessionq: error: no such session: fit\n"
    # two sessions of one name: the error names both ids
    [sid2] = client.create("fit", task="tests.tasks:noop")
    code, _, err = run("destroy", "fit")
    assert code == 2 and sid in err and sid2 in err and err.count("\n") == 1


def test_add_says_when_it_creates_a_session(run: Run, client: Client, workers: WorkerProcs) -> None:
    workers.start(1)  # (none: each add would warn that no worker serves the queue)
    code, out, err = run("add", "deadbeef0000", "--task", "tests.tasks:noop")
    [record] = client.fetch()
    assert code == 0 and err == f"created session deadbeef0000 ({record['id']})\n"
    assert out == f"{record['id']}-1\n"
    # by its id or its name, the same session, and nothing more said
    for n, ref in enumerate((record["id"], "deadbeef0000")):
        code, out, err = run("add", ref, "--task", "tests.tasks:noop", "--name", f"n{n}")
        assert code == 0 and err == "" and out.startswith(record["id"])
    [made] = client.create("made", task="tests.tasks:noop")
    code, _, err = run("add", made, "--task", "tests.tasks:noop")
    assert code == 2 and "session: " in err and "persistent" in err


def test_refusals_say_why(run: Run, client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(settings=Settings.from_env(client.settings.url, environ={}, user="bob")) as bob:
        [theirs] = bob.create("x", task="tests.tasks:noop")
    code, out, err = run("destroy", theirs)
    assert (code, out) == (1, "")
    says = f"session {theirs} (x) is not yours (owner bob); destroy refused"
    assert err == f"sessionq: error: {says}\n"
    [mine] = client.create("mine", task="tests.tasks:noop")
    assert run("destroy", mine)[0] == 0
    code, out, err = run("stop", mine)
    assert code == 1 and "is being destroyed; stop refused" in err and "log line" not in err
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_destroy_with_matching_nothing_and_unknown_event_types(run: Run, client: Client) -> None:
    code, out, err = run("destroy-with", "nothing-here")
    assert (code, out) == (1, "") and "no sessions matched 'nothing-here'" in err
    [sid] = client.create("e", task="tests.tasks:noop")
    code, out, err = run("events", sid, "--type", "bogus")
    assert code == 2 and "--type" in err and "bogus" in err and err.count("\n") == 1
    for good in ("task.*", "session.created", "op.*", "op.pause", "*"):
        assert run("events", sid, "--type", good)[0] == 0, good


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["create", "big", "--cmd", "true", "-e", f"K={'x' * 600 * 1024}"], "env: "),
        (["create", "big", "--task", "tests.tasks:echo", "--args", "x" * 600 * 1024], "args: "),
        (["create", "big", "--task", "tests.tasks:echo", "--kwargs",
          json.dumps({"value": "x" * 600 * 1024})], "kwargs: "),
        (["add", "s", "--task", "tests.tasks:noop", "--in", "1e12"],
         "--in: must be less than 3153600000"),
        (["add", "s", "--task", "tests.tasks:noop", "--in", "-1"],
         "--in: must be 0 seconds or more"),
    ],
)  # fmt: skip
def test_messages_name_what_is_wrong(run: Run, args: list[str], says: str) -> None:
    """Each names its field; `--in` as typed, not as the API spells it (`in_`)."""
    code, _, err = run(*args)
    assert code == 2 and says in err and err.count("\n") == 1


def test_in_seconds_says_its_limit() -> None:
    with pytest.raises(ValidationError, match="less than 3153600000 seconds"):
        in_seconds(1e12)
    with pytest.raises(ValidationError, match="finite"):
        in_seconds(float("inf"))


def test_an_unparsable_url_is_bad_input_naming_url() -> None:
    proc = subprocess.run([sys.executable, "-m", "sessionq", "--url", "garbage", "ls"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("sessionq: error: --url: 'garbage' is not a Redis URL")
    assert proc.stderr.count("\n") == 1
    with pytest.raises(ValidationError, match="^url: "):
        Client("garbage")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--prefix", "bad prefix", "ls"], "prefix 'bad prefix': "),
        (["--user", "u" * 65, "ls"], "user 'uuu"),
        (["--url", "redis://127.0.0.1:1/abc", "ls"], "its path must be a database number"),
        (["--url", "redis://127.0.0.1:1/²", "ls"], "its path must be a database number"),
    ],
)
def test_a_bad_setting_is_bad_input_naming_it(args: list[str], says: str) -> None:
    code, _, err = _sessionq(*args)
    assert code == 2
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_a_database_the_server_does_not_have_is_bad_input_naming_url(settings: Settings) -> None:
    url = settings.url.rsplit("/", 1)[0] + "/99999"  # (the server has 16: redis.conf's default)
    code, _, err = _sessionq("--url", url, "ls")
    assert code == 2
    assert err.startswith("sessionq: error: --url: ") and "has no database 99999" in err
    assert err.count("\n") == 1
    with pytest.raises(ValidationError, match="^url: .*has no database 99999"):
        Client(url).stats()
    worker = _sessionq("--url", url, "worker", "--burst")
    assert worker[0] == 2 and "has no database 99999" in worker[2]
    # the query's db wins over the path, as redis-py reads it
    in_query = settings.url.rsplit("/", 1)[0] + "/0?db=99998"
    with pytest.raises(ValidationError, match="has no database 99998"):
        Client(in_query).stats()


def test_create_and_add_warn_when_no_live_worker_serves_the_queue(
    run: Run, workers: WorkerProcs
) -> None:
    code, _, err = run("create", "lonely", "--task", "tests.tasks:noop", "--queue", "nobody")
    assert code == 0
    assert "warning: no live worker serves queue 'nobody'" in err and "--queue nobody" in err
    code, _, err = run("create", "cmd", "--cmd", "true")
    assert "no live worker serves queue 'commands'" in err and "--allow-commands" in err
    workers.start(1)  # serves the default queue (no commands)
    code, _, err = run("create", "served", "--task", "tests.tasks:noop")
    assert code == 0 and err == ""
    code, _, err = run("add", "kept", "--task", "tests.tasks:noop", "--queue", "elsewhere")
    assert code == 0 and "no live worker serves queue 'elsewhere'" in err
    # a scheduled run waits in the schedule first: nothing to say yet
    code, _, err = run("add", "kept", "--task", "tests.tasks:noop", "--queue", "elsewhere",
                       "--name", "later", "--in", "600")  # fmt: skip
    assert code == 0 and err == ""


def test_version_says_the_installed_one() -> None:
    code, out, _ = _sessionq("--version")
    assert code == 0 and out.startswith("sessionq, version ")


def _sessionq(*args: str) -> tuple[int, str, str]:
    """`sessionq ARGS` as a process: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "sessionq", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_ls_marks_a_cut_name_and_info_prints_counts(run: Run, client: Client) -> None:
    [sid] = client.create("a-very-long-session-name-of-30", task="tests.tasks:noop")
    code, out, _ = run("ls")
    assert "a-very-long-session-nam… " in out
    code, out, _ = run("info", sid)
    [line] = [line for line in out.splitlines() if line.startswith("  tasks ")]
    assert " queued=1 " in line and " started=0 " in line and "{" not in out


def test_task_times_are_in_milliseconds() -> None:
    row = [b"succeeded", b"1", None, None, None, b"2026-01-02T03:04:05.123456Z",
           b"2026-01-02T03:04:06.5Z", None, None, None, None]  # fmt: skip
    record = task_dict("s-1", "t", row)
    assert record["started_at"] == "2026-01-02T03:04:05.123Z"
    assert record["finished_at"] == "2026-01-02T03:04:06.500Z"


def test_dashboard_hint_names_both_installs(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("sessionq.producer.dashboard")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n.partition(".")[0] == "starlette"] + ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    code, _, err = run("dashboard")
    assert code == 1
    assert "pip install 'sessionq[dashboard]'" in err and "'.[dashboard]' in a checkout" in err


def test_worker_imports_from_the_current_directory_and_path(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    here, there = tmp_path / "project", tmp_path / "elsewhere"
    for folder, module in ((here, "herepkg"), (there, "therepkg")):
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text("")
        (folder / module / "tasks.py").write_text(
            "from sessionq.worker import task\n\n\n@task\ndef where() -> str:\n"
            f"    return {module!r}\n"
        )
    ids = client.create("a", task="herepkg.tasks:where") + client.create(
        "b", task="therepkg.tasks:where"
    )
    env = {**os.environ, **ENV_KNOBS, "PYTHONPATH": str(ROOT)}  # this checkout's sessionq
    cmd = [sys.executable, "-m", "sessionq", "--url", settings.url, "--user", settings.user,
           "worker", "--burst", "--concurrency", "2", "--import", "herepkg.tasks",
           "--import", "therepkg.tasks", "--path", str(there)]  # fmt: skip
    # `-m` puts the cwd on the path by itself; the console script does not: use it too
    script = [str(Path(sys.executable).with_name("sessionq")), *cmd[3:]]
    for argv in (cmd, script):
        proc = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    wait_for(lambda: [r["result"] for r in client.info(ids)] == ["herepkg", "therepkg"],
             what="both runs")  # fmt: skip


@pytest.mark.parametrize(
    ("source", "said"),
    [("def broken(:\n    pass\n", "SyntaxError: invalid syntax (broken.py, line 1)"),
     ("import os\nraise RuntimeError('no config here')\n",
      "RuntimeError: no config here (" )],
)  # fmt: skip
def test_a_worker_import_that_fails_is_a_clear_error_not_a_traceback(
    settings: Settings, tmp_path: Path, source: str, said: str
) -> None:
    (tmp_path / "broken.py").write_text(source)
    env = {**os.environ, **ENV_KNOBS, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    proc = subprocess.run([sys.executable, "-m", "sessionq", "--url", settings.url, "worker",
                           "--burst", "--import", "broken"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # (as for a module not found)
    assert "--import broken: " + said in proc.stderr
    assert "Traceback" not in proc.stderr
