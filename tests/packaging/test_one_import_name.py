"""One import name (SPEC §9): a non-editable install holds `sessionq` and nothing named
common, producer or worker, and a user's project with files of those names runs a producer
and a worker of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sessionq import Client
from sessionq.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

USER_FILES = {
    # the user's own modules, named as ours were
    "common.py": "GREETING = 'hello from the user'\n",
    "worker.py": """
        from sessionq import task

        import common


        @task
        def greet(name: str) -> str:
            return f"{common.GREETING}, {name}"
        """,
    "producer.py": """
        import sys

        from sessionq import Client

        import common

        client = Client(sys.argv[1], user="tester")
        [sid] = client.create("greet", task="worker:greet", args=["ada"])
        print(sid, common.GREETING)
        """,
}


def _install(target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def test_a_user_project_with_common_worker_producer_files_runs(
    tmp_path: Path, settings: Settings
) -> None:
    site = tmp_path / "site"
    _install(site)
    top = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["bin", "sessionq"] or top == ["sessionq"], top
    assert (site / "sessionq" / "common" / "lua" / "run.lua").exists()

    project = tmp_path / "project"
    project.mkdir()
    for name, text in USER_FILES.items():
        (project / name).write_text(textwrap.dedent(text))
    # only the installed copy and the project: not the checkout this test runs from
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SESSIONQ_URL")}
    env["PYTHONPATH"] = str(site)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    made = run(sys.executable, "producer.py", settings.url)
    assert made.returncode == 0, made.stderr
    sid, greeting = made.stdout.split(maxsplit=1)
    assert greeting.strip() == "hello from the user"

    where = run(
        sys.executable, "-c", "import sessionq, common; print(sessionq.__file__, common.__file__)"
    )
    ours, theirs = where.stdout.split()
    assert ours.startswith(str(site)) and theirs == str(project / "common.py")

    worked = run(
        sys.executable, "-m", "sessionq", "--url", settings.url,
        "--user", "tester", "worker", "--import", "worker", "--burst"
    )  # fmt: skip
    assert worked.returncode == 0, worked.stderr
    [record] = Client(settings=settings).info(sid)
    assert record["status"] == "Completed"
    assert record["result"] == "hello from the user, ada"
