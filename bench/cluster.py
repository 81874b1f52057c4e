"""bench.compare's cluster section (issue 19): sessionq on a 3-master Redis Cluster on
loopback beside one Redis on the same machine, both started here.

- drain: `--n` one-run sessions (`create(replicas=...)`: they land in random partitions, so
  on the cluster on every master) drained by one burst worker process, runs/s; and one
  session of `--n` runs (`--one-session`: all in one partition, on one master), runs/s and
  script calls per run (a claim in a partition with nothing is one more);
- the spread: each master's share of those sessions and of the keys (DBSIZE after queuing),
  and whether each share is within +-15% of an even one;
- Redis CPU per run per shard: INFO cpu (used_cpu_sys + used_cpu_user) of each master before
  queuing and after the drain, divided by the runs whose session that master holds;
- round trip create -> result: bench.measure's sq_round_trip against either URL.

One measurement per process, as bench.measure: `python -m bench.cluster cl_drain --url URL
--n N` prints one JSON line. `run_section` (the orchestration, no sessionq client or RQ
imported here at module level) is what bench.compare calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis

from bench.measure import command_stats, info, redis_cpu_s, run_workers, sq_client
from bench.plan import SQ, Variant

MASTERS = 3
CLUSTER_PARTITIONS = 16  # (settings.CLUSTER_PARTITIONS: not imported, see the docstring)
EVEN_TOLERANCE = 0.15  # a master's share within +-15% of 1/MASTERS counts as even
REPLICAS_PER_CALL = 10_000
IDLE_SAMPLE_S = 1.0
EVENT_BYTES = 200  # about one event's size (msgpack)
FULL_SIZES = {"publishes": 30_000}  # (bench.compare adds its drain and round_trips)
QUICK_SIZES = {"publishes": 2_000}
# one Redis as everyone runs it; the same with the cluster's partitions (what partitioning
# costs without a cluster); the cluster
TARGETS = ("one", "one_parts", "cluster")
COLUMNS = {"one": "one Redis", "one_parts": f"one Redis, {CLUSTER_PARTITIONS} partitions",
           "cluster": f"cluster, {MASTERS} masters"}  # fmt: skip
Raw = dict[str, dict[str, list[dict[str, Any]]]]


# -- in the measuring process ------------------------------------------------------------
def masters_of(client: Any) -> dict[str, Redis]:
    """ "host:port" -> a client of that master (one Redis: itself)."""
    from sessionq.common.scripts.transport import clustered

    redis = client.redis
    if not clustered(redis):
        kwargs = redis.connection_pool.connection_kwargs
        return {f"{kwargs.get('host')}:{kwargs.get('port')}": redis}
    return {f"{n.host}:{n.port}": redis.get_redis_connection(n) for n in redis.get_primaries()}


def master_of_session(client: Any, sid: str) -> str:
    from sessionq.common.scripts.transport import server_of

    kwargs = server_of(client.redis, client.keys.session(sid)).connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def succeeded(client: Any) -> int:
    """Runs succeeded over every partition (their counters)."""
    from sessionq.common.keys import Layout

    return sum(int(client.redis.hget(part.run_counts(), "succeeded") or 0)
               for part in Layout.of(client.settings).parts())  # fmt: skip


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()} if total else {}


def cl_drain(args: argparse.Namespace) -> dict[str, Any]:
    """args.n one-run sessions queued, then drained by one burst worker process: runs/s, the
    spread of sessions and keys over the masters, Redis CPU per run on each."""
    c = sq_client(args.url)
    masters = masters_of(c)
    c.scripts.ensure_loaded()  # (on a cluster: on every master) - not measured
    for r in masters.values():
        r.config_resetstat()
    cpu0 = {m: redis_cpu_s(r) for m, r in masters.items()}
    ids: list[str] = []
    if args.one_session:
        session = c.session("cl")
        session.starmap("bench.tasks:noop", [()] * args.n)
        ids.append(session.id)
    for start in range(0, 0 if args.one_session else args.n, REPLICAS_PER_CALL):
        ids += c.create("cl", task="bench.tasks:noop",
                        replicas=min(REPLICAS_PER_CALL, args.n - start))  # fmt: skip
    keys = {m: int(r.dbsize()) for m, r in masters.items()}
    sessions = Counter(master_of_session(c, sid) for sid in ids)
    elapsed = run_workers("sq_worker", args)
    cpu = {m: redis_cpu_s(r) - cpu0[m] for m, r in masters.items()}
    calls = {m: command_stats(r) for m, r in masters.items()}
    idle0 = {m: redis_cpu_s(r) for m, r in masters.items()}
    time.sleep(IDLE_SAMPLE_S)
    idle = {m: (redis_cpu_s(r) - idle0[m]) / IDLE_SAMPLE_S for m, r in masters.items()}
    done = succeeded(c)
    version = info(next(iter(masters.values())), "server").get("redis_version")
    c.close()
    if done != args.n:
        raise RuntimeError(f"cluster drain: {done} of {args.n} runs succeeded")
    per_run = {m: cpu[m] / sessions[m] * 1e6 for m in masters if sessions[m]}
    figures = {
        "runs_per_s": args.n / elapsed,
        "seconds": elapsed,
        "masters": len(masters),
        # the whole deployment's Redis CPU per run (every master's, over every run)
        "redis_cpu_us_per_run": sum(cpu.values()) / args.n * 1e6,
        # the busiest shard's and the mean shard's CPU per run of its own sessions
        "shard_cpu_us_per_run_max": max(per_run.values()),
        "shard_cpu_us_per_run_mean": statistics.mean(per_run.values()),
        "session_share_max": max(shares(dict(sessions)).values()),
        "session_share_min": min(shares({m: sessions[m] for m in masters}).values()),
        "key_share_max": max(shares(keys).values()),
        "key_share_min": min(shares(keys).values()),
        "commands_per_run": sum(sum(c.values()) for c in calls.values()) / args.n,
        # (script calls: FCALL of the function library, EVALSHA where it is not loaded)
        "evalsha_per_run": sum(c.get("evalsha", 0) + c.get("fcall", 0) for c in calls.values())
        / args.n,
        "publish_per_run": sum(c.get("publish", 0) for c in calls.values()) / args.n,
        # (on a cluster events are sharded: SPUBLISH)
        "spublish_per_run": sum(c.get("spublish", 0) for c in calls.values()) / args.n,
    }
    detail = {"sessions": {m: sessions[m] for m in masters}, "keys": keys,
              "cpu_s": cpu, "cpu_us_per_run": per_run, "idle_cpu_us_per_s":
              {m: v * 1e6 for m, v in idle.items()}, "commandstats": calls,
              "redis_version": version}  # fmt: skip
    return {"figures": figures, "detail": detail}


def cl_publish(args: argparse.Namespace) -> dict[str, Any]:
    """args.n PUBLISH, then args.n SPUBLISH, of an event-sized message (EVENT_BYTES) on the
    channel of partition 0's events, pipelined, nobody subscribed: Redis CPU per message on
    the master that takes it and on each other master (a cluster's bus carries every PUBLISH
    to every node, a SPUBLISH to none: sessionq's scripts SPUBLISH on a cluster)."""
    from sessionq.common.keys import Layout
    from sessionq.common.scripts.transport import server_of

    c = sq_client(args.url)
    masters = masters_of(c)
    channel = Layout.of(c.settings).part(0).events_all_channel()
    home = server_of(c.redis, channel)
    kwargs = home.connection_pool.connection_kwargs
    sender = f"{kwargs.get('host')}:{kwargs.get('port')}"
    message = b"e" * EVENT_BYTES
    figures: dict[str, float] = {}
    detail: dict[str, Any] = {"sender": sender}
    for command in ("PUBLISH", "SPUBLISH"):
        cpu0 = {m: redis_cpu_s(r) for m, r in masters.items()}
        pipe = home.pipeline(transaction=False)
        for i in range(args.n):
            pipe.execute_command(command, channel, message)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        cpu = {m: (redis_cpu_s(r) - cpu0[m]) / args.n * 1e6 for m, r in masters.items()}
        verb = command.lower()
        detail[f"cpu_us_per_{verb}"] = cpu
        figures[f"sender_cpu_us_per_{verb}"] = cpu[sender]
        others = [v for m, v in cpu.items() if m != sender]
        if others:
            figures[f"other_cpu_us_per_{verb}"] = statistics.mean(others)
    c.close()
    return {"figures": figures, "detail": detail}


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "cl_drain": cl_drain, "cl_publish": cl_publish}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("name", choices=sorted(MEASUREMENTS))
    parser.add_argument("--url", required=True, help="Redis URL (redis+cluster://...)")
    parser.add_argument("--n", type=int, default=1000, help="one-run sessions (runs)")
    parser.add_argument("--one-session", action="store_true",
                        help="cl_drain: one session of --n runs")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(MEASUREMENTS[args.name](args)))


# -- bench.compare's section -------------------------------------------------------------
def variants(sizes: dict[str, int]) -> dict[str, Variant]:
    return {
        "drain": Variant(SQ, "cl_drain", ("--n", str(sizes["drain"])), "bench.cluster"),
        "drain_one": Variant(
            SQ, "cl_drain", ("--n", str(sizes["drain"]), "--one-session"), "bench.cluster"
        ),
        "round_trip": Variant(SQ, "sq_round_trip", ("--n", str(sizes["round_trips"]))),
        "publish": Variant(SQ, "cl_publish", ("--n", str(sizes["publishes"])), "bench.cluster"),
    }


def run_section(
    rounds: int, sizes: dict[str, int], run_child: Callable[..., dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Start one Redis and a 3-master cluster; each round runs every measurement against
    each target in TARGETS' order, each in a fresh process after FLUSHALL (`run_child(variant,
    url, env=...)`). raw[measurement][target] = one result per round."""
    from sessionq.common.clusterserver import RedisClusterServer
    from sessionq.common.redisserver import RedisServer

    raw: Raw = {name: {t: [] for t in TARGETS} for name in variants(sizes)}
    one = RedisServer().start()
    try:
        with RedisClusterServer(masters=MASTERS) as cluster:

            def flush_one() -> None:
                with Redis.from_url(one.url) as r:
                    r.flushall()

            flush = {"one": flush_one, "one_parts": flush_one, "cluster": cluster.flushall}
            urls = {"one": one.url, "one_parts": one.url, "cluster": cluster.url}
            partitions = {"one": 1, "one_parts": CLUSTER_PARTITIONS,
                          "cluster": CLUSTER_PARTITIONS}  # fmt: skip
            for number in range(1, rounds + 1):
                for name, variant in variants(sizes).items():
                    for target in TARGETS:
                        flush[target]()
                        started = time.perf_counter()
                        env = {"SESSIONQ_PARTITIONS": str(partitions[target])}
                        result = run_child(variant, urls[target], env=env)
                        raw[name][target].append(result)
                        log(f"round {number}/{rounds} cluster:{name:<11} {target:<9} "
                            f"{time.perf_counter() - started:6.1f}s  "
                            + " ".join(f"{k}={v:.4g}" for k, v in result["figures"].items()
                                       if isinstance(v, (int, float))))  # fmt: skip
    finally:
        one.stop()
    return {"masters": MASTERS, "raw": raw, "summary": summarise(raw)}


def _median(raw: Raw, name: str, target: str, figure: str) -> float | None:
    values = [r["figures"][figure] for r in raw[name][target] if figure in r["figures"]]
    return statistics.median(values) if values else None


def _per_master(raw: Raw, field: str, target: str = "cluster") -> dict[str, float]:
    """A detail field of a target's drain, per master: the median over the rounds (the
    masters' ports are the same in every round)."""
    rounds = [r["detail"][field] for r in raw["drain"][target]]
    return {m: statistics.median(float(r[m]) for r in rounds if m in r) for m in rounds[0]}


SUMMARY = (  # name, measurement, figure
    ("drain_runs_per_s", "drain", "runs_per_s"),
    ("drain_one_runs_per_s", "drain_one", "runs_per_s"),
    ("drain_one_evalsha_per_run", "drain_one", "evalsha_per_run"),
    ("round_trip_p50_ms", "round_trip", "p50_ms"),
    ("round_trip_p99_ms", "round_trip", "p99_ms"),
    ("redis_cpu_us_per_run", "drain", "redis_cpu_us_per_run"),
    ("shard_cpu_us_per_run_max", "drain", "shard_cpu_us_per_run_max"),
    ("shard_cpu_us_per_run_mean", "drain", "shard_cpu_us_per_run_mean"),
    ("evalsha_per_run", "drain", "evalsha_per_run"),
    ("publish_per_run", "drain", "publish_per_run"),
    ("spublish_per_run", "drain", "spublish_per_run"),
    ("commands_per_run", "drain", "commands_per_run"),
    ("sender_cpu_us_per_publish", "publish", "sender_cpu_us_per_publish"),
    ("other_cpu_us_per_publish", "publish", "other_cpu_us_per_publish"),
    ("sender_cpu_us_per_spublish", "publish", "sender_cpu_us_per_spublish"),
    ("other_cpu_us_per_spublish", "publish", "other_cpu_us_per_spublish"),
)


def summarise(raw: Raw) -> dict[str, Any]:
    """The medians of each target, and the cluster's per-master spread and CPU."""
    out: dict[str, Any] = {name: {t: _median(raw, m, t, f) for t in TARGETS}
                           for name, m, f in SUMMARY}  # fmt: skip
    sessions = _per_master(raw, "sessions")
    keys = _per_master(raw, "keys")
    even = 1 / MASTERS
    spread = {}
    for what, counts in (("sessions", sessions), ("keys", keys)):
        share = shares({m: round(v) for m, v in counts.items()})
        spread[what] = {"share": share, "even": all(
            abs(s - even) <= EVEN_TOLERANCE * even for s in share.values())}  # fmt: skip
    out["spread"] = spread
    out["cpu_us_per_run_per_master"] = _per_master(raw, "cpu_us_per_run")
    out["idle_cpu_us_per_s_per_master"] = _per_master(raw, "idle_cpu_us_per_s")
    out["idle_cpu_us_per_s"] = {t: max(_per_master(raw, "idle_cpu_us_per_s", t).values())
                                for t in TARGETS}  # fmt: skip
    return out


def table(section: dict[str, Any], sizes: dict[str, int]) -> str:
    s = section["summary"]
    masters = list(s["cpu_us_per_run_per_master"])

    def each(name: str, unit: str = "") -> list[str]:
        return [_fmt(s[name][t], unit) for t in TARGETS]

    def pct(what: str) -> str:
        share = s["spread"][what]["share"]
        within = "yes" if s["spread"][what]["even"] else "no"
        return " / ".join(f"{share[m] * 100:.1f}%" for m in masters) + f" ({within})"

    rt = [f"{a} / {b}" for a, b in zip(each("round_trip_p50_ms"), each("round_trip_p99_ms"),
                                        strict=True)]  # fmt: skip
    per_shard = " / ".join(f"{v:.1f}" for v in s["cpu_us_per_run_per_master"].values())
    idle = " / ".join(f"{v:,.0f}" for v in s["idle_cpu_us_per_s_per_master"].values())
    rows = [
        (f"drain {sizes['drain']:,} one-run sessions, 1 worker [runs/s]",
         *each("drain_runs_per_s", "runs/s")),
        (f"drain one session of {sizes['drain']:,} runs, 1 worker [runs/s]",
         *each("drain_one_runs_per_s", "runs/s")),
        ("  script calls (FCALL, EVALSHA) per run", *each("drain_one_evalsha_per_run")),
        ("round trip create -> result, p50 / p99 [ms]", *rt),
        ("sessions per master (each within +-15% of a third?)", "100%", "100%", pct("sessions")),
        ("keys per master (each within +-15% of a third?)", "100%", "100%", pct("keys")),
        ("Redis CPU per run, queue + drain, per shard [us]",
         *each("redis_cpu_us_per_run")[:2], per_shard),
        ("Redis CPU per run, all masters together [us]", *each("redis_cpu_us_per_run")),
        ("script calls (FCALL, EVALSHA) per run (all masters)", *each("evalsha_per_run")),
        ("PUBLISH per run (all masters)", *each("publish_per_run")),
        ("SPUBLISH per run (all masters)", *each("spublish_per_run")),
        ("Redis commands per run, incl. in scripts (all masters)", *each("commands_per_run")),
        (f"PUBLISH of {EVENT_BYTES} bytes, CPU on the master it is sent to [us]",
         *each("sender_cpu_us_per_publish")),
        ("  and on each other master (the cluster bus) [us]",
         *each("other_cpu_us_per_publish")),
        (f"SPUBLISH of {EVENT_BYTES} bytes, CPU on the master it is sent to [us]",
         *each("sender_cpu_us_per_spublish")),
        ("  and on each other master [us]", *each("other_cpu_us_per_spublish")),
        ("Redis CPU idle after the drain, per master [us/s]",
         *(f"{s['idle_cpu_us_per_s'][t]:,.0f}" for t in TARGETS[:2]), idle),
    ]  # fmt: skip
    header = ("cluster section", *(COLUMNS[t] for t in TARGETS))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    notes = [
        f"Masters (in that order): {', '.join(masters)}. One Redis and a {len(masters)}-master "
        "Redis Cluster (no replicas, redis-cli --cluster create) on this machine, started by "
        f"the bench; sessionq on the cluster with SESSIONQ_PARTITIONS={CLUSTER_PARTITIONS} (its "
        "default there), and on the one Redis with 1 (its default) and with "
        f"{CLUSTER_PARTITIONS}. Drain: one-run sessions made by create(replicas=...) (with "
        "partitions they land in random ones, so on the cluster on every master), then one "
        "burst worker process, timed from its start to its exit; one session: its runs added by "
        "Session.starmap, all in one partition. Round trip: bench.measure "
        "sq_round_trip (one worker running, a kept listener).",
        "Redis CPU per run per shard: INFO cpu (used_cpu_sys + used_cpu_user) of each master "
        "before queuing and after the drain, divided by the runs of the sessions that master "
        "holds; it includes Redis's upkeep (the idle row: cron, on the cluster its bus), on "
        "the master of the {g} slot the worker's heartbeats, and on every master the cluster "
        "bus (events are SPUBLISHed on a cluster: the bus carries none of them). Commands: "
        "INFO commandstats of every master (CONFIG RESETSTAT before queuing). PUBLISH, then "
        f"SPUBLISH: {sizes['publishes']:,} messages each, pipelined on the channel of "
        "partition 0's events, nobody subscribed. The cluster "
        "cannot be faster on a machine of few cores; what it buys is every master's CPU and "
        "memory.",
    ]
    wrap = textwrap.TextWrapper(width=100, subsequent_indent="  ")
    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows), ""]
    return "\n".join(out + [wrap.fill(n) for n in notes])


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "runs/s" else f"{value:.2f}"


if __name__ == "__main__":
    main()
