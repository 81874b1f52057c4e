"""Every Python example of the README, run as written (as a user pastes it into a file), against
the test Redis, with a worker that imports the README's own `myapp/tasks.py` from a project
folder: an example that hangs, or names a task the README never defines, fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import ENV_KNOBS, ROOT, WorkerProcs, wait_for
from tests.producer.conftest import README
from tests.producer.test_cli_readme import BIN, stop

EXAMPLE_TIMEOUT_S = 120  # the longest (10,000 runs of a map, waited for) takes seconds
# blocks not run, each with its reason (matched by their first line)
NOT_RUN = {
    "# myapp/tasks.py": "the tasks module itself: the worker imports it",
    'for e in client.listen(ids, types=["task.*"], after=0):  # replay what was kept, then live':
    # (its `client` and `ids` are the one-screen example's, which runs whole)
    "a fragment of the one-screen example",
}


def python_blocks() -> list[tuple[str, str]]:
    """(section title, code) of each ```python block."""
    out = []
    for match in re.finditer(r"^```python\n(.*?)^```", README, re.S | re.M):
        title = (re.findall(r"^##+ (.+)$", README[: match.start()], re.M) or ["(top)"])[-1]
        out.append((title, match.group(1)))
    return out


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ, **ENV_KNOBS, "SESSIONQ_URL": settings.url,
        "SESSIONQ_USER": settings.user, "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # fmt: skip


@pytest.fixture
def readme_worker(
    project: Path, env: dict[str, str], settings: Settings, client: Client
) -> Iterator[None]:
    """The README's worker line, from the project folder (commands allowed: the one-screen
    example creates command runs)."""
    workers = WorkerProcs(settings, client.redis)
    before = workers.live()
    proc = subprocess.Popen(
        ["sessionq", "worker", "--import", "myapp.tasks", "--allow-commands", "-c", "2"],
        cwd=project, env=env, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: workers.live() >= before + 2, what="the README's workers")
        yield
    finally:
        assert stop(proc) == 0


def test_the_readme_has_the_python_examples_this_file_runs() -> None:
    firsts = [code.splitlines()[0] for _, code in python_blocks()]
    assert set(NOT_RUN) <= set(firsts), "a skipped block is gone: drop it from NOT_RUN"
    assert len(firsts) - len(NOT_RUN) >= 5


@pytest.mark.parametrize(
    "code",
    [code for _, code in python_blocks() if code.splitlines()[0] not in NOT_RUN],
    ids=lambda code: code.splitlines()[0][:40],
)
def test_every_python_example_of_the_readme_runs_as_written(
    code: str, project: Path, env: dict[str, str], readme_worker: None
) -> None:
    script = project / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=project, env=env, text=True,
                          capture_output=True, timeout=EXAMPLE_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
