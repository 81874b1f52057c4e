"""One measurement per process: `python -m bench.measure NAME --url URL [options]`.

bench.compare runs each measurement in a fresh process and reads the one JSON line it prints
last: `{"figures": {name: number}, "detail": {...}}`. Names starting `sq_` use sessionq (whose
RQ lives under the key prefix "sq:rq"); names starting `rq_` use plain RQ under its default
prefix "rq"; `py_fanout` uses neither (the floor under `sq_events`). RQ reads its prefix once,
at import, so the two never share a process, and this module imports neither at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from pathlib import Path
from typing import Any, cast

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
USER = "bench"
SQ_TASK = "bench.tasks:noop"
READY_KEY = "bench:listeners-ready"  # outside sessionq's and RQ's prefixes
WORKER_START_TIMEOUT_S = 30.0
WAIT_S = 10  # longest wait for one round trip / one event
WARMUP = 20  # round trips made (and dropped) before measuring
Figures = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """The environment for processes we start: this tree importable, no RQ prefix inherited
    (each process picks its own: sessionq exports "sq:rq", plain RQ keeps "rq"), and bytecode
    cached as a deployment has it (PYTHONDONTWRITEBYTECODE, set in some shells, would have
    every process started compile this tree again; pip compiles the other systems' at
    install)."""
    dropped = ("RQ_KEY_PREFIX", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONPATH"] = str(ROOT)
    return env


def spawn(name: str, url: str, *extra: str, stdout: int | None = None) -> subprocess.Popen[str]:
    """Start `python -m bench.measure NAME` (a worker or the listeners) as a process."""
    cmd = [sys.executable, "-m", "bench.measure", name, "--url", url, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=stdout, text=True)


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM (a worker's polite stop), then SIGKILL if it does not end."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_exit(procs: Sequence[subprocess.Popen[str]], timeout: float = 600.0) -> None:
    """Wait for burst workers to exit; a failed one is an error."""
    for proc in procs:
        code = proc.wait(timeout=timeout)
        if code != 0:
            raise RuntimeError(f"worker process {proc.pid} exited with {code}")


def wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def timed_samples(n: int, once: Callable[[], None]) -> list[float]:
    """Seconds each of n calls of `once` took, after WARMUP calls that are not counted."""
    samples = []
    for i in range(WARMUP + n):
        started = time.perf_counter()
        once()
        if i >= WARMUP:
            samples.append(time.perf_counter() - started)
    return samples


def calls_per_s(n: int, once: Callable[[], Any], warm: int = 10) -> Figures:
    """n calls of `once`, one after another, after `warm` that are not timed (they connect
    and load what the first call loads): runs/s and seconds."""
    for _ in range(warm):
        once()
    started = time.perf_counter()
    for _ in range(n):
        once()
    elapsed = time.perf_counter() - started
    return {"runs_per_s": n / elapsed, "seconds": elapsed}


def latency_figures(samples_s: Sequence[float]) -> Figures:
    return {
        "p50_ms": percentile(samples_s, 50) * 1000,
        "p99_ms": percentile(samples_s, 99) * 1000,
        "samples": len(samples_s),
    }


def info(r: Redis, section: str) -> dict[str, Any]:
    """One INFO section. (sessionq.common.connection.sync_reply types such replies for the
    package; the other queues' drivers import this module in venvs without sessionq.)"""
    reply: dict[str, Any] | Any = r.info(section)  # redis-py 5.3: Awaitable | Any
    return dict(reply)


def command_stats(r: Redis) -> dict[str, int]:
    """Calls per command since CONFIG RESETSTAT, less our own CONFIG and INFO. Redis 7
    counts the commands a Lua script runs as well as the EVALSHA that ran them."""
    stats = info(r, "commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {k: v for k, v in calls.items() if not k.startswith(("config", "info"))}


def used_memory(url: str) -> int:
    """used_memory read on a fresh connection (so no client buffer of ours is in it)."""
    r = Redis.from_url(url)
    try:
        return int(info(r, "memory")["used_memory"])
    finally:
        r.close()


# -- sessionq ----------------------------------------------------------------------------------
def sq_settings(url: str) -> Any:
    """Only SESSIONQ_WAIT_REPLICAS (bench.waitcost sets it) and SESSIONQ_PARTITIONS
    (bench.cluster) are taken from the environment."""
    from sessionq.common.settings import Settings

    taken = ("SESSIONQ_WAIT_REPLICAS", "SESSIONQ_PARTITIONS")
    environ = {k: v for k, v in os.environ.items() if k in taken}
    return Settings.from_env(url, environ=environ, user=USER)


def sq_client(url: str) -> Any:
    from sessionq.producer import Client

    return Client(settings=sq_settings(url))


def sq_load_enqueue_script(client: Any) -> None:
    """Load the scripts up front, so neither their load nor their memory is measured."""
    client.scripts.ensure_loaded()


def sq_specs(n: int) -> list[Any]:
    from sessionq.common.jobhash import build_run

    return [build_run(name="r", task=SQ_TASK) for _ in range(n)]


def sq_fill(client: Any, mode: str, n: int) -> str:
    """Queue n no-op runs: one session of n runs (add_runs) or n one-run sessions
    (replicas); returns one of the run ids."""
    if mode == "add_runs":
        sid = client.open_session("batch")
        return str(client.add_runs(sid, sq_specs(n))[0])
    ids = []
    for start in range(0, n, 10_000):
        ids += client.create("rep", task=SQ_TASK, replicas=min(10_000, n - start))
    return f"{ids[0]}-1"


def sq_worker(args: argparse.Namespace) -> None:
    """A sessionq worker as `sessionq worker` runs it: one worker process under its
    supervisor (which lets it hold back the finishes of very short runs, worker.loop
    FINISHES_HELD_MAX); RQ's below is a SimpleWorker."""
    import bench.tasks  # noqa: F401 - registers bench.tasks:noop
    from sessionq.worker.supervisor import Supervisor, WorkerOptions

    settings = sq_settings(args.url)  # (a cluster's URL: its partitions, bench.cluster)
    opts = WorkerOptions(queues=[], allow_commands=False, burst=args.burst, name=None,
                         cores=None, ram=None, imports=[])  # fmt: skip
    raise SystemExit(Supervisor(settings, opts, 1).run())


def sq_enqueue_single(args: argparse.Namespace) -> Figures:
    c = sq_client(args.url)
    figures = calls_per_s(args.n, lambda: c.create("one", task=SQ_TASK))
    c.close()
    return figures


def sq_enqueue_batch(args: argparse.Namespace) -> Figures:
    """n runs in one call (add_runs, the internal path; replicas: n one-run sessions) or
    through the public Session API: one map() of n items, or n add(flush=False) of named
    Tasks (made in the timed part, as a user's loop makes them) and one flush()."""
    from sessionq.producer import Task

    c = sq_client(args.url)
    sq_load_enqueue_script(c)
    sid = c.open_session("batch") if args.mode == "add_runs" else ""
    session = c.session("public") if args.mode in ("map", "add") else None
    started = time.perf_counter()
    if args.mode == "add_runs":
        c.add_runs(sid, sq_specs(args.n))
    elif session is not None and args.mode == "map":
        session.map(SQ_TASK, range(args.n))
    elif session is not None:
        for i in range(args.n):
            session.add(Task(SQ_TASK, name=f"r{i}"), flush=False)
        session.flush()
    else:
        c.create("rep", task=SQ_TASK, replicas=args.n)
    elapsed = time.perf_counter() - started
    if session is not None and len(session) != args.n:
        raise RuntimeError(f"the session holds {len(session)} runs, expected {args.n}")
    c.close()
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


def run_workers(kind: str, args: argparse.Namespace) -> float:
    """Seconds from starting args.workers burst worker processes of `kind` until all exit."""
    started = time.perf_counter()
    procs = [spawn(kind, args.url, "--burst") for _ in range(args.workers)]
    try:
        wait_exit(procs)
    finally:
        for proc in procs:
            stop(proc)
    return time.perf_counter() - started


def sq_drain(args: argparse.Namespace) -> Figures:
    c = sq_client(args.url)
    sq_fill(c, args.mode, args.n)
    if args.stats:
        c.redis.config_resetstat()
    elapsed = run_workers("sq_worker", args)
    figures: Figures = {"runs_per_s": args.n / elapsed, "seconds": elapsed}
    detail: dict[str, Any] = {}
    if args.stats:
        calls = command_stats(c.redis)
        figures["commands_per_run"] = sum(calls.values()) / args.n
        figures["evalsha_per_run"] = (calls.get("evalsha", 0) + calls.get("fcall", 0)) / args.n
        detail["commandstats"] = calls
    done = int(c.redis.hget(c.keys.run_counts(), "succeeded") or 0)
    c.close()
    if done != args.n:
        raise RuntimeError(f"sessionq drain: {done} of {args.n} runs succeeded")
    return {"figures": figures, "detail": detail}


def sq_round_trip(args: argparse.Namespace) -> Figures:
    c = sq_client(args.url)
    proc = spawn("sq_worker", args.url)
    try:
        wait_until(lambda: c.redis.zcard(c.keys.workers()) >= 1, "a sessionq worker",
                   WORKER_START_TIMEOUT_S)  # fmt: skip

        def new_listener() -> None:
            sid = c.create("rt", task=SQ_TASK)[0]
            events = c.listen([sid], types=["task.succeeded"], after=0, timeout=WAIT_S)
            try:
                event = next(events, None)
            finally:
                events.close()
            if event is None:
                raise RuntimeError(f"no task.succeeded for session {sid} within {WAIT_S}s")

        # a producer awaiting many results keeps one listener on every session; it subscribes
        # at its first next(), so that it is started on a run of its own (replayed if done
        # already): a measured run must not end before the listener has subscribed
        warm = c.create("rt", task=SQ_TASK)[0]
        kept = cast(Generator[dict[str, Any], None, None],
                    c.listen(None, types=["task.succeeded"], after={warm: 0},
                             timeout=WAIT_S))  # fmt: skip
        if not any(event["session"] == warm for event in kept):
            raise RuntimeError(f"no task.succeeded for session {warm} within {WAIT_S}s")

        def kept_listener() -> None:
            sid = c.create("rt", task=SQ_TASK)[0]
            for event in kept:
                if event["session"] == sid:
                    return
            raise RuntimeError(f"no task.succeeded for session {sid} within {WAIT_S}s")

        figures = latency_figures(timed_samples(args.n, kept_listener))
        kept.close()
        fresh = latency_figures(timed_samples(args.n, new_listener))
        figures["new_listener_p50_ms"] = fresh["p50_ms"]
        figures["new_listener_p99_ms"] = fresh["p99_ms"]
    finally:
        stop(proc)
        c.close()
    return figures


def sq_events(args: argparse.Namespace) -> Figures:
    """Emit events on one session, one every `interval_ms`, with `k` listeners in another
    process (threads, or with --async tasks of one event loop); their delay."""
    from sessionq.common.keys import Keys

    c = sq_client(args.url)
    c.redis.delete(READY_KEY)
    sid = c.create("ev", task=SQ_TASK)[0]  # no worker: it stays queued
    channel = Keys(c.settings.prefix).events_channel(sid)
    listeners = "sq_listeners_async" if args.use_async else "sq_listeners"
    proc = spawn(listeners, args.url, "--sid", sid, "--k", str(args.k), "--n", str(args.n),
                 stdout=subprocess.PIPE)  # fmt: skip
    try:
        # the listeners of one process share one subscription (producer.hub, producer.aiohub)
        wait_until(lambda: dict(c.redis.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1,
                   "a subscriber", WORKER_START_TIMEOUT_S)  # fmt: skip
        # each listener subscribes, then reads its starting point: warm up until every one
        # of them has received an event
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not c.redis.exists(READY_KEY):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the listeners did not get ready")
            c.scripts.emit(sid, [("task.progress", None, {"warm": True})])
            time.sleep(0.02)
        time.sleep(0.1)
        for _ in range(args.n):
            c.scripts.emit(sid, [("task.progress", None, {"sent": time.monotonic()})])
            time.sleep(args.interval_ms / 1000)
        out, _ = proc.communicate(timeout=WAIT_S * 3)
    finally:
        stop(proc)
        c.close()
    if proc.returncode != 0:
        raise RuntimeError(f"listener process exited with {proc.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def sq_listeners(args: argparse.Namespace) -> None:
    """K threads, each with its own Client and listen() (all on the process's one pub/sub
    connection), record how late each measured event arrives; prints their latency figures."""
    from sessionq.producer import Client

    settings = sq_settings(args.url)
    ready = [threading.Event() for _ in range(args.k)]
    samples: list[list[float]] = [[] for _ in range(args.k)]
    errors: list[BaseException] = []

    def listen(i: int) -> None:
        client = Client(settings=settings)
        events = cast(  # listen() returns a generator: close() ends its subscription
            Generator[dict[str, Any], None, None],
            client.listen([args.sid], types=["task.progress"], timeout=WAIT_S * 2),
        )
        try:
            for event in events:
                now = time.monotonic()
                sent = event["data"].get("sent")
                if sent is None:
                    ready[i].set()
                    continue
                samples[i].append(now - sent)
                if len(samples[i]) >= args.n:
                    break
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            events.close()
            client.close()

    threads = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(args.k)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while not all(event.is_set() for event in ready):
        if errors:
            raise RuntimeError(f"{len(errors)} listener(s) failed: {errors[0]!r}") from errors[0]
        if time.monotonic() > deadline:
            waiting = sum(1 for event in ready if not event.is_set())
            raise RuntimeError(f"{waiting} listener(s) received no warm-up event")
        time.sleep(0.01)
    cpu_started = listeners_ready(args.url)
    for thread in threads:
        thread.join(WAIT_S * 3)
    if errors:
        raise RuntimeError(f"{len(errors)} listener(s) failed: {errors[0]!r}")
    print(json.dumps(listener_figures(args, samples, cpu_started)))


def sq_listeners_async(args: argparse.Namespace) -> None:
    """The same with K tasks of one event loop, each with its own AsyncClient and listen()
    (all on the loop's one pub/sub connection and reader task, producer.aiohub)."""
    import asyncio

    from sessionq.producer import AsyncClient

    settings = sq_settings(args.url)
    samples: list[list[float]] = [[] for _ in range(args.k)]

    async def listen(i: int, ready: asyncio.Event) -> None:
        client = AsyncClient(settings=settings)
        events = cast(  # listen() returns an async generator: aclose() ends its subscription
            AsyncGenerator[dict[str, Any], None],
            client.listen([args.sid], types=["task.progress"], timeout=WAIT_S * 2),
        )
        try:
            async for event in events:
                now = time.monotonic()
                sent = event["data"].get("sent")
                if sent is None:
                    ready.set()
                    continue
                samples[i].append(now - sent)
                if len(samples[i]) >= args.n:
                    break
        finally:
            await events.aclose()
            await client.aclose()

    async def main() -> float:
        ready = [asyncio.Event() for _ in range(args.k)]
        tasks = [asyncio.create_task(listen(i, ready[i])) for i in range(args.k)]
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all(event.is_set() for event in ready):
            failed = [task for task in tasks if task.done()]
            if failed:
                await failed[0]  # raises what ended it
                raise RuntimeError("a listener ended before its warm-up event")
            if time.monotonic() > deadline:
                waiting = sum(1 for event in ready if not event.is_set())
                raise RuntimeError(f"{waiting} listener(s) received no warm-up event")
            await asyncio.sleep(0.01)
        cpu_started = listeners_ready(args.url)
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S * 3)
        return cpu_started

    cpu_started = asyncio.run(main())
    print(json.dumps(listener_figures(args, samples, cpu_started)))


def listeners_ready(url: str) -> float:
    """Tell sq_events that every listener is live; the CPU time from which to count (only
    the measured events)."""
    r = Redis.from_url(url)
    cpu_started = time.process_time()
    r.set(READY_KEY, 1)
    r.close()
    return cpu_started


def listener_figures(
    args: argparse.Namespace, samples: list[list[float]], cpu_started: float
) -> Figures:
    missing = [i for i, got in enumerate(samples) if len(got) != args.n]
    if missing:
        raise RuntimeError(f"{len(missing)} listener(s) missed events")
    figures = latency_figures([s for got in samples for s in got])
    # CPU this process spent per measured event delivered to one listener
    cpu_s = time.process_time() - cpu_started
    figures["listener_cpu_us_per_delivery"] = cpu_s / (args.k * args.n) * 1e6
    return figures


def py_fanout(args: argparse.Namespace) -> Figures:
    """The floor under sq_events, with neither Redis nor sessionq: one thread hands an event
    to `k` threads (a queue.SimpleQueue each, as producer.hub does) every `interval_ms`; how
    late each gets it, and the CPU per delivery. What is left is CPython waking a thread."""
    queues: list[queue.SimpleQueue[dict[str, float]]] = [queue.SimpleQueue() for _ in range(args.k)]
    samples: list[list[float]] = [[] for _ in range(args.k)]

    def take(i: int) -> None:
        for _ in range(WARMUP + args.n):
            event = queues[i].get()
            samples[i].append(time.monotonic() - event["sent"])

    threads = [threading.Thread(target=take, args=(i,), daemon=True) for i in range(args.k)]
    for thread in threads:
        thread.start()
    cpu_started = 0.0
    for number in range(WARMUP + args.n):
        if number == WARMUP:
            cpu_started = time.process_time()
        event = {"sent": time.monotonic()}
        for q in queues:
            q.put(event)
        time.sleep(args.interval_ms / 1000)
    for thread in threads:
        thread.join(WAIT_S)
    cpu_s = time.process_time() - cpu_started
    figures = latency_figures([s for got in samples for s in got[WARMUP:]])
    figures["cpu_us_per_delivery"] = cpu_s / (args.k * args.n) * 1e6
    return figures


def sq_fetch(args: argparse.Namespace) -> Figures:
    c = sq_client(args.url)
    ids: list[str] = []
    for start in range(0, args.n, 10_000):
        ids += c.create("many", task=SQ_TASK, replicas=min(10_000, args.n - start))
    accepted = c.destroy(ids[: args.destroy])  # no worker: they stay Terminating
    if not all(accepted.values()):
        raise RuntimeError("destroy refused some sessions")
    timings = []
    for _ in range(args.calls):
        started = time.perf_counter()
        found = c.fetch(status="Terminating")
        timings.append(time.perf_counter() - started)
        if len(found) != args.destroy:
            raise RuntimeError(f"fetch(status='Terminating') gave {len(found)} sessions, "
                               f"expected {args.destroy}")  # fmt: skip
    c.close()
    return {"median_ms": statistics.median(timings) * 1000, "sessions": args.n}


def sq_memory(args: argparse.Namespace) -> Figures:
    from sessionq.common.rqcompat import rq_keys

    c = sq_client(args.url)
    sq_load_enqueue_script(c)
    sid = c.open_session("batch") if args.mode == "add_runs" else ""
    specs = sq_specs(args.n) if args.mode == "add_runs" else []
    before = used_memory(args.url)
    if args.mode == "add_runs":
        run_id = c.add_runs(sid, specs)[0]
    else:
        run_id = f"{c.create('rep', task=SQ_TASK, replicas=args.n)[0]}-1"
    c.close()  # drop our connections (and their buffers) before reading used_memory
    after = used_memory(args.url)
    r = Redis.from_url(args.url)
    job_bytes = r.memory_usage(rq_keys(c.settings.prefix).job(run_id), samples=0)
    r.close()
    return {"bytes_per_run": (after - before) / args.n, "job_hash_bytes": job_bytes}


def redis_cpu_s(r: Redis) -> float:
    """Redis's CPU seconds so far (INFO cpu: user + system, every thread)."""
    cpu = info(r, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def evalsha_usec(r: Redis) -> int:
    """Microseconds Redis spent in script calls (EVALSHA, FCALL) since CONFIG RESETSTAT (the
    commands a script runs included)."""
    stats = info(r, "commandstats")
    return sum(int(stats[k]["usec"]) for k in ("cmdstat_evalsha", "cmdstat_fcall") if k in stats)


def sq_redis_cpu(args: argparse.Namespace) -> Figures:
    """Redis's CPU per run: INFO cpu before and after queuing n no-op runs (one session of n
    runs by add_runs, or --mode single: n create() calls of one run each) and draining them
    with args.workers burst worker processes, divided by n; with the EVALSHA time of each
    phase (INFO commandstats) and Redis's CPU seconds spent idle over as long, subtracted
    from nothing but reported."""
    c = sq_client(args.url)
    sq_load_enqueue_script(c)
    for _ in range(5):  # connect, load the scripts; then forget it all
        c.create("warm", task=SQ_TASK)
    r = Redis.from_url(args.url)
    r.config_resetstat()
    cpu0 = redis_cpu_s(r)
    if args.mode == "single":
        for _ in range(args.n):
            c.create("one", task=SQ_TASK)
    else:
        c.add_runs(c.open_session("batch"), sq_specs(args.n))
    enqueue_usec = evalsha_usec(r)
    cpu1 = redis_cpu_s(r)
    elapsed = run_workers("sq_worker", args)
    cpu2 = redis_cpu_s(r)
    drain_usec = evalsha_usec(r) - enqueue_usec
    done = int(c.redis.hget(c.keys.run_counts(), "succeeded") or 0)
    idle0 = redis_cpu_s(r)
    time.sleep(1.0)
    idle_per_s = redis_cpu_s(r) - idle0
    c.close()
    r.close()
    if done < args.n:
        raise RuntimeError(f"sessionq redis_cpu: {done} of {args.n} runs succeeded")
    n = args.n
    return {
        "redis_cpu_us_per_run": (cpu2 - cpu0) / n * 1e6,
        "enqueue_cpu_us_per_run": (cpu1 - cpu0) / n * 1e6,
        "drain_cpu_us_per_run": (cpu2 - cpu1) / n * 1e6,
        "enqueue_evalsha_us_per_run": enqueue_usec / n,
        "drain_evalsha_us_per_run": drain_usec / n,
        "idle_cpu_us_per_s": idle_per_s * 1e6,
        "drain_seconds": elapsed,
    }


# -- plain RQ --------------------------------------------------------------------------------
def rq_setup(url: str) -> tuple[Redis, Any]:
    """A connection and RQ's default queue with our msgpack serializer, under prefix "rq"."""
    import rq.defaults
    from rq import Queue

    from sessionq.common.codec import RQSerializer

    if rq.defaults.RQ_KEY_PREFIX != "rq":
        raise RuntimeError(f"plain RQ must use prefix 'rq', not {rq.defaults.RQ_KEY_PREFIX!r}")
    logging.getLogger("rq").setLevel(logging.WARNING)
    r = Redis.from_url(url)
    return r, Queue("default", connection=r, serializer=RQSerializer)


def rq_prepared(n: int) -> list[Any]:
    from rq import Queue

    from bench.tasks import rq_noop

    return [Queue.prepare_data(rq_noop) for _ in range(n)]


def rq_worker(args: argparse.Namespace) -> None:
    """RQ's SimpleWorker (runs jobs in its own process, no fork), quiet."""
    from rq import SimpleWorker

    from sessionq.common.codec import RQSerializer

    r, q = rq_setup(args.url)
    w = SimpleWorker([q], connection=r, serializer=RQSerializer, log_job_description=False)
    w.work(burst=args.burst, logging_level="WARNING")
    raise SystemExit(0)


def rq_enqueue_single(args: argparse.Namespace) -> Figures:
    from bench.tasks import rq_noop

    r, q = rq_setup(args.url)
    figures = calls_per_s(args.n, lambda: q.enqueue(rq_noop))
    r.close()
    return figures


def rq_enqueue_batch(args: argparse.Namespace) -> Figures:
    r, q = rq_setup(args.url)
    r.ping()
    started = time.perf_counter()
    q.enqueue_many(rq_prepared(args.n))
    elapsed = time.perf_counter() - started
    r.close()
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


def rq_drain(args: argparse.Namespace) -> Figures:
    r, q = rq_setup(args.url)
    q.enqueue_many(rq_prepared(args.n))
    if args.stats:
        r.config_resetstat()
    elapsed = run_workers("rq_worker", args)
    figures: Figures = {"runs_per_s": args.n / elapsed, "seconds": elapsed}
    detail: dict[str, Any] = {}
    if args.stats:
        calls = command_stats(r)
        figures["commands_per_run"] = sum(calls.values()) / args.n
        detail["commandstats"] = calls
    done, failed = q.finished_job_registry.count, q.failed_job_registry.count
    r.close()
    if done != args.n:
        raise RuntimeError(f"RQ drain: {done} of {args.n} jobs finished, {failed} failed")
    return {"figures": figures, "detail": detail}


def rq_round_trip(args: argparse.Namespace) -> Figures:
    from rq import Worker

    from bench.tasks import rq_noop

    r, q = rq_setup(args.url)
    proc = spawn("rq_worker", args.url)
    try:
        wait_until(lambda: Worker.count(connection=r) >= 1, "an RQ worker",
                   WORKER_START_TIMEOUT_S)  # fmt: skip

        def once() -> None:
            job = q.enqueue(rq_noop)
            if job.latest_result(timeout=WAIT_S) is None:
                raise RuntimeError(f"no result for RQ job {job.id} within {WAIT_S}s")

        samples = timed_samples(args.n, once)
    finally:
        stop(proc)
        r.close()
    return latency_figures(samples)


def rq_memory(args: argparse.Namespace) -> Figures:
    r, q = rq_setup(args.url)
    r.ping()
    prepared = rq_prepared(args.n)
    before = used_memory(args.url)
    jobs = q.enqueue_many(prepared)
    r.close()
    after = used_memory(args.url)
    probe = Redis.from_url(args.url)
    job_bytes = probe.memory_usage(jobs[0].key, samples=0)
    probe.close()
    return {"bytes_per_run": (after - before) / args.n, "job_hash_bytes": job_bytes}


# -- in-flight runs per worker process (--max-jobs) --------------------------------------------
IO_TASKS = {"async": "bench.tasks:async_sleep", "thread": "bench.tasks:sleep",
            "noop": "bench.tasks:noop"}  # fmt: skip


def sq_worker_jobs(args: argparse.Namespace) -> None:
    """A sessionq worker process (no supervisor) with args.max_jobs runs in flight."""
    import bench.tasks  # noqa: F401 - registers the bench tasks
    from sessionq.worker.loop import SessionWorker

    w = SessionWorker(sq_settings(args.url), max_jobs=args.max_jobs)
    w.install_signals()
    raise SystemExit(w.work(burst=args.burst))


def sq_io_drain(args: argparse.Namespace) -> Figures:
    """args.n runs of one session drained by one burst worker process with --max-jobs
    args.max_jobs: `--kind async` (an async function awaiting asyncio.sleep(args.sleep)),
    `thread` (a plain function in time.sleep), `noop`."""
    from sessionq.common.jobhash import build_run

    c = sq_client(args.url)
    task_name = IO_TASKS[args.kind]
    run_args = [] if args.kind == "noop" else [args.sleep]
    sid = c.open_session("io")
    for start in range(0, args.n, 10_000):
        specs = [build_run(name="r", task=task_name, args=run_args)
                 for _ in range(min(10_000, args.n - start))]  # fmt: skip
        c.add_runs(sid, specs)
    started = time.perf_counter()
    proc = spawn("sq_worker_jobs", args.url, "--burst", "--max-jobs", str(args.max_jobs))
    try:
        wait_exit([proc])
    finally:
        stop(proc)
    elapsed = time.perf_counter() - started
    done = int(c.redis.hget(c.keys.run_counts(), "succeeded") or 0)
    c.close()
    if done != args.n:
        raise RuntimeError(f"sessionq io drain: {done} of {args.n} runs succeeded")
    return {"runs_per_s": args.n / elapsed, "seconds": elapsed}


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of sq_io_drain and sq_worker_jobs."""
    parser.add_argument("--max-jobs", type=int, default=1, help="runs in flight per worker")
    parser.add_argument("--kind", choices=sorted(IO_TASKS), default="async",
                        help="what each run does (io_drain)")  # fmt: skip
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each run waits")


# -- entry point -----------------------------------------------------------------------------
MEASUREMENTS: dict[str, Callable[[argparse.Namespace], Figures]] = {
    "sq_enqueue_single": sq_enqueue_single,
    "sq_enqueue_batch": sq_enqueue_batch,
    "sq_drain": sq_drain,
    "sq_round_trip": sq_round_trip,
    "sq_events": sq_events,
    "py_fanout": py_fanout,
    "sq_fetch": sq_fetch,
    "sq_memory": sq_memory,
    "sq_redis_cpu": sq_redis_cpu,
    "rq_enqueue_single": rq_enqueue_single,
    "rq_enqueue_batch": rq_enqueue_batch,
    "rq_drain": rq_drain,
    "rq_round_trip": rq_round_trip,
    "rq_memory": rq_memory,
    "sq_io_drain": sq_io_drain,
}
PROCESSES: dict[str, Callable[[argparse.Namespace], None]] = {
    "sq_worker": sq_worker,
    "sq_listeners": sq_listeners,
    "sq_listeners_async": sq_listeners_async,
    "rq_worker": rq_worker,
    "sq_worker_jobs": sq_worker_jobs,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.measure", description=__doc__)
    parser.add_argument("name", choices=sorted([*MEASUREMENTS, *PROCESSES]))
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--n", type=int, default=1000, help="runs, samples or sessions")
    parser.add_argument(
        "--mode",
        choices=["add_runs", "replicas", "map", "add", "single"],
        default="add_runs",
        help="how runs are queued (enqueue_batch, drain; redis_cpu: add_runs or single)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (drain)")
    parser.add_argument("--stats", action="store_true", help="count Redis commands (drain)")
    parser.add_argument("--burst", action="store_true", help="workers exit when idle")
    parser.add_argument("--k", type=int, default=1, help="listeners (events)")
    parser.add_argument("--sid", default="", help="session to listen to (listeners)")
    parser.add_argument("--async", dest="use_async", action="store_true",
                        help="listeners are tasks of one event loop (events)")  # fmt: skip
    parser.add_argument("--interval-ms", type=float, default=2.0,
                        help="time between two events (events, fanout)")  # fmt: skip
    parser.add_argument("--destroy", type=int, default=100, help="sessions to destroy (fetch)")
    parser.add_argument("--calls", type=int, default=20, help="fetch calls timed (fetch)")
    add_io_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.name in PROCESSES:
        PROCESSES[args.name](args)
        return
    figures = MEASUREMENTS[args.name](args)
    if "figures" not in figures:
        figures = {"figures": figures, "detail": {}}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
