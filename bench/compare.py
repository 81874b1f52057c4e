"""sessionq and plain RQ side by side: `python -m bench.compare [--quick] [--rounds 3]
[--json PATH] [--only queues|cluster]`.

One throwaway redis-server (no persistence) serves every measurement. Each round runs every
measurement once, sessionq first and then RQ, each in a fresh process (bench.measure) after
a FLUSHALL; the table shows the median over the rounds and the sessionq/RQ ratio, and every
figure of every round goes to a JSON file (default bench/results/<UTC timestamp>.json).

This process imports neither sessionq's client nor RQ: RQ fixes its key prefix when first
imported, and sessionq's ("sq:rq") must not leak into the plain RQ processes.

Then the cluster section (bench.cluster, issue 19): sessionq on a 3-master Redis Cluster
beside one Redis, both started for it; `--only cluster` runs that alone, `--only queues`
everything but it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from bench import cluster, field
from bench.measure import ROOT, child_env
from bench.plan import RQ, SQ, Step, Variant
from sessionq.common.redisserver import RedisServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FULL_SIZES = {
    "single": 2_000,  # create / enqueue calls, one run each
    "batch": 10_000,  # runs enqueued in one call
    "drain": 10_000,  # runs drained by burst workers
    "round_trips": 500,
    "events": 500,  # events emitted per event-latency measurement
    "listeners": 100,
    "fetch_sessions": 100_000,
    "destroyed": 100,
    "fetch_calls": 20,
    "memory": 10_000,  # runs queued for the memory measurement
}
QUICK_SIZES = {
    "single": 100,
    "batch": 500,
    "drain": 300,
    "round_trips": 30,
    "events": 30,
    "listeners": 100,
    "fetch_sessions": 1_000,
    "destroyed": 100,
    "fetch_calls": 5,
    "memory": 500,
}
CHILD_TIMEOUT_S = 900
SECTIONS = ("queues", "cluster")


# -- what to run -----------------------------------------------------------------------------
def steps(sizes: dict[str, int]) -> list[Step]:
    def n(key: str) -> str:
        return str(sizes[key])

    drain = ("--n", n("drain"))
    return [
        Step("enqueue_single", (Variant(SQ, "sq_enqueue_single", ("--n", n("single"))),
                                Variant(RQ, "rq_enqueue_single", ("--n", n("single"))))),
        Step("enqueue_batch", (Variant(SQ, "sq_enqueue_batch", ("--n", n("batch"))),
                               Variant(RQ, "rq_enqueue_batch", ("--n", n("batch"))))),
        Step("enqueue_replicas", (Variant(SQ, "sq_enqueue_batch",
                                          ("--n", n("batch"), "--mode", "replicas")),)),
        Step("enqueue_map", (Variant(SQ, "sq_enqueue_batch",
                                     ("--n", n("batch"), "--mode", "map")),)),
        Step("enqueue_add", (Variant(SQ, "sq_enqueue_batch",
                                     ("--n", n("batch"), "--mode", "add")),)),
        Step("drain_1", (Variant(SQ, "sq_drain", (*drain, "--workers", "1", "--stats")),
                         Variant(RQ, "rq_drain", (*drain, "--workers", "1", "--stats")))),
        Step("drain_2", (Variant(SQ, "sq_drain", (*drain, "--workers", "2")),
                         Variant(RQ, "rq_drain", (*drain, "--workers", "2")))),
        Step("redis_cpu", (Variant(SQ, "sq_redis_cpu", ("--n", n("drain"))),)),
        Step("drain_sessions", (Variant(SQ, "sq_drain",
                                        (*drain, "--workers", "1", "--mode", "replicas")),)),
        Step("round_trip", (Variant(SQ, "sq_round_trip", ("--n", n("round_trips"))),
                            Variant(RQ, "rq_round_trip", ("--n", n("round_trips"))))),
        Step("events_1", (Variant(SQ, "sq_events", ("--n", n("events"), "--k", "1")),)),
        Step("events_many", (Variant(SQ, "sq_events",
                                     ("--n", n("events"), "--k", n("listeners"))),)),
        Step("events_many_async", (Variant(SQ, "sq_events",
                                           ("--n", n("events"), "--k", n("listeners"),
                                            "--async")),)),
        Step("fanout_floor", (Variant(SQ, "py_fanout",
                                      ("--n", n("events"), "--k", n("listeners"))),)),
        Step("fetch", (Variant(SQ, "sq_fetch", ("--n", n("fetch_sessions"), "--destroy",
                                                n("destroyed"), "--calls", n("fetch_calls"))),)),
        Step("memory_add_runs", (Variant(SQ, "sq_memory", ("--n", n("memory"))),
                                 Variant(RQ, "rq_memory", ("--n", n("memory"))))),
        Step("memory_replicas", (Variant(SQ, "sq_memory",
                                         ("--n", n("memory"), "--mode", "replicas")),)),
    ]  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """A table row: a figure of sessionq's and (when RQ has one) RQ's."""

    name: str
    label: str  # formatted with the sizes
    unit: str
    better: str  # "higher" or "lower"
    sq: tuple[str, str]  # (step, figure)
    rq: tuple[str, str] | None = None
    rq_shared: bool = False  # RQ's figure is the one of an earlier row (RQ has no sessions)


METRICS = [
    Metric("enqueue_single", "enqueue one at a time ({single:,} calls)", "runs/s", "higher",
           ("enqueue_single", "runs_per_s"), ("enqueue_single", "runs_per_s")),
    Metric("enqueue_batch_add_runs", "batch enqueue: 1 session x {batch:,} runs (add_runs)",
           "runs/s", "higher", ("enqueue_batch", "runs_per_s"), ("enqueue_batch", "runs_per_s")),
    Metric("enqueue_batch_replicas", "batch enqueue: {batch:,} sessions (create replicas)",
           "runs/s", "higher", ("enqueue_replicas", "runs_per_s"),
           ("enqueue_batch", "runs_per_s"), rq_shared=True),
    Metric("enqueue_batch_map", "batch enqueue: 1 session x {batch:,} runs (Session.map)",
           "runs/s", "higher", ("enqueue_map", "runs_per_s"), ("enqueue_batch", "runs_per_s"),
           rq_shared=True),
    Metric("enqueue_batch_add_flush",
           "batch enqueue: {batch:,} x Session.add(flush=False) + flush()", "runs/s", "higher",
           ("enqueue_add", "runs_per_s"), ("enqueue_batch", "runs_per_s"), rq_shared=True),
    Metric("drain_1_worker", "drain {drain:,} runs, 1 worker process", "runs/s", "higher",
           ("drain_1", "runs_per_s"), ("drain_1", "runs_per_s")),
    Metric("drain_2_workers", "drain {drain:,} runs, 2 worker processes", "runs/s", "higher",
           ("drain_2", "runs_per_s"), ("drain_2", "runs_per_s")),
    Metric("drain_1_worker_sessions", "drain {drain:,} one-run sessions, 1 worker", "runs/s",
           "higher", ("drain_sessions", "runs_per_s"), ("drain_1", "runs_per_s"),
           rq_shared=True),
    Metric("round_trip_p50", "round trip enqueue -> result, p50", "ms", "lower",
           ("round_trip", "p50_ms"), ("round_trip", "p50_ms")),
    Metric("round_trip_p99", "round trip enqueue -> result, p99", "ms", "lower",
           ("round_trip", "p99_ms"), ("round_trip", "p99_ms")),
    Metric("round_trip_new_listener_p50", "round trip, a new listen() per run, p50", "ms",
           "lower", ("round_trip", "new_listener_p50_ms"), ("round_trip", "p50_ms"),
           rq_shared=True),
    Metric("round_trip_new_listener_p99", "round trip, a new listen() per run, p99", "ms",
           "lower", ("round_trip", "new_listener_p99_ms"), ("round_trip", "p99_ms"),
           rq_shared=True),
    Metric("event_latency_1_listener_p50", "event emit -> listener, 1 listener, p50", "ms",
           "lower", ("events_1", "p50_ms")),
    Metric("event_latency_1_listener_p99", "event emit -> listener, 1 listener, p99", "ms",
           "lower", ("events_1", "p99_ms")),
    Metric("event_latency_many_listeners_p50",
           "event emit -> listener, {listeners} listeners, p50", "ms", "lower",
           ("events_many", "p50_ms")),
    Metric("event_latency_many_listeners_p99",
           "event emit -> listener, {listeners} listeners, p99", "ms", "lower",
           ("events_many", "p99_ms")),
    Metric("event_latency_many_async_listeners_p50",
           "event emit -> listener, {listeners} async listeners, p50", "ms", "lower",
           ("events_many_async", "p50_ms")),
    Metric("event_latency_many_async_listeners_p99",
           "event emit -> listener, {listeners} async listeners, p99", "ms", "lower",
           ("events_many_async", "p99_ms")),
    Metric("fanout_floor_p50", "floor: no Redis, 1 thread -> {listeners} threads, p50 ++", "ms",
           "lower", ("fanout_floor", "p50_ms")),
    Metric("fanout_floor_p99", "floor: no Redis, 1 thread -> {listeners} threads, p99 ++", "ms",
           "lower", ("fanout_floor", "p99_ms")),
    Metric("fetch_by_status", "fetch(status=Terminating): {destroyed} of {fetch_sessions:,}",
           "ms", "lower", ("fetch", "median_ms")),
    Metric("memory_per_run_add_runs", "Redis memory per queued run (add_runs)", "bytes",
           "lower", ("memory_add_runs", "bytes_per_run"), ("memory_add_runs", "bytes_per_run")),
    Metric("memory_per_run_replicas", "Redis memory per queued run (create replicas)", "bytes",
           "lower", ("memory_replicas", "bytes_per_run"), ("memory_add_runs", "bytes_per_run"),
           rq_shared=True),
    Metric("job_hash_bytes_add_runs", "MEMORY USAGE of one job hash (add_runs)", "bytes",
           "lower", ("memory_add_runs", "job_hash_bytes"),
           ("memory_add_runs", "job_hash_bytes")),
    Metric("job_hash_bytes_replicas", "MEMORY USAGE of one job hash (create replicas)",
           "bytes", "lower", ("memory_replicas", "job_hash_bytes"),
           ("memory_add_runs", "job_hash_bytes"), rq_shared=True),
    Metric("commands_per_run", "Redis commands per run, 1-worker drain", "calls", "lower",
           ("drain_1", "commands_per_run"), ("drain_1", "commands_per_run")),
    Metric("evalsha_per_run", "script calls (EVALSHA, FCALL: round trips) per run, 1-worker "
           "drain", "calls", "lower", ("drain_1", "evalsha_per_run")),
    Metric("redis_cpu_per_run", "Redis CPU per run: add_runs + 1-worker drain", "us",
           "lower", ("redis_cpu", "redis_cpu_us_per_run")),
]  # fmt: skip


# -- running ---------------------------------------------------------------------------------
class MeasurementFailed(RuntimeError):
    pass


def run_child(
    variant: Variant, url: str, python: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one measurement process (in `python`, default this one; `env` added to its
    environment); its {"figures": ..., "detail": ...}."""
    cmd = [str(python or sys.executable), "-m", variant.module, variant.measurement, "--url",
           url, *variant.args]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**child_env(), **(env or {})},
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise MeasurementFailed(f"{' '.join(cmd[2:])}: no answer in {CHILD_TIMEOUT_S}s") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise MeasurementFailed(
            f"{' '.join(cmd[2:])} exited with {proc.returncode}:\n{proc.stderr.strip()[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip()[-2000:]
    return result


def redis_cpu_s(redis: Redis) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def run_rounds(
    url: str, plan: list[Step], rounds: int, pythons: dict[str, Path] | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """raw[step][system] = one result per round; FLUSHALL before every measurement. A failed
    measurement of another queue (not sessionq's or RQ's) is recorded as {"failed": why}."""
    pythons = pythons or {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        step.name: {v.system: [] for v in step.variants} for step in plan
    }
    redis = Redis.from_url(url)
    try:
        for number in range(1, rounds + 1):
            for step in plan:
                for variant in step.variants:
                    redis.flushall()
                    started = time.perf_counter()
                    cpu = redis_cpu_s(redis)
                    try:
                        result = run_child(variant, url, pythons.get(variant.system))
                    except MeasurementFailed as exc:
                        if variant.system in (SQ, RQ):
                            raise
                        log(f"round {number}/{rounds} {step.name:<17} {variant.system:<8} "
                            f"failed: {exc}")  # fmt: skip
                        raw[step.name][variant.system].append({"failed": str(exc)})
                        continue
                    if step.cpu_runs:
                        used = redis_cpu_s(redis) - cpu
                        result["figures"]["redis_cpu_us_per_run"] = used / step.cpu_runs * 1e6
                    raw[step.name][variant.system].append(result)
                    took = time.perf_counter() - started
                    log(f"round {number}/{rounds} {step.name:<17} {variant.system:<8} "
                        f"{took:6.1f}s  {brief(result['figures'])}")  # fmt: skip
        redis.flushall()
    finally:
        redis.close()
    return raw


def brief(figures: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- summarising -----------------------------------------------------------------------------
def series(
    raw: dict[str, dict[str, list[dict[str, Any]]]], where: tuple[str, str], system: str
) -> dict[str, Any] | None:
    step, figure = where
    values = [float(r["figures"][figure]) for r in raw.get(step, {}).get(system, [])]
    return {"median": statistics.median(values), "rounds": values} if values else None


def summarise(
    raw: dict[str, dict[str, list[dict[str, Any]]]], sizes: dict[str, int]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        sq = series(raw, m.sq, SQ)
        if sq is None:  # sessionq not among --systems
            continue
        rq = series(raw, m.rq, RQ) if m.rq else None
        ratio = sq["median"] / rq["median"] if rq and rq["median"] else None
        out[m.name] = {
            "label": m.label.format(**sizes), "unit": m.unit, "better": m.better,
            "sessionq": sq, "rq": rq, "ratio": ratio, "rq_shared": m.rq_shared,
        }  # fmt: skip
    return out


def number(value: float, unit: str) -> str:
    if unit in ("runs/s", "bytes"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:.2f}"


def sq_median(raw: dict[str, dict[str, list[dict[str, Any]]]], step: str, figure: str) -> float:
    values = [r["figures"][figure] for r in raw.get(step, {}).get(SQ, [])]
    return statistics.median(values) if values else math.nan


def table(
    metrics: dict[str, dict[str, Any]],
    machine: dict[str, Any],
    meta: dict[str, Any],
    raw: dict[str, dict[str, list[dict[str, Any]]]],
) -> str:
    """The printed report: machine, the table of medians, and what the rows mean."""
    header = ("metric", "sessionq", "RQ", "sessionq/RQ")
    rows = []
    for m in metrics.values():
        unit = m["unit"]
        rq = m["rq"]
        rq_cell = "-" if rq is None else number(rq["median"], unit)
        if rq is not None and m["rq_shared"]:
            rq_cell += " +"
        ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}x"
        sq_cell = number(m["sessionq"]["median"], unit)
        rows.append((f"{m['label']} [{unit}]", sq_cell, rq_cell, ratio))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    sizes = meta["sizes"]
    cpu = sq_median(raw, "events_many", "listener_cpu_us_per_delivery")
    async_cpu = sq_median(raw, "events_many_async", "listener_cpu_us_per_delivery")
    floor_cpu = sq_median(raw, "fanout_floor", "cpu_us_per_delivery")
    intro = [
        f"nproc {machine['nproc']}, Python {machine['python']}, redis-server "
        f"{machine['redis_server']}, redis-py {machine['redis_py']}, rq {machine['rq']}; "
        f"load average {machine['loadavg_start'][0]:.2f} at start, "
        f"{machine['loadavg_end'][0]:.2f} at end",
        f"{meta['rounds']} round(s){' with --quick sizes' if meta['quick'] else ''}; each "
        "figure is the median over the rounds. In a round sessionq ran first, then RQ, each in "
        "a fresh process after FLUSHALL of one throwaway redis-server (no persistence).",
    ]
    notes = [
        "Ratio = sessionq / RQ. Rows in runs/s: higher is better, a ratio above 1 favours "
        "sessionq. Rows in ms, bytes and calls: lower is better, a ratio below 1 favours "
        "sessionq.",
        "+ RQ has no sessions: the RQ figure of this row is the one of the row of the same kind "
        "above (enqueue_many, the 1-worker drain, the RQ memory and job hash rows).",
        "Batch enqueue: add_runs is the internal call (validated runs, one step); Session.map "
        "and add(flush=False) + flush() are the public paths a user writes, timed from the "
        "call (map) or the first Task made (add: named Tasks, made in the loop) to the "
        "written batch; RQ: enqueue_many of prepared jobs.",
        "Drain: from starting the worker process(es) until they exit in burst mode; process "
        "start-up (interpreter, imports, registration) is included for both systems, nothing "
        "is subtracted. sessionq: per worker, `sessionq worker`'s supervisor and its one "
        "worker process (as users run it: a supervised worker may hold back the finishes of "
        "very short runs); RQ: per worker, one "
        f"SimpleWorker (no fork). {sizes['drain']:,} no-op runs queued beforehand (sessionq: one "
        "session via add_runs, or one-run sessions via create replicas; RQ: enqueue_many).",
        "Round trip: one worker process already running; sessionq create() then the "
        "task.succeeded event on one listen() kept open over every session (as a producer "
        "awaiting many results does), and again with a new listen() per run (subscribe, "
        "replay, wait); RQ enqueue() then job.latest_result(timeout); "
        f"{sizes['round_trips']} samples after 20 dropped warm-up ones.",
        f"Event latency: {sizes['events']} task.progress events emitted ~2 ms apart; the "
        "listeners are threads of one other process, each with its own Client and listen() "
        "(which share the process's one pub/sub connection and reader thread); "
        "CLOCK_MONOTONIC at receipt minus at emit, pooled over the listeners. "
        f"With {sizes['listeners']} listeners that process spent {cpu:.0f} us of CPU per event "
        "delivered to one listener: when that exceeds the emit spacing divided by the number "
        "of listeners, it falls behind and the latency is its backlog. The async rows: the "
        "listeners are tasks of one event loop in that other process, each with its own "
        "AsyncClient and listen() (which share the loop's one pub/sub connection and reader "
        f"task); {async_cpu:.0f} us of CPU per delivery, and no thread to wake.",
        f"++ The floor under the {sizes['listeners']}-listener rows, with neither Redis nor "
        "sessionq: one thread hands each event to that many threads (a queue.SimpleQueue each) "
        f"at the same rate; it spent {floor_cpu:.0f} us of CPU per delivery. Waking a thread "
        "costs CPython about that much (futex, GIL hand-off), one thread at a time.",
        "Commands per run: INFO commandstats over the 1-worker drain (CONFIG RESETSTAT before), "
        "divided by runs; Redis 7 counts the commands a Lua script runs as well as the EVALSHA. "
        "Memory: INFO used_memory before/after queuing, divided by runs. Redis CPU: INFO "
        "cpu (user + sys) before and after queuing the drain's runs in one session and "
        "draining them with one worker, divided by runs (python -m bench.measure sq_redis_cpu "
        "also gives each phase's EVALSHA time, and --mode single for create() calls).",
    ]
    wrap = textwrap.TextWrapper(width=100, subsequent_indent="  ")
    out = [*intro, "", line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append("")
    out += [wrap.fill(note) for note in notes]
    return "\n".join(out)


def machine_info(url: str) -> dict[str, Any]:
    redis = Redis.from_url(url)
    try:
        server = redis.info("server")
    finally:
        redis.close()
    versions = subprocess.run(
        [sys.executable, "-c", "import redis, rq; print(redis.__version__, rq.__version__)"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "redis_server": server.get("redis_version"),
        "redis_py": versions[0],
        "rq": versions[1],
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


# -- entry point -----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write all figures (default bench/results/<UTC>.json)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(field.ALL_SYSTEMS),
        help="comma-separated rows to measure, of " + ",".join(field.ALL_SYSTEMS) + " (default: "
        "all; Huey, SAQ and arq each run in a venv of their own, bench/.venvs/, made on first "
        "use with pip)",
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        default=None,
        help="run one section: queues (sessionq, RQ and the other queues on one Redis) or "
        "cluster (sessionq on a 3-master Redis Cluster beside one Redis); default both",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.systems = tuple(s.strip().lower() for s in args.systems.split(",") if s.strip())
    unknown = sorted(set(args.systems) - set(field.ALL_SYSTEMS))
    if unknown or not args.systems:
        parser.error(f"--systems: unknown {', '.join(unknown) or 'empty list'}; "
                     f"choose from {','.join(field.ALL_SYSTEMS)}")  # fmt: skip
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = (
        {**QUICK_SIZES, **field.QUICK_SIZES, **cluster.QUICK_SIZES}
        if args.quick
        else {**FULL_SIZES, **field.FULL_SIZES, **cluster.FULL_SIZES}
    )
    now = dt.datetime.now(dt.UTC)
    path = args.json or RESULTS_DIR / f"{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    started = time.perf_counter()
    queues = args.only in (None, "queues")
    on_cluster = args.only in (None, "cluster") and SQ in args.systems
    pythons, missing = field.prepare(args.systems, log) if queues else ({}, {})
    plan = field.extend(steps(sizes), sizes, args.systems, missing) if queues else []
    server = RedisServer().start()
    try:
        machine = machine_info(server.url)
        raw = run_rounds(server.url, plan, args.rounds, pythons)
    except MeasurementFailed as exc:
        log(f"bench.compare: a measurement failed: {exc}")
        return 1
    finally:
        server.stop()
    try:
        section = cluster.run_section(args.rounds, sizes, run_child, log) if on_cluster else None
    except MeasurementFailed as exc:
        log(f"bench.compare: a measurement of the cluster section failed: {exc}")
        return 1
    machine["loadavg_end"] = list(os.getloadavg())
    meta = {"quick": args.quick, "rounds": args.rounds, "sizes": sizes,
            "systems": list(args.systems), "only": args.only}  # fmt: skip
    metrics = summarise(raw, sizes)
    rows = field.summarise(raw, sizes, missing)
    versions = field.versions(args.systems)
    report = {
        "created_utc": now.isoformat(timespec="seconds"),
        **meta,
        "machine": machine,
        "elapsed_s": time.perf_counter() - started,
        "metrics": metrics,
        "field": rows,
        "versions": versions,
        "raw": raw,
        "cluster": section,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if queues:
        print(table(metrics, machine, meta, raw))
        print()
        print(field.table(rows, args.systems, versions, sizes))
    if section is not None:
        print()
        print(cluster.table(section, sizes))
    print(f"\nAll figures: {path} ({report['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
