"""A run's environment without a growing worker (issue 18): each run's SESSIONQ_* ids reach
os.environ, os.getenv and the subprocesses a function starts, and setting them run after run
does not grow the worker's RSS (glibc keeps every distinct value setenv was given)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.execute import RunEnvironment
from sessionq.worker.loop import SessionWorker

ROOT = Path(__file__).resolve().parents[2]

# 100,000 distinct ids set as runs set them; RSS growth in KiB after a warm-up
GROWTH_SCRIPT = """
import json, os, subprocess, sys
from pathlib import Path
from sessionq.worker.execute import RunEnvironment

def rss_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

env = RunEnvironment()
def run(i):
    env.apply({"SESSIONQ_SESSION_ID": f"sess{i:08d}", "SESSIONQ_TASK_ID": f"sess{i:08d}-{i}"})
for i in range(5_000):
    run(i)
base = rss_kb()
for i in range(5_000, 105_000):
    run(i)
grown = rss_kb() - base
child = subprocess.run(["sh", "-c", "echo $SESSIONQ_TASK_ID"], capture_output=True, text=True)
seen = [os.environ["SESSIONQ_TASK_ID"], os.getenv("SESSIONQ_SESSION_ID"), child.stdout.strip()]
env.restore()
gone = subprocess.run(["sh", "-c", "echo ${SESSIONQ_TASK_ID-unset}"], capture_output=True,
                      text=True).stdout.strip()
print(json.dumps({"grown_kb": grown, "seen": seen, "after": [
    "SESSIONQ_TASK_ID" in os.environ, gone]}))
"""


def _python(code_or_args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONQ_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_a_function_and_the_subprocess_it_starts_see_the_runs_ids(
    client: Client, settings: Settings
) -> None:
    ids = [client.create(f"ids-{i}", task="tests.tasks:ids_here_and_in_a_child")[0]
           for i in range(3)]  # fmt: skip
    SessionWorker(settings).work(burst=True)
    for record in client.info(ids):
        want = [record["id"], f"{record['id']}-1"]
        assert record["result"] == {"environ": want, "getenv": want, "child": want}
    assert "SESSIONQ_TASK_ID" not in os.environ  # put back as it was when the worker left


def test_setting_new_ids_run_after_run_does_not_grow_the_process() -> None:
    proc = _python(["-c", GROWTH_SCRIPT], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["seen"] == ["sess00104999-104999", "sess00104999", "sess00104999-104999"]
    assert out["after"] == [False, "unset"]
    # os.environ's own setter grows ~80 B per distinct value: ~8 MB here
    assert out["grown_kb"] < 1024, f"RSS grew {out['grown_kb']} KiB over 100,000 runs' ids"


def test_variables_a_run_sets_go_back_to_what_they_were() -> None:
    environment = RunEnvironment()
    os.environ["SQ_TEST_KEPT"] = "before"
    try:
        environment.apply({"SQ_TEST_KEPT": "during", "SQ_TEST_NEW": "x" * 500})
        assert os.environ["SQ_TEST_KEPT"] == "during" and os.getenv("SQ_TEST_NEW") == "x" * 500
        environment.apply({"SQ_TEST_NEW": "y"})
        assert os.environ["SQ_TEST_KEPT"] == "before" and os.environ["SQ_TEST_NEW"] == "y"
        assert environment.base()["SQ_TEST_KEPT"] == "before" and "SQ_TEST_NEW" not in (
            environment.base()
        )
        with pytest.raises(ValueError, match="SQ_TEST_NUL"):
            environment.apply({"SQ_TEST_NUL": "a\0b"})
        environment.restore()
        assert "SQ_TEST_NEW" not in os.environ and os.environ["SQ_TEST_KEPT"] == "before"
    finally:
        os.environ.pop("SQ_TEST_KEPT", None)


@pytest.mark.timeout(600)
def test_a_worker_draining_runs_does_not_grow(tmp_path: Path) -> None:
    """bench.rss for 80,000 runs: RSS after its warm-up (40,000 runs, past the scheduler's
    first reconcile, which lifts the high-water mark ~2 MB once) moves < 1.5 MB
    (os.environ's setter grew it ~3.2 MB over those 40,000 runs)."""
    out = tmp_path / "rss.json"
    proc = _python(["-m", "bench.rss", "--runs", "80000", "--warmup-runs", "40000",
                    "--limit-mb", "1.5", "--json", str(out)], timeout=540)  # fmt: skip
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert report["flat"] and abs(report["growth_mb"]) < 1.5, report
