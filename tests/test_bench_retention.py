"""Smoke test of the retention soak: `python -m bench.retention` with a tiny duration runs end
to end, removes what it created and writes its figures. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_a_short_retention_soak_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "retention.json"
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "bench.retention", "--minutes", "0.3", "--retention", "2",
           "--settle-s", "2", "--sample-s", "1", "--rate", "10", "--workers", "1",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["created"] > 0
    assert report["samples"] and all(s["used_memory"] > 0 for s in report["samples"])
    assert report["verdict"]["window_samples"] >= 4
    assert report["end"]["sessions"] == 0  # every one removed after its retention
    assert ("FAILED" in proc.stdout) == bool(report["verdict"]["problems"])
