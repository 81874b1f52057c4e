"""Soak: `python -m bench.soak [--runs 100000] [--workers 4] [--kills K] [--seed S]`.

Starts a throwaway redis-server, queues N runs of `bench.tasks:soak` (most no-ops, a few
slower) in sessions of up to 1,000 - or with --trickle adds them one at a time while they
drain, so that most are handed to workers waiting idle - and drains them with `sessionq
worker` processes while killing workers with SIGKILL at random points of the drain:
sometimes one worker process (its supervisor gives its runs back at once and starts a new
one), sometimes a whole `sessionq worker` with its supervisor, like a lost host (another
worker's reaper gives its runs back after the heartbeat TTL; a new one is started in its
place).

Every run writes its id to a ledger file as it begins. At the end the ledgers are set against
what sessionq recorded - each run's final state, its task.started, task.retrying and
terminal events - and every run must have finished exactly once, and every time it began more
than once must be accounted for by a recorded retry (a worker died under it). Prints a summary
and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from bench.measure import ROOT, child_env
from sessionq.common import codec
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings

TASK = "bench.tasks:soak"
SESSION_RUNS = 1_000  # runs per session
RETRIES = 10  # per run: far more than random kills will take from one run
KNOBS: dict[str, Any] = {  # quick loss detection, as a deployment tuned for it would have
    "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 3.0,
    "reap_interval_s": 1.0,
    "stop_grace_s": 2.0,
}
ENV_KNOBS = {f"SESSIONQ_{name.upper()}": str(value) for name, value in KNOBS.items()}
POLL_S = 0.05
WHOLE_WORKER_SHARE = 0.3  # of kills: a whole `sessionq worker` (a lost host)


# -- the audit: pure, so that it can be tested on its own ----------------------------------------
@dataclass
class RunFacts:
    """What sessionq recorded about one run, and how often the ledgers say it began."""

    state: str | None = None
    started: int = 0  # task.started events
    retried: int = 0  # task.retrying events
    requeued: int = 0  # task.queued events after the first (given back unrun)
    succeeded: int = 0  # task.succeeded events
    failed: int = 0  # task.failed events
    error: str = ""
    began: int = 0  # ledger lines
    handed: bool = False  # first started by the call that added it (a waiting worker's)


def audit(facts: dict[str, RunFacts], retries: int) -> list[str]:
    """Every violation of "finished exactly once, or accounted for by a recorded retry"."""
    out = []
    for run_id, f in sorted(facts.items()):
        if f.state not in ("succeeded", "failed"):
            out.append(f"{run_id}: did not finish (state {f.state})")
            continue
        if f.succeeded + f.failed != 1:
            out.append(f"{run_id}: finished {f.succeeded + f.failed} times")
        if f.state == "succeeded" and f.began < 1:
            out.append(f"{run_id}: succeeded but never began")
        if f.began > f.started:
            out.append(f"{run_id}: began {f.began} times but was started {f.started} times")
        if f.began > 1 + f.retried:
            out.append(f"{run_id}: began {f.began} times with {f.retried} recorded retries")
        if f.state == "failed" and not (f.retried >= retries and "worker" in f.error):
            out.append(f"{run_id}: failed without running out of retries: {f.error!r}")
    return out


# -- the workers, and killing them ---------------------------------------------------------------
@dataclass
class Fleet:
    """`sessionq worker` processes (each a supervisor and its worker processes), all ours."""

    settings: Settings
    imports: str = "bench.tasks"
    groups: list[subprocess.Popen[bytes]] = field(default_factory=list)
    concurrency: dict[int, int] = field(default_factory=dict)  # supervisor pid -> processes
    killed_processes: int = 0
    killed_workers: int = 0

    def start(self, concurrency: int) -> None:
        cmd = [sys.executable, "-m", "sessionq", "--url", self.settings.url, "--prefix",
               self.settings.prefix, "--user", self.settings.user, "--log-level", "WARNING",
               "worker", "--import", self.imports, "--concurrency", str(concurrency)]  # fmt: skip
        env = {**child_env(), **ENV_KNOBS}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        self.groups.append(proc)
        self.concurrency[proc.pid] = concurrency

    def live_groups(self) -> list[subprocess.Popen[bytes]]:
        return [g for g in self.groups if g.poll() is None]

    def worker_processes(self, redis: Redis) -> list[int]:
        """Pids of the worker processes under our supervisors (never anyone else's)."""
        ours = {g.pid for g in self.live_groups()}
        pids = []
        for name in redis.zrange(Keys(self.settings.prefix).workers(), 0, -1):
            pid = int(codec.text(name).rsplit(".", 1)[1])
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in ours:
                pids.append(pid)
        return pids

    def kill_one(self, redis: Redis, rng: random.Random) -> str:
        """SIGKILL one worker process, or now and then a whole worker (and start another)."""
        pids = self.worker_processes(redis)
        if pids and rng.random() >= WHOLE_WORKER_SHARE:
            pid = rng.choice(pids)
            os.kill(pid, signal.SIGKILL)
            self.killed_processes += 1
            return f"worker process {pid}"
        victim = rng.choice(self.live_groups())
        concurrency = self.concurrency[victim.pid]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        self.killed_workers += 1
        self.start(concurrency)
        return f"whole worker {victim.pid}"

    def stop(self) -> None:
        for group in self.live_groups():
            group.send_signal(signal.SIGTERM)
        for group in self.groups:
            try:
                group.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(group.pid, signal.SIGKILL)
                group.wait()


# -- the soak --------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def plan(client: Any, runs: int, slow_share: float, slow_s: float, ledgers: Path,
         rng: random.Random) -> tuple[list[str], list[list[Any]], int]:  # fmt: skip
    """Open sessions of up to SESSION_RUNS runs and choose each run (most fast, some slow):
    the session ids, the runs of each, and how many are slow."""
    from sessionq.common.models import build_run

    fast = build_run(name="fast", task=TASK, args=[str(ledgers)], retries=RETRIES)
    slow = build_run(name="slow", task=TASK, args=[str(ledgers), slow_s], retries=RETRIES)
    sids, specs = [], []
    for start in range(0, runs, SESSION_RUNS):
        n = min(SESSION_RUNS, runs - start)
        specs.append([slow if rng.random() < slow_share else fast for _ in range(n)])
        sids.append(client.open_session(f"soak-{start // SESSION_RUNS}"))
    return sids, specs, sum(spec is slow for group in specs for spec in group)


def trickled(sids: list[str], specs: list[list[Any]]) -> Iterator[tuple[str, Any]]:
    """The runs one at a time, round the sessions."""
    for i in range(max(len(group) for group in specs)):
        for sid, group in zip(sids, specs, strict=True):
            if i < len(group):
                yield sid, group[i]


def ended(redis: Redis, keys: Keys) -> int:
    counts = {codec.text(k): int(v) for k, v in redis.hgetall(keys.run_counts()).items()}
    return sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled"))


def collect(client: Any, sids: list[str], ledgers: Path) -> dict[str, RunFacts]:
    """Every run's facts: its job's state and its events from sessionq, its ledger lines."""
    facts: dict[str, RunFacts] = {}
    added: dict[str, float] = {}  # run id -> ts of the call that added it
    for sid in sids:
        for event in client.history_after(sid, 0):
            run_id = event.get("task")
            if not run_id:
                continue
            f = facts.setdefault(run_id, RunFacts())
            kind = event["type"]
            if kind == "task.started":
                f.started += 1
                f.handed = f.handed or (f.started == 1 and event["ts"] == added.get(run_id))
            elif kind == "task.retrying":
                f.retried += 1
            elif kind == "task.queued" and event["data"].get("reason"):
                f.requeued += 1
            elif kind == "task.queued":
                added[run_id] = event["ts"]
            elif kind == "task.succeeded":
                f.succeeded += 1
            elif kind == "task.failed":
                f.failed += 1
                f.error = str(event["data"].get("error", ""))
    run_ids = sorted(facts)
    pipe = client.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(client.scripts.rq.job(run_id), "state")
    for run_id, state in zip(run_ids, pipe.execute(), strict=True):
        facts[run_id].state = codec.text(state) if state else None
    began: Counter[str] = Counter()
    for ledger in ledgers.glob("*.txt"):
        for line in ledger.read_text().splitlines():
            began[line.split()[0]] += 1
    for run_id, n in began.items():
        facts.setdefault(run_id, RunFacts()).began = n
    return facts


def leftovers(redis: Redis, keys: Keys, rq_queue: str) -> list[str]:
    """What must be empty once every run finished: the queue, every worker's runs list."""
    out = []
    if redis.llen(rq_queue):
        out.append(f"{redis.llen(rq_queue)} run id(s) still queued")
    for key in redis.keys(keys.worker_runs("*")):
        if redis.llen(key):
            out.append(f"{codec.text(key)} still holds {redis.llen(key)} run(s)")
    return out


def soak(args: argparse.Namespace) -> int:
    from sessionq.producer import Client

    rng = random.Random(args.seed)
    kills = args.kills if args.kills is not None else max(4, args.runs // 2_000)
    kill_at = sorted(int(rng.uniform(0.05, 0.95) * args.runs) for _ in range(kills))
    history_cap = max(5_000, 5 * min(args.runs, SESSION_RUNS) + 1_000)
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="sessionq-soak-") as tmp:
        settings = Settings.from_env(server.url, environ={}, user="soak",
                                     history_cap=history_cap, **KNOBS)  # fmt: skip
        ENV_KNOBS["SESSIONQ_HISTORY_CAP"] = str(history_cap)
        client = Client(settings=settings)
        keys, redis = Keys(settings.prefix), client.redis
        ledgers = Path(tmp)
        sids, specs, slow_count = plan(client, args.runs, args.slow_share, args.slow_s,
                                       ledgers, rng)  # fmt: skip
        pending = trickled(sids, specs) if args.trickle else iter(())
        if not args.trickle:
            log(f"queueing {args.runs} runs on {server.url}")
            for sid, group in zip(sids, specs, strict=True):
                client.add_runs(sid, group)
        fleet = Fleet(settings)
        for start in range(0, args.workers, 2):
            fleet.start(min(2, args.workers - start))
        how = "added one at a time as they drain" if args.trickle else "queued"
        log(f"draining ({how}) with {args.workers} worker processes, {kills} kills planned")
        started = time.monotonic()
        deadline = started + args.deadline
        queue = client.scripts.rq.queue("default")
        done = 0
        try:
            while (done := ended(redis, keys)) < args.runs and time.monotonic() < deadline:
                while kill_at and done >= kill_at[0]:
                    kill_at.pop(0)
                    log(f"{done} runs done: killed {fleet.kill_one(redis, rng)}")
                # trickling: a run at a time whenever none is queued - to a worker waiting
                # idle, when one is
                if args.trickle and not redis.llen(queue):
                    if (run := next(pending, None)) is not None:
                        client.add_runs(run[0], [run[1]])
                    else:
                        time.sleep(POLL_S)
                else:
                    time.sleep(POLL_S / 50 if args.trickle else POLL_S)
            elapsed = time.monotonic() - started
        finally:
            fleet.stop()
        facts = collect(client, sids, ledgers)
        violations = audit(facts, RETRIES)
        if done < args.runs:
            violations.insert(0, f"only {done} of {args.runs} runs ended in {args.deadline:g}s")
        if len(facts) != args.runs:
            violations.append(f"{len(facts)} runs seen, {args.runs} queued")
        violations += leftovers(redis, keys, queue)
        client.close()
    began = Counter(min(f.began, 3) for f in facts.values())
    print(f"soak: {args.runs} runs ({slow_count} slow, {args.slow_s:g}s) in {len(sids)} "
          f"sessions, {args.workers} worker processes, seed {args.seed}")  # fmt: skip
    print(f"  killed: {fleet.killed_processes} worker processes and {fleet.killed_workers} "
          f"whole workers (SIGKILL)")  # fmt: skip
    print(f"  drained in {elapsed:.1f}s ({done / max(elapsed, 1e-9):,.0f} runs/s)")
    print(f"  runs that began once: {began[1]}, twice: {began[2]}, 3+ times: {began[3]}, "
          f"never: {began[0]}")  # fmt: skip
    print(f"  recorded: {sum(f.retried for f in facts.values())} retries (a worker died under "
          f"the run), {sum(f.requeued for f in facts.values())} runs given back unrun, "
          f"{sum(f.state == 'failed' for f in facts.values())} failed")  # fmt: skip
    print(
        f"  started by the call that added them (handed to a waiting worker): "
        f"{sum(f.handed for f in facts.values())}"
    )
    print(f"  succeeded exactly once: {sum(f.succeeded == 1 for f in facts.values())}")
    for line in violations[:20]:
        print(f"  VIOLATION {line}")
    if len(violations) > 20:
        print(f"  ... and {len(violations) - 20} more")
    print("FAILED" if violations else "OK: every run finished exactly once; every extra "
          "beginning is a recorded retry")  # fmt: skip
    return 1 if violations else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=100_000, help="runs to push through")
    p.add_argument("--workers", type=int, default=4, help="worker processes")
    p.add_argument("--kills", type=int, default=None, help="kills (default: runs/2000, >= 4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--slow-share", type=float, default=0.02, help="share of slower runs")
    p.add_argument("--slow-s", type=float, default=0.2, help="seconds a slower run takes")
    p.add_argument("--deadline", type=float, default=3600, help="seconds before giving up")
    p.add_argument("--trickle", action="store_true",
                   help="add the runs one at a time while they drain (idle workers are handed "
                        "them) instead of queuing them all first")  # fmt: skip
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        p.error("--runs and --workers must be at least 1")
    if args.seed is None:
        args.seed = random.randrange(2**31)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return soak(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
