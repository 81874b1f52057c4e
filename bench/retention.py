"""Retention soak: `python -m bench.retention [--minutes 10] [--retention 30] [--rate 40]`.

Starts a throwaway redis-server and `sessionq worker` processes, then creates sessions with
`create()` - one `bench.tasks:chatty` run each (a log line, a progress event, a result) - at a
steady rate for N minutes, with SESSIONQ_RETENTION_S short, while the workers finish them and,
their retention over, remove them (SPEC §9 Retention). Redis's `INFO memory` used_memory is
sampled every few seconds, printed, and written with the rest as JSON (default
bench/results/retention-<UTC>.json).

Past the first retention period and the half minute a removal may take, memory must stay
flat: exit 1 if the median of the last quarter of that window is above the median of its
first quarter by more than the tolerance, or if a due session waited more than half a minute
to be removed. After the last session it waits for the last removals and reports the memory
left (the empty deployment's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

from bench.soak import Fleet
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status

TASK = "bench.tasks:chatty"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REMOVAL_WITHIN_S = 30.0  # SPEC §9: removed within half a minute of its retention
BATCH_MAX = 50  # sessions per create() call (replicas)
BACKLOG_S = 10.0  # sessions not yet ended, in seconds of creation: more and creating waits
TICK_S = 0.05
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the first creation
    used_memory: int  # bytes (INFO memory)
    sessions: int  # in the session index
    live: int  # Pending or Running
    due: int  # ended, waiting for their retention to pass
    created: int  # so far
    lag_s: float  # how long the most overdue session has been due (0: none overdue)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sample(redis: Redis, keys: Keys, t: float, created: int) -> Sample:
    pipe = redis.pipeline(transaction=False)
    pipe.info("memory")
    pipe.hlen(keys.sessions())
    pipe.scard(keys.idx_status(Status.PENDING.value))
    pipe.scard(keys.idx_status(Status.RUNNING.value))
    pipe.zcard(keys.retention())
    pipe.zrange(keys.retention(), 0, 0, withscores=True)
    pipe.time()
    memory, sessions, pending, running, due, first, now = pipe.execute()
    now_ms = now[0] * 1000 + now[1] // 1000
    lag_s = max(0.0, (now_ms - first[0][1]) / 1000) if first else 0.0
    return Sample(t=round(t, 2), used_memory=int(memory["used_memory"]), sessions=int(sessions),
                  live=int(pending) + int(running), due=int(due), created=created,
                  lag_s=round(lag_s, 2))  # fmt: skip


def live(redis: Redis, keys: Keys) -> int:
    """Sessions not yet ended (Pending or Running)."""
    pipe = redis.pipeline(transaction=False)
    pipe.scard(keys.idx_status(Status.PENDING.value))
    pipe.scard(keys.idx_status(Status.RUNNING.value))
    return sum(int(n) for n in pipe.execute())


def judge(samples: list[Sample], args: argparse.Namespace) -> dict[str, Any]:
    """Flat or not: the window past the first retention period and the removal allowance."""
    start = args.retention + args.settle_s
    window = [s for s in samples if start <= s.t <= args.minutes * 60]
    quarter = max(1, len(window) // 4)
    first = statistics.median(s.used_memory for s in window[:quarter])
    last = statistics.median(s.used_memory for s in window[-quarter:])
    tolerance = max(first * args.tolerance_pct / 100, args.tolerance_mb * MB)
    lag = max((s.lag_s for s in samples), default=0.0)
    problems = []
    if last - first > tolerance:
        problems.append(f"used_memory grew {(last - first) / MB:.2f} MB over the window "
                        f"(tolerance {tolerance / MB:.2f} MB)")  # fmt: skip
    if lag > REMOVAL_WITHIN_S:
        problems.append(f"a due session waited {lag:.1f}s for its removal "
                        f"(more than {REMOVAL_WITHIN_S:g}s)")  # fmt: skip
    return {"window_from_s": start, "window_samples": len(window), "first_quarter_median":
            first, "last_quarter_median": last, "growth": last - first, "tolerance": tolerance,
            "max_lag_s": lag, "peak": max(s.used_memory for s in window),
            "low": min(s.used_memory for s in window), "problems": problems}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from sessionq.producer import Client

    with RedisServer() as server:
        settings = Settings.from_env(server.url, environ={}, user="retention",
                                     retention_s=args.retention)  # fmt: skip
        client = Client(settings=settings)
        redis, keys = client.redis, Keys(settings.prefix)
        baseline = int(redis.info("memory")["used_memory"])
        fleet = Fleet(settings)
        for at in range(0, args.workers, 2):
            fleet.start(min(2, args.workers - at))
        log(f"{args.workers} worker processes on {server.url}; creating {args.rate:g} "
            f"sessions/s for {args.minutes:g} min, retention {args.retention:g}s")  # fmt: skip
        samples: list[Sample] = []
        created = waited = 0
        t0 = time.monotonic()
        next_sample = 0.0
        try:
            while (t := time.monotonic() - t0) < args.minutes * 60:
                if t >= next_sample:
                    samples.append(s := sample(redis, keys, t, created))
                    next_sample += args.sample_s
                    log(f"t={s.t:6.0f}s used_memory {s.used_memory / MB:7.2f} MB  "
                        f"sessions {s.sessions:6d} (live {s.live}, due {s.due})  "
                        f"created {created}")  # fmt: skip
                behind = int(args.rate * t) - created
                if behind <= 0:
                    time.sleep(TICK_S)
                    continue
                if live(redis, keys) > args.rate * BACKLOG_S:
                    waited += 1  # the workers are behind: let them catch up
                    time.sleep(TICK_S)
                    continue
                n = min(behind, BATCH_MAX)
                client.create(f"r{created}", task=TASK, args=[created], replicas=n)
                created += n
            log(f"created {created}; waiting for the last removals")
            last = time.monotonic() + args.retention + args.settle_s + 10
            while time.monotonic() < last and redis.hlen(keys.sessions()):
                time.sleep(args.sample_s / 5)
            end = sample(redis, keys, time.monotonic() - t0, created)
        finally:
            fleet.stop()
            client.close()
    verdict = judge(samples, args)
    per_session = _bytes_per_session(samples, end, args)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "baseline_used_memory": baseline,
        "created": created,
        "achieved_rate": round(created / (args.minutes * 60), 2),
        "creations_held_back_for_workers": waited,
        "bytes_per_kept_session": per_session,
        "without_retention_estimate": end.used_memory + per_session * created,
        "samples": [asdict(s) for s in samples],
        "end": asdict(end),
        "verdict": verdict,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.json) if args.json else RESULTS_DIR / f"retention-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _print(report, args, out)
    return 1 if verdict["problems"] else 0


def _bytes_per_session(samples: list[Sample], end: Sample, args: argparse.Namespace) -> int:
    """What one kept session holds: over the judged window, the memory above what the empty
    deployment (the end: workers, scripts, connections, no session) holds, per session kept."""
    window = [s for s in samples if s.t >= args.retention + args.settle_s and s.sessions]
    if not window:
        return 0
    memory = statistics.median(s.used_memory for s in window)
    kept = statistics.median(s.sessions for s in window)
    return max(0, int((memory - end.used_memory) / kept))


def _print(report: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    v, end = report["verdict"], report["end"]
    print(f"retention soak: {report['created']} sessions created in {args.minutes:g} min "
          f"({report['achieved_rate']:g}/s, one {TASK} run each), retention "
          f"{args.retention:g}s, {args.workers} worker processes")  # fmt: skip
    print("  t (s)   used_memory (MB)   sessions kept")
    for s in report["samples"]:
        print(f"  {s['t']:6.0f}  {s['used_memory'] / MB:10.2f}  {s['sessions']:14d}")
    print(f"  empty Redis: {report['baseline_used_memory'] / MB:.2f} MB; one kept session "
          f"~{report['bytes_per_kept_session']:,} B; without retention it would have reached "
          f"~{report['without_retention_estimate'] / MB:.1f} MB")  # fmt: skip
    print(f"  from t={v['window_from_s']:g}s ({v['window_samples']} samples): first quarter "
          f"{v['first_quarter_median'] / MB:.2f} MB, last quarter "
          f"{v['last_quarter_median'] / MB:.2f} MB (growth {v['growth'] / MB:+.2f} MB, "
          f"tolerance {v['tolerance'] / MB:.2f} MB); range {v['low'] / MB:.2f}-"
          f"{v['peak'] / MB:.2f} MB")  # fmt: skip
    print(f"  longest a due session waited for its removal: {v['max_lag_s']:.1f}s")
    print(f"  after the last session: {end['sessions']} kept, used_memory "
          f"{end['used_memory'] / MB:.2f} MB")  # fmt: skip
    print(f"  written to {out}")
    for problem in v["problems"]:
        print(f"  PROBLEM {problem}")
    print("FAILED" if v["problems"] else "OK: used_memory flat past the first retention period")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.retention",
                                description=(__doc__ or "").split("\n")[0])  # fmt: skip
    p.add_argument("--minutes", type=float, default=10.0, help="how long to create sessions")
    p.add_argument("--retention", type=float, default=30.0, help="SESSIONQ_RETENTION_S")
    p.add_argument("--rate", type=float, default=40.0, help="sessions created per second")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--settle-s", type=float, default=REMOVAL_WITHIN_S,
                   help="after the first retention period, seconds before judging")  # fmt: skip
    p.add_argument("--tolerance-pct", type=float, default=10.0, help="growth allowed, percent")
    p.add_argument("--tolerance-mb", type=float, default=1.0, help="growth allowed, MB (at least)")
    p.add_argument("--json", default=None, help="where to write the figures")
    args = p.parse_args(argv)
    if min(args.minutes, args.retention, args.rate, args.sample_s) <= 0 or args.workers < 1:
        p.error("--minutes, --retention, --rate, --sample-s and --workers must be positive")
    if args.minutes * 60 < args.retention + args.settle_s + 4 * args.sample_s:
        p.error("too short to judge: --minutes must leave at least 4 samples past "
                "--retention + --settle-s")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
