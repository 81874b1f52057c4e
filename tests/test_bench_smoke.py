"""Smoke test of the benchmark: `python -m bench.compare --quick --rounds 1 --systems
sessionq,rq` runs end to end and writes a figure for every metric, and the rows of issue 20
that need no other queue's venv (Huey, SAQ and arq are left out: their venvs are made with pip
on first use). No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# metric -> whether RQ has a figure of its own kind for it
METRICS = {
    "enqueue_single": True,
    "enqueue_batch_add_runs": True,
    "enqueue_batch_replicas": True,
    "enqueue_batch_map": True,
    "enqueue_batch_add_flush": True,
    "drain_1_worker": True,
    "drain_2_workers": True,
    "drain_1_worker_sessions": True,
    "round_trip_p50": True,
    "round_trip_p99": True,
    "event_latency_1_listener_p50": False,
    "event_latency_1_listener_p99": False,
    "event_latency_many_listeners_p50": False,
    "event_latency_many_listeners_p99": False,
    "event_latency_many_async_listeners_p50": False,
    "event_latency_many_async_listeners_p99": False,
    "fanout_floor_p50": False,
    "fanout_floor_p99": False,
    "fetch_by_status": False,
    "memory_per_run_add_runs": True,
    "memory_per_run_replicas": True,
    "job_hash_bytes_add_runs": True,
    "job_hash_bytes_replicas": True,
    "commands_per_run": True,
    "evalsha_per_run": False,
}


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.timeout(300)
def test_quick_benchmark_writes_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "bench.compare", "--quick", "--rounds", "1", "--json", str(out),
           "--systems", "sessionq,rq"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sessionq/RQ" in proc.stdout

    report = json.loads(out.read_text())
    assert report["rounds"] == 1 and report["quick"] is True
    metrics = report["metrics"]
    assert set(METRICS) <= set(metrics)
    for name, has_rq in METRICS.items():
        entry = metrics[name]
        assert positive(entry["sessionq"]["median"]), name
        assert all(positive(v) for v in entry["sessionq"]["rounds"]), name
        if has_rq:
            assert positive(entry["rq"]["median"]), name
            assert positive(entry["ratio"]), name
        else:
            assert entry["rq"] is None, name

    # beside other queues: only sessionq's and RQ's columns were asked for
    field = report["field"]
    for name in ("enqueue_single", "drain_1", "round_trip_p50", "redis_cpu_enqueue",
                 "redis_cpu_drain"):  # fmt: skip
        assert positive(field[name]["systems"]["sessionq"]), name
        assert positive(field[name]["systems"]["rq"]), name
        assert field[name]["systems"]["huey"] is None, name
    assert positive(field["add_single"]["systems"]["sessionq"])
    # the 10-run session completed before all of the big one had
    assert 0 <= field["fairness"]["systems"]["sessionq"] < 100
    for name in ("io_async", "io_thread"):  # one worker process with --max-jobs
        assert positive(field[name]["systems"]["sessionq"]), name
    assert "beside other queues" in proc.stdout


@pytest.mark.timeout(300)
def test_the_cluster_section_alone_gives_its_figures(tmp_path: Path) -> None:
    """`--only cluster`: one Redis (with one partition and with the cluster's 16) beside a
    3-master Redis Cluster the bench starts: drain, round trip, the spread of sessions and
    keys over the masters, Redis CPU per run per shard."""
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "bench.compare", "--only", "cluster", "--quick", "--rounds",
           "1", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cluster section" in proc.stdout and "sessionq/RQ" not in proc.stdout

    report = json.loads(out.read_text())
    assert report["metrics"] == {}, "the queues section did not run"
    summary = report["cluster"]["summary"]
    for name in ("drain_runs_per_s", "round_trip_p50_ms", "round_trip_p99_ms",
                 "redis_cpu_us_per_run", "shard_cpu_us_per_run_max", "evalsha_per_run",
                 "commands_per_run", "sender_cpu_us_per_publish"):  # fmt: skip
        assert all(positive(summary[name][t]) for t in ("one", "one_parts", "cluster")), name
    assert positive(summary["other_cpu_us_per_publish"]["cluster"])
    assert summary["other_cpu_us_per_publish"]["one"] is None, "one Redis: no other master"
    # on the cluster events are sharded: SPUBLISH, no PUBLISH (a worker's exit PUBLISHes one
    # stop on RQ's command channel: none per run)
    assert positive(summary["spublish_per_run"]["cluster"])
    assert summary["publish_per_run"]["cluster"] < 0.01
    assert positive(summary["publish_per_run"]["one"]) and not summary["spublish_per_run"]["one"]
    assert positive(summary["sender_cpu_us_per_spublish"]["cluster"])
    for what in ("sessions", "keys"):
        share = summary["spread"][what]["share"]
        assert len(share) == 3 and all(positive(v) for v in share.values()), what
        assert math.isclose(sum(share.values()), 1.0), what
        assert isinstance(summary["spread"][what]["even"], bool)
    per_shard = summary["cpu_us_per_run_per_master"]
    assert list(per_shard) == list(share) and all(positive(v) for v in per_shard.values())


@pytest.mark.timeout(120)
def test_the_profile_command_drains_its_runs_and_prints_the_worker_s_call_tree() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench.profile", "--runs", "300"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("drained 300 runs in ")
    assert "SessionWorker.work" in proc.stdout and "SessionWorker._execute" in proc.stdout


def test_luacost_prints_each_scripts_setup_time() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench.luacost", "--calls", "200", "run", "reserve"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"run", "reserve"}
    assert all(float(x) > 0 for x in rows["run"][:2])


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_counts_what_redis_runs_per_run() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as probe:  # a free port for its server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "bench.instructions", "--n", "20", "--port", str(port)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"enqueue ([\d.]+)  drain ([\d.]+)", proc.stdout)
    assert found and float(found[1]) > 0 and float(found[2]) > 0, proc.stdout


def test_the_other_queues_drivers_import_without_sessionq() -> None:
    """Huey's, SAQ's and arq's drivers run in venvs where sessionq is not installed: what they
    import of bench must not need it."""
    code = ("import sys; sys.modules['sessionq'] = None; "
            "import bench.foreign.common")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
