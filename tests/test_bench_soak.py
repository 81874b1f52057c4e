"""The soak (`python -m bench.soak`): a small run end to end, and its audit on its own."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.measure import ROOT, child_env
from bench.soak import RunFacts, audit


@pytest.mark.timeout(180)
@pytest.mark.parametrize("trickle", [[], ["--trickle"]], ids=["queued", "trickled"])
def test_a_small_soak_with_kills_finds_every_run_finished_once(trickle: list[str]) -> None:
    cmd = [sys.executable, "-m", "bench.soak", "--runs", "200", "--workers", "2", "--kills",
           "2", "--slow-share", "0.2", "--seed", "7", *trickle]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=170)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "OK: every run finished exactly once" in proc.stdout
    killed = re.search(r"killed: (\d+) worker processes and (\d+) whole workers", proc.stdout)
    assert killed and int(killed[1]) + int(killed[2]) == 2, proc.stdout
    assert "succeeded exactly once: 200" in proc.stdout


def facts(**kwargs: object) -> RunFacts:
    base = {"state": "succeeded", "started": 1, "succeeded": 1, "began": 1}
    return RunFacts(**{**base, **kwargs})


def test_the_audit_accepts_runs_that_began_again_only_after_a_recorded_retry() -> None:
    assert audit({"s-1": facts(), "s-2": facts(started=2, retried=1, began=2)}, 10) == []
    given_back = facts(started=2, requeued=1, began=1)  # started, given back unrun, started
    out_of_retries = facts(state="failed", succeeded=0, failed=1, started=3, retried=2,
                           began=3, error="worker w.1 died (exit code -9)")  # fmt: skip
    assert audit({"s-1": given_back, "s-2": out_of_retries}, 2) == []


@pytest.mark.parametrize(
    ("run", "says"),
    [
        (facts(started=2, began=2), "began 2 times with 0 recorded retries"),
        (facts(began=2, retried=1), "began 2 times but was started 1 times"),
        (facts(succeeded=2), "finished 2 times"),
        (facts(began=0), "succeeded but never began"),
        (facts(state="queued", succeeded=0), "did not finish"),
        (facts(state="failed", succeeded=0, failed=1, error="boom"), "failed without running"),
    ],
)
def test_the_audit_reports_every_violation(run: RunFacts, says: str) -> None:
    [violation] = audit({"s-1": run}, 10)
    assert violation.startswith("s-1: ") and says in violation
