"""The rows of bench.compare beside Huey, SAQ and arq (issue 20): their variants, added to
the steps sessionq and RQ already share, the sessionq-only rows of the issue (Session.add one
at a time, the I/O-bound drains, fair share), and their table.

Each other system runs in its own venv (bench.foreign.venvs) through its driver
(bench.foreign.<system>_bench), which prints the same JSON line as bench.measure. A system that
cannot be installed or a driver that fails leaves its
cells saying so; the run goes on.
"""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.foreign import venvs
from bench.plan import RQ, SQ, Step, Variant

FOREIGN = tuple(venvs.SYSTEMS)  # huey, saq, arq
ALL_SYSTEMS = (SQ, RQ, *FOREIGN)
COLUMNS = {SQ: "sessionq", RQ: "RQ", **venvs.SYSTEMS}
FULL_SIZES = {"io_runs": 10_000, "fair_big": 20_000, "fair_small": 10}
QUICK_SIZES = {"io_runs": 200, "fair_big": 500, "fair_small": 10}
ASYNC_JOBS, THREAD_JOBS = 500, 50  # runs in flight in the one worker of the I/O drains
NAP = "0.1"  # seconds each I/O-bound run waits
Raw = dict[str, dict[str, list[dict[str, Any]]]]


def prepare(systems: tuple[str, ...], log: Any) -> tuple[dict[str, Path], dict[str, str]]:
    """The interpreters of the selected other systems (their venvs made if need be), and why
    each of the others cannot run: {system or "step/system": reason}."""
    pythons: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for system in systems:
        if system in FOREIGN:
            try:
                pythons[system] = venvs.python_for(system, log=log)
            except venvs.Unavailable as exc:
                missing[system] = f"not installed: {exc}"
                log(f"{COLUMNS[system]}: {missing[system]}")
    return pythons, missing


def extend(plan: list[Step], sizes: dict[str, int], systems: tuple[str, ...],
           missing: dict[str, str]) -> list[Step]:  # fmt: skip
    """The steps of bench.compare with the selected systems' variants and the rows of this
    module; Redis's CPU is measured around enqueue_single, drain_1 and create_floor."""

    def runnable(step: str, system: str) -> bool:
        return system in systems and system not in missing and f"{step}/{system}" not in missing

    def foreign(step: str, measurement: str, *args: str, only: tuple[str, ...] = FOREIGN
                ) -> tuple[Variant, ...]:  # fmt: skip
        return tuple(Variant(s, measurement, args, f"bench.foreign.{s}_bench")
                     for s in only if runnable(step, s))  # fmt: skip

    n = {k: str(v) for k, v in sizes.items()}
    shared = {
        "enqueue_single": foreign("enqueue_single", "enqueue_single", "--n", n["single"]),
        "drain_1": foreign("drain_1", "drain", "--n", n["drain"]),
        "round_trip": foreign("round_trip", "round_trip", "--n", n["round_trips"]),
    }
    cpu = {"enqueue_single": sizes["single"], "drain_1": sizes["drain"]}
    out = []
    for step in plan:
        kept = tuple(v for v in step.variants if v.system in systems)
        out.append(replace(step, variants=kept + shared.get(step.name, ()),
                           cpu_runs=cpu.get(step.name, 0)))  # fmt: skip
    io = ("--n", n["io_runs"])
    sq = "bench.sqfield"
    more = [
        Step("add_single", (Variant(SQ, "sq_add_single", ("--n", n["single"]), sq),)
             if runnable("add_single", SQ) else ()),
        Step("create_floor", (Variant(SQ, "sq_create_floor", ("--n", n["single"]), sq),)
             if runnable("create_floor", SQ) else (), cpu_runs=sizes["single"]),
        Step("io_async",
             ((Variant(SQ, "sq_io_drain", (*io, "--kind", "async", "--sleep", NAP,
                                           "--max-jobs", str(ASYNC_JOBS))),)
              if runnable("io_async", SQ) else ())
             + foreign("io_async", "drain", *io, "--sleep", NAP, "--concurrency",
                       str(ASYNC_JOBS), only=("saq", "arq"))),
        Step("io_thread",
             ((Variant(SQ, "sq_io_drain", (*io, "--kind", "thread", "--sleep", NAP,
                                           "--max-jobs", str(THREAD_JOBS))),)
              if runnable("io_thread", SQ) else ())
             + foreign("io_thread", "drain", *io, "--sleep", NAP, "--concurrency",
                       str(THREAD_JOBS), only=("huey",))),
        Step("fairness", (Variant(SQ, "sq_fairness", ("--n", n["fair_big"], "--small",
                                                      n["fair_small"]), sq),)
             if runnable("fairness", SQ) else ()),
    ]  # fmt: skip
    return [step for step in out + more if step.variants]


# -- the table -------------------------------------------------------------------------------
ROWS = [  # name, label, unit, better, (step, figure); RQ's figure is a ratio's denominator
    ("enqueue_single", "enqueue one at a time ({single:,} calls)", "runs/s", "higher",
     ("enqueue_single", "runs_per_s")),
    ("add_single", "  sessionq: Session.add of one run, one at a time", "runs/s", "higher",
     ("add_single", "runs_per_s")),
    ("create_floor", "  floor: a create's writes alone, one FCALL each (sq_create_floor)",
     "runs/s", "higher", ("create_floor", "runs_per_s")),
    ("drain_1", "no-op drain, {drain:,} runs, 1 worker process", "runs/s", "higher",
     ("drain_1", "runs_per_s")),
    ("round_trip_p50", "round trip enqueue -> result, p50", "ms", "lower",
     ("round_trip", "p50_ms")),
    ("round_trip_p99", "round trip enqueue -> result, p99", "ms", "lower",
     ("round_trip", "p99_ms")),
    ("redis_cpu_enqueue", "Redis CPU per run: enqueue one at a time", "us", "lower",
     ("enqueue_single", "redis_cpu_us_per_run")),
    ("redis_cpu_floor", "  floor: a create's writes alone, one FCALL each", "us", "lower",
     ("create_floor", "redis_cpu_us_per_run")),
    ("redis_cpu_drain", "Redis CPU per run: queue {drain:,} + drain them", "us", "lower",
     ("drain_1", "redis_cpu_us_per_run")),
    ("io_async", "I/O drain: {io_runs:,} x async sleep 0.1 s, 500 in flight", "runs/s",
     "higher", ("io_async", "runs_per_s")),
    ("io_thread", "I/O drain: {io_runs:,} x time.sleep 0.1 s, 50 threads", "runs/s",
     "higher", ("io_thread", "runs_per_s")),
    ("fairness", "fair share: big session done when the small one was", "%", "lower",
     ("fairness", "big_done_pct")),
]  # fmt: skip


def median_of(raw: Raw, step: str, figure: str, system: str) -> float | None:
    values = [r["figures"][figure] for r in raw.get(step, {}).get(system, [])
              if figure in r.get("figures", {})]  # fmt: skip
    return statistics.median(values) if values else None


def summarise(raw: Raw, sizes: dict[str, int], missing: dict[str, str]) -> dict[str, Any]:
    """{row: {label, unit, better, systems: {system: median or None}, why: {system: reason},
    ratio: {system: x against RQ}}}."""
    out: dict[str, Any] = {}
    for name, label, unit, better, (step, figure) in ROWS:
        medians = {s: median_of(raw, step, figure, s) for s in ALL_SYSTEMS}
        why = {}
        for s in ALL_SYSTEMS:
            if medians[s] is None:
                failed = [r["failed"] for r in raw.get(step, {}).get(s, []) if "failed" in r]
                why[s] = ("failed: " + failed[0][:200] if failed else
                          missing.get(s) or missing.get(f"{step}/{s}") or "-")  # fmt: skip
        rq = medians[RQ]
        ratio = {s: v / rq for s, v in medians.items() if v is not None and rq}
        out[name] = {
            "label": label.format(**sizes), "unit": unit, "better": better,
            "systems": medians, "why": why, "ratio": ratio,
        }  # fmt: skip
    return out


def cell(value: float | None, unit: str, ratio: float | None, why: str) -> str:
    if value is None:
        return "failed" if why.startswith("failed") else (
            "n/i" if why.startswith("not installed") else why)  # fmt: skip
    text = f"{value:,.0f}" if unit == "runs/s" or value >= 100 else f"{value:.2f}"
    return text if ratio is None else f"{text} ({ratio:.2f}x)"


def table(
    rows: dict[str, Any], systems: tuple[str, ...], versions: dict[str, str], sizes: dict[str, int]
) -> str:
    cols = [s for s in ALL_SYSTEMS if s in systems]
    header = ["beside other queues", *(COLUMNS[s] for s in cols)]
    lines = []
    for row in rows.values():
        cells = [cell(row["systems"][s], row["unit"],
                      row["ratio"].get(s) if s != RQ else None, row["why"].get(s, ""))
                 for s in cols]  # fmt: skip
        if any(c != "-" for c in cells):
            lines.append([f"{row['label']} [{row['unit']}]", *cells])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        rest = (c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        return "  ".join([r[0].ljust(widths[0]), *rest])

    why = sorted({f"{COLUMNS[s]}: {r['why'][s]}" for r in rows.values() for s in cols
                  if r["why"].get(s, "-") != "-"})  # fmt: skip
    notes = [
        "(x) = against RQ in the same run. "
        + "; ".join(f"{COLUMNS[s]} {versions[s]}" for s in cols if s in versions),
        "Every system: one worker process started for the drain (start-up included) and "
        "stopped once it has run them all. Huey: RedisHuey(notify_result=True), a thread "
        "consumer (1 thread; 50 for the I/O row). SAQ: its Redis queue, Worker(concurrency=10, "
        "its default; 500 for the I/O row), results awaited through Job.refresh. arq: "
        "Worker(max_jobs=10, its default; 500 for the I/O row) with poll_delay 0.01 s (its "
        "default 0.5 s caps a drain at a few hundred jobs a second), results polled every "
        "5 ms. sessionq and RQ as in the table above.",
        "Redis CPU: INFO cpu (used_cpu_sys + used_cpu_user of the server) before and after "
        "the measuring process, divided by its runs. The drain row queues the runs first the "
        "way that system's drain does: sessionq one add_runs call, RQ enqueue_many, Huey, SAQ "
        "and arq one enqueue per run (they have no batch enqueue).",
        "Floor (bench.sqfield sq_create_floor): one FCALL per create of a tiny function that "
        "makes the Redis calls of a sessionq create of one run (its session's record, "
        "indexes, hash, task name, job hash, events kept and published, the queue, depth, "
        "wake list and counters) and nothing else: what a create that writes what SPEC asks "
        "of it cannot go below; Huey's enqueue is one LPUSH.",
        "I/O drains: sessionq `bench.measure sq_io_drain` (one burst worker process, "
        "--max-jobs N). Fair share: one "
        "sessionq worker running; a session of {fair_big:,} no-op runs added, then one of "
        "{fair_small}; the share of the big one that had succeeded when the small one had "
        "(its counts read every 10 ms).".format(**sizes),
        *why,
    ]
    wrap = textwrap.TextWrapper(width=100, subsequent_indent="  ")
    out = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in lines), ""]
    return "\n".join(out + [wrap.fill(n) for n in notes])


def versions(systems: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for s in systems:
        if s in FOREIGN:
            package = "huey" if s == "huey" else s
            out[s] = venvs.pins(s).get(package, "?") + f" (redis-py {venvs.pins(s).get('redis')})"
    return out
