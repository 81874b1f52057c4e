"""Soak: `python -m bench.soak [--runs 100000] [--workers 4] [--kills K] [--seed S] [--fault F]`.

Starts a throwaway redis-server, queues N runs of `bench.tasks:soak` (most no-ops, a few
slower) in sessions of up to 1,000 - or with --trickle adds them one at a time while they
drain, so that most are handed to workers waiting idle - and drains them with `sessionq
worker` processes while killing workers with SIGKILL at random points of the drain:
sometimes one worker process (its supervisor gives its runs back at once and starts a new
one), sometimes a whole `sessionq worker` with its supervisor, like a lost host (another
worker's reaper gives its runs back after the heartbeat TTL; a new one is started in its
place).

With --fault failover|freeze|oom it causes a Redis fault instead, --faults times through
the drain (bench.faults): the master SIGKILLed with a lagging replica under three sentinels
(--wait-replicas 0,1: one soak each, side by side), the server SIGSTOPped past the heartbeat
TTL, or maxmemory below the memory in use; figures go to a JSON file too (--json).

Every run writes its id to a ledger file as it begins. At the end the ledgers are set against
what sessionq recorded - each run's final state, its task.started, task.retrying and
terminal events - and every run must have finished exactly once, and every time it began more
than once must be accounted for by a recorded retry (a worker died under it). Prints a summary
and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
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
from typing import Any, cast

from redis import Redis

from bench import faults as faults_mod
from bench.measure import ROOT, child_env
from sessionq.common import codec
from sessionq.common.connection import sync_reply
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
    env: dict[str, str] = field(default_factory=dict)  # SESSIONQ_* knobs for the workers
    logs: Path | None = None  # a folder: each `sessionq worker`'s stderr goes to a file there
    groups: list[subprocess.Popen[bytes]] = field(default_factory=list)
    concurrency: dict[int, int] = field(default_factory=dict)  # supervisor pid -> processes
    killed_processes: int = 0
    killed_workers: int = 0

    def start(self, concurrency: int) -> None:
        cmd = [sys.executable, "-m", "sessionq", "--url", self.settings.url, "--prefix",
               self.settings.prefix, "--user", self.settings.user, "--log-level", "WARNING",
               "worker", "--import", self.imports, "--concurrency", str(concurrency)]  # fmt: skip
        env = {**child_env(), **self.env}
        err = None
        if self.logs is not None:
            err = (self.logs / f"worker-{len(self.groups)}.log").open("ab")
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stderr=err)
        finally:
            if err is not None:
                err.close()
        self.groups.append(proc)
        self.concurrency[proc.pid] = concurrency

    def dead_threads(self) -> list[str]:
        """The threads that died in our worker processes, as their stderr says."""
        lines = []
        for log in sorted(self.logs.glob("worker-*.log")) if self.logs else []:
            lines += [line.strip() for line in log.read_text(errors="replace").splitlines()
                      if line.startswith("Exception in thread")]  # fmt: skip
        return lines

    def warnings(self, limit: int = 12) -> list[str]:
        """The last WARNING and ERROR lines our workers logged (their stderr)."""
        lines = []
        for log in sorted(self.logs.glob("worker-*.log")) if self.logs else []:
            lines += [line.strip() for line in log.read_text(errors="replace").splitlines()
                      if " WARNING " in line or " ERROR " in line]  # fmt: skip
        return lines[-limit:]

    def silent(self, redis: Redis, pids: set[int], ttl_s: float) -> list[str]:
        """Our live worker processes whose heartbeat is older than `ttl_s` by Redis's clock,
        or that are not listed at all: alive, but no longer watched (half-alive)."""
        now_s, now_us = sync_reply(redis.time())
        now_ms = now_s * 1000 + now_us // 1000
        listed: Any = redis.zrange(Keys(self.settings.prefix).workers(), 0, -1, withscores=True)
        beats = {int(codec.text(name).rsplit(".", 1)[1]): float(score)
                 for name, score in listed}  # fmt: skip
        return [f"worker process {pid}: " + ("not listed" if pid not in beats else
                f"last heartbeat {(now_ms - beats[pid]) / 1000:.1f}s ago")
                for pid in sorted(pids)
                if pid not in beats or now_ms - beats[pid] > ttl_s * 1000]  # fmt: skip

    def live_groups(self) -> list[subprocess.Popen[bytes]]:
        return [g for g in self.groups if g.poll() is None]

    def worker_processes(self, redis: Redis) -> list[int]:
        """Pids of the worker processes under our supervisors (never anyone else's)."""
        ours = {g.pid for g in self.live_groups()}
        pids = []
        for name in cast("list[bytes]", redis.zrange(Keys(self.settings.prefix).workers(), 0, -1)):
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
    from sessionq.common.jobhash import build_run

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


def run_counts(redis: Redis, keys: Keys) -> dict[str, int]:
    raw = sync_reply(redis.hgetall(keys.run_counts()))
    return {codec.text(k): int(v) for k, v in raw.items()}


def ended(redis: Redis, keys: Keys) -> int:
    counts = run_counts(redis, keys)
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
    for key in sync_reply(redis.keys(keys.worker_runs("*"))):
        if redis.llen(key):
            out.append(f"{codec.text(key)} still holds {redis.llen(key)} run(s)")
    return out


def knobs_for(args: argparse.Namespace, wait_replicas: int) -> dict[str, Any]:
    """The workers' and producer's settings for a fault mode."""
    if args.fault == "none":
        return dict(KNOBS)
    # the default heartbeats (a failover, a freeze or an OOM spell outlasts quick ones), with
    # the freeze's reaper looking every 0.3 s, as issue 17 found live workers taken for lost
    knobs = {"heartbeat_interval_s": 1.0, "heartbeat_ttl_s": 10.0, "stop_grace_s": 2.0,
             "reap_interval_s": 0.3 if args.fault == "freeze" else 1.0}  # fmt: skip
    if args.fault == "failover":
        knobs |= {"wait_replicas": wait_replicas, "wait_timeout_s": args.wait_timeout_s}
    return knobs


def fault_seconds(args: argparse.Namespace) -> float:
    if args.fault_s is not None:
        return float(args.fault_s)
    return {"failover": 1.0, "freeze": 12.0, "oom": 8.0}.get(args.fault, 0.0)


def soak(args: argparse.Namespace, wait_replicas: int = 0) -> tuple[dict[str, Any], list[str]]:
    """One soak: its figures and its violations (failover without WAIT: its losses are
    figures, not violations)."""
    from sessionq.producer import Client

    rng = random.Random(args.seed)
    fault = args.fault
    default_kills = 0 if fault != "none" else max(4, args.runs // 2_000)
    kills = args.kills if args.kills is not None else default_kills
    kill_at = sorted(int(rng.uniform(0.05, 0.95) * args.runs) for _ in range(kills))
    faults = args.faults if fault != "none" else 0
    fault_at = [int(args.runs * (i + 1) / (faults + 1)) for i in range(faults)]
    seconds = fault_seconds(args)
    history_cap = max(5_000, 5 * min(args.runs, SESSION_RUNS) + 1_000)
    knobs = knobs_for(args, wait_replicas)
    topology: faults_mod.Single | faults_mod.Sentinels = (
        faults_mod.Sentinels.start() if fault == "failover"
        else faults_mod.Single(RedisServer().start())
    )  # fmt: skip
    streaming = fault == "failover"  # runs added while they drain and the master dies
    fault_log: list[dict[str, Any]] = []
    try:
        tmp = tempfile.TemporaryDirectory(prefix="sessionq-soak-")
        settings = Settings.from_env(topology.url, environ={}, user="soak",
                                     history_cap=history_cap, **knobs)  # fmt: skip
        env = {f"SESSIONQ_{name.upper()}": str(value) for name, value in knobs.items()}
        env["SESSIONQ_HISTORY_CAP"] = str(history_cap)
        client = Client(settings=settings)
        keys, redis = Keys(settings.prefix), client.redis
        ledgers = Path(tmp.name)
        sids, specs, slow_count = plan(client, args.runs, args.slow_share, args.slow_s,
                                       ledgers, rng)  # fmt: skip
        queue = client.scripts.rq.queue("default")
        pending = trickled(sids, specs) if args.trickle and not streaming else iter(())
        listener = faults_mod.ListenerLog(Client(settings=settings), sids) if streaming else None
        stream = None
        if streaming:
            batches = [(sid, group[i : i + args.batch]) for sid, group in zip(sids, specs,
                       strict=True) for i in range(0, len(group), args.batch)]  # fmt: skip
            rng.shuffle(batches)
            stream = faults_mod.Stream(client, batches, keys.run_counts())
        elif not args.trickle:
            log(f"queueing {args.runs} runs on {topology.url}")
            for sid, group in zip(sids, specs, strict=True):
                client.add_runs(sid, group)
        fleet = Fleet(settings, env=env, logs=ledgers if args.fault != "none" else None)
        for start in range(0, args.workers, 2):
            fleet.start(min(2, args.workers - start))
        pids = faults_mod.PidWatch(lambda: {g.pid for g in fleet.live_groups()})
        how = ("added in batches while they drain" if streaming else
               "added one at a time as they drain" if args.trickle else "queued")  # fmt: skip
        log(f"draining ({how}) with {args.workers} worker processes, {kills} kills and "
            f"{faults} {fault} faults planned")  # fmt: skip
        if stream is not None:
            stream.start()
        started = time.monotonic()
        deadline = started + args.deadline
        done, total, progress, stalled = 0, args.runs, started, False
        try:
            while time.monotonic() < deadline:
                now_done = ended(redis, keys)
                if stream is not None:
                    total = sum(run_counts(redis, keys).values())
                    if stream.done.is_set() and now_done >= total:
                        done = now_done
                        break
                elif now_done >= args.runs:
                    done = now_done
                    break
                if now_done != done:
                    done, progress = now_done, time.monotonic()
                elif time.monotonic() - progress > args.stall_s:
                    stalled = True
                    break
                while kill_at and done >= kill_at[0]:
                    kill_at.pop(0)
                    log(f"{done} runs done: killed {fleet.kill_one(redis, rng)}")
                if fault_at and done >= fault_at[0]:
                    fault_at.pop(0)
                    fault_log.append(cause(topology, fault, seconds, client, sids, specs))
                    log(f"{done} runs done: {fault_log[-1]}")
                    progress = time.monotonic()
                    continue
                # trickling: a run at a time whenever none is queued - to a worker waiting
                # idle, when one is
                if args.trickle and not streaming and not redis.llen(queue):
                    if (run := next(pending, None)) is not None:
                        client.add_runs(run[0], [run[1]])
                    else:
                        time.sleep(POLL_S)
                else:
                    time.sleep(POLL_S / 50 if args.trickle else POLL_S)
            elapsed = time.monotonic() - started
        finally:
            if stream is not None:
                stream.stop.set()
            pids.stop.set()
            # every worker process still alive must heartbeat again once the faults are over
            ttl = float(knobs["heartbeat_ttl_s"])
            silent: list[str] = []
            if fault != "none":
                try:
                    faults_mod.wait_until(
                        lambda: not fleet.silent(redis, pids.children(), ttl),
                        "every live worker to heartbeat", timeout=2 * ttl,
                    )  # fmt: skip
                except RuntimeError:
                    silent = fleet.silent(redis, pids.children(), ttl)
            supervisors_died = sum(g.poll() is not None for g in fleet.groups) - (
                fleet.killed_workers
            )  # those we killed were waited for
            fleet.stop()
        facts = collect(client, sids, ledgers)
        histories = {sid: client.history_after(sid, 0) for sid in sids} if listener else {}
        violations, figures = judge(args, facts, stream, listener, histories, wait_replicas)
        if stalled:
            violations.insert(0, f"no run ended for {args.stall_s:g}s: {done} of {total} ended")
        elif done < total:
            violations.insert(0, f"only {done} of {total} runs ended in {args.deadline:g}s")
        if stream is None and len(facts) != args.runs:
            violations.append(f"{len(facts)} runs seen, {args.runs} queued")
        violations += leftovers(redis, keys, queue)
        # every pid past the processes each supervisor started with and those that replaced
        # the ones we killed: a worker process its supervisor had to replace
        restarts = max(len(pids.seen) - sum(fleet.concurrency.values())
                       - fleet.killed_processes, 0)  # fmt: skip
        dead_threads, worker_log = fleet.dead_threads(), fleet.warnings()
        violations += [f"half-alive: {line}" for line in silent]
        violations += [f"a worker thread died: {line}" for line in dead_threads]
        if supervisors_died > 0:
            violations.append(f"{supervisors_died} `sessionq worker` supervisor(s) exited")
        if fault == "oom" and restarts > 2 * args.workers * max(faults, 1):
            violations.append(f"worker processes crash-looped: {restarts} restarts")
        client.close()
    finally:
        topology.close()
    began = Counter(min(f.began, 3) for f in facts.values())
    figures |= {
        "fault": fault, "seed": args.seed, "runs": args.runs, "runs_seen": len(facts),
        "slow": slow_count, "sessions": len(sids), "workers": args.workers,
        "wait_replicas": wait_replicas if fault == "failover" else None,
        "faults": fault_log, "killed_processes": fleet.killed_processes,
        "killed_workers": fleet.killed_workers, "worker_restarts": restarts,
        "worker_threads_died": len(dead_threads), "half_alive_workers": len(silent),
        "worker_log": worker_log,
        "drain_s": round(elapsed, 2), "runs_per_s": round(done / max(elapsed, 1e-9), 1),
        "began_once": began[1], "began_twice": began[2], "began_3_plus": began[3],
        "never_began": began[0],
        "retries": sum(f.retried for f in facts.values()),
        "given_back_unrun": sum(f.requeued for f in facts.values()),
        "failed": sum(f.state == "failed" for f in facts.values()),
        "handed": sum(f.handed for f in facts.values()),
        "succeeded_once": sum(f.succeeded == 1 for f in facts.values()),
        "violations": len(violations),
    }  # fmt: skip
    return figures, violations


def cause(topology: Any, fault: str, seconds: float, client: Any, sids: list[str],
          specs: list[list[Any]]) -> dict[str, Any]:  # fmt: skip
    """Cause one fault; what it was, in figures."""
    if fault == "failover":
        return dict(topology.fail_over(seconds))
    if fault == "freeze":
        return dict(topology.freeze(seconds))
    # an add while Redis is full: it is refused with one clear error, and not counted
    return dict(topology.oom(seconds, lambda: client.open_session("soak-oom-probe")))


def judge(
    args: argparse.Namespace,
    facts: dict[str, RunFacts],
    stream: faults_mod.Stream | None,
    listener: faults_mod.ListenerLog | None,
    histories: dict[str, list[dict[str, Any]]],
    wait_replicas: int,
) -> tuple[list[str], dict[str, Any]]:
    """The violations of a soak and the figures of what it found."""
    strict = args.fault in ("freeze", "oom") and not args.kills
    if stream is None:
        violations = audit(facts, RETRIES)
        if strict:  # nothing died: nothing may begin twice, no retry may be recorded
            violations += [f"{run_id}: began {f.began} times although no worker died"
                           for run_id, f in sorted(facts.items()) if f.began > 1]  # fmt: skip
            violations += [f"{run_id}: {f.retried} retries recorded although no worker died"
                           for run_id, f in sorted(facts.items()) if f.retried]  # fmt: skip
        return violations, {}
    # failover: runs acknowledged to the producer must all be there; runs an unacknowledged
    # add wrote are audited like the rest when they exist, and forgotten when they do not
    lost = sorted(r for r in stream.acked if r not in facts or facts[r].state is None)
    audited = {r: f for r, f in facts.items() if r in stream.acked or f.state is not None}
    found = audit(audited, RETRIES)
    twice = {v.split(":")[0] for v in found if " began " in v}  # runs, not lines
    lines = [f"{r}: acknowledged to the producer, gone" for r in lost]
    lines += [f"{r}: acknowledged to the producer {n} times" for r, n in stream.acked.items()
              if n > 1]  # fmt: skip
    lines += found
    heard = faults_mod.listener_figures(listener.events if listener else [], histories)
    if heard["diverged_silently"]:
        lines.append(f"the listener yielded {heard['diverged_silently']} events the history "
                     "does not hold, with no listener.gap for them")  # fmt: skip
    if listener and listener.error:
        lines.append(f"the listener died: {listener.error}")
    figures: dict[str, Any] = {"producer": stream.figures(), "listener": heard,
               "lost": {"acknowledged_runs_gone": len(lost),
                        "began_again_without_a_recorded_retry": len(twice),
                        "listener_events_diverged_silently": heard["diverged_silently"],
                        "ids_acknowledged_twice": stream.figures()["acknowledged_twice"],
                        "other": len({v.split(":")[0] for v in found} - twice)}}  # fmt: skip
    if not wait_replicas:  # no promise without WAIT: what it cost is a figure
        figures["unpromised"] = lines[:20]
        return [], figures
    return lines, figures


def report(figures: dict[str, Any], violations: list[str]) -> None:
    f = figures
    print(f"soak: {f['runs']} runs ({f['slow']} slow) in {f['sessions']} sessions, "
          f"{f['workers']} worker processes, fault {f['fault']}, seed {f['seed']}"
          + (f", SESSIONQ_WAIT_REPLICAS={f['wait_replicas']}" if f["fault"] == "failover"
             else ""))  # fmt: skip
    print(f"  killed: {f['killed_processes']} worker processes and {f['killed_workers']} "
          f"whole workers (SIGKILL)")  # fmt: skip
    for one in f["faults"]:
        print(f"  fault: {one}")
    if f["fault"] != "none":
        print(f"  worker processes restarted by their supervisors: {f['worker_restarts']}, "
              f"worker threads that died: {f['worker_threads_died']}, live worker processes "
              f"no longer heartbeating: {f['half_alive_workers']}")  # fmt: skip
    print(f"  drained in {f['drain_s']:.1f}s ({f['runs_per_s']:,.0f} runs/s)")
    print(f"  runs that began once: {f['began_once']}, twice: {f['began_twice']}, 3+ times: "
          f"{f['began_3_plus']}, never: {f['never_began']}")  # fmt: skip
    print(f"  recorded: {f['retries']} retries (a worker died under the run), "
          f"{f['given_back_unrun']} runs given back unrun, {f['failed']} failed")  # fmt: skip
    print(f"  started by the call that added them (handed to a waiting worker): {f['handed']}")
    print(f"  succeeded exactly once: {f['succeeded_once']}")
    if "producer" in f:
        print(f"  producer: {f['producer']}")
        print(f"  listener: {f['listener']}")
        print(f"  lost: {f['lost']}")
        for line in f.get("unpromised", []):
            print(f"  LOST (no SESSIONQ_WAIT_REPLICAS) {line}")
    for line in f["worker_log"] if violations else []:
        print(f"  worker log: {line}")
    for line in violations[:20]:
        print(f"  VIOLATION {line}")
    if len(violations) > 20:
        print(f"  ... and {len(violations) - 20} more")
    print("FAILED" if violations else "OK: every run finished exactly once; every extra "
          "beginning is a recorded retry")  # fmt: skip


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
    p.add_argument("--fault", choices=["none", "failover", "freeze", "oom"], default="none",
                   help="a Redis fault caused --faults times mid-drain (see bench.faults): "
                        "the master SIGKILLed with a lagging replica under 3 sentinels, the "
                        "server SIGSTOPped, or maxmemory set below the memory in use")  # fmt: skip
    p.add_argument("--faults", type=int, default=3, help="faults caused (default 3)")
    p.add_argument("--fault-s", type=float, default=None,
                   help="seconds a fault lasts: the replica's lag before the master dies "
                        "(default 1), the freeze (12), the OOM spell (8)")  # fmt: skip
    p.add_argument("--wait-replicas", default="1",
                   help="failover: SESSIONQ_WAIT_REPLICAS, or a list (0,1) for one soak "
                        "each, side by side (default 1)")  # fmt: skip
    p.add_argument(
        "--wait-timeout-s",
        type=float,
        default=1.0,
        help="failover: SESSIONQ_WAIT_TIMEOUT_S (default 1)",
    )
    p.add_argument("--batch", type=int, default=10, help="failover: runs per producer call")
    p.add_argument(
        "--stall-s",
        type=float,
        default=120,
        help="give up once no run has ended for this long (default 120)",
    )
    p.add_argument("--json", default=None,
                   help="write the figures here (default: sessionq-soak-FAULT-SEED.json in "
                        "the temp dir)")  # fmt: skip
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        p.error("--runs and --workers must be at least 1")
    if args.faults < 0 or args.batch < 1:
        p.error("--faults must be at least 0 and --batch at least 1")
    try:
        args.wait_list = [int(n) for n in str(args.wait_replicas).split(",")]
    except ValueError:
        p.error(f"--wait-replicas: expected numbers like 0,1, got {args.wait_replicas!r}")
    if args.fault != "failover":
        args.wait_list = [0]
    if args.seed is None:
        args.seed = random.randrange(2**31)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for wait_replicas in args.wait_list:
        figures, violations = soak(args, wait_replicas)
        report(figures, violations)
        results.append(figures)
    if len(results) > 1:
        print("side by side (SESSIONQ_WAIT_REPLICAS: drain runs/s, producer add p50/p99 ms, "
              "acknowledged runs gone, began again without a retry):")  # fmt: skip
        for f in results:
            lost = f["lost"]
            print(f"  {f['wait_replicas']}: {f['runs_per_s']:,.0f} runs/s, "
                  f"{f['producer']['add_p50_ms']}/{f['producer']['add_p99_ms']} ms, "
                  f"{lost['acknowledged_runs_gone']} gone, "
                  f"{lost['began_again_without_a_recorded_retry']} run twice")  # fmt: skip
    path = Path(args.json or Path(tempfile.gettempdir()) /
                f"sessionq-soak-{args.fault}-{args.seed}.json")  # fmt: skip
    path.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
    print(f"figures: {path}")
    return 1 if any(f["violations"] for f in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
