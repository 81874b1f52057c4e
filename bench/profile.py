"""Where a worker's time goes: `python -m bench.profile [--runs N]`; what each script costs
Redis before its body runs: `python -m bench.profile --scripts [--calls N]`.

Starts a throwaway redis-server, queues N no-op runs in one session, and drains them with one
in-process worker (burst) under pyinstrument (`pip install pyinstrument`); prints the rate and
the call tree. The rate is lower than bench.compare's: the profiler samples every 0.5 ms.

--scripts: per script, the EVALSHA time (INFO commandstats, best of 5 rounds of N calls) of
`return 0` and of the script as sent (its shebang, the prologue and prelude parts it uses,
load_globals() if its body calls it) stopped before its body: the fixed cost of every call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from sessionq.common.redisserver import RedisServer


def script_overhead(calls: int) -> None:
    """Print each script's fixed cost per call (see the module docstring)."""
    from redis import Redis

    from sessionq.common.scripts import Scripts
    from sessionq.common.scripts.base import _lua_file
    from sessionq.common.scripts.contract import NUMBER
    from sessionq.common.scripts.contracts import CONTRACTS
    from sessionq.common.settings import Settings

    def usec_per_call(r: Redis, sha: str, keys: list[str], argv: list[str]) -> float:
        best = float("inf")
        for _ in range(5):
            r.config_resetstat()
            pipe = r.pipeline(transaction=False)
            for _ in range(calls):
                pipe.evalsha(sha, len(keys), *keys, *argv)
            pipe.execute()
            stats = r.info("commandstats")["cmdstat_evalsha"]
            best = min(best, stats["usec"] / stats["calls"])
        return best

    with RedisServer() as server:
        r = Redis.from_url(server.url)
        scripts = Scripts(r, Settings.from_env(server.url, environ={}))
        print(f"{'script':<10} {'return 0':>9} {'fixed':>9}  us per call (EVALSHA, {calls} calls)")
        for name, contract in sorted(CONTRACTS.items()):
            keys = [f"k:{i}" for i in range(len(contract.keys))]
            argv = ["0" if kind == NUMBER else "x" for _, kind in (*contract.args, *contract.tail)]
            body = _lua_file(name)
            stop = ("load_globals()\n" if "load_globals()" in body else "") + "do return 0 end\n"
            source = contract.source(stop + body, _lua_file("prelude"), scripts.builders)
            empty = usec_per_call(r, r.script_load("return 0"), keys, argv)
            fixed = usec_per_call(r, r.script_load(source), keys, argv)
            print(f"{name:<10} {empty:9.1f} {fixed:9.1f}")
        r.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000, help="no-op runs to drain")
    parser.add_argument("--scripts", action="store_true", help="each script's fixed cost")
    parser.add_argument("--calls", type=int, default=2_000, help="calls per round (--scripts)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.calls < 1:
        parser.error("--runs, --calls: give at least 1")
    if args.scripts:
        script_overhead(args.calls)
        return
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("bench.profile needs pyinstrument: pip install pyinstrument") from None

    import bench.tasks  # noqa: F401 - registers the no-op task
    from bench.measure import sq_client, sq_fill, sq_settings
    from sessionq.worker.loop import SessionWorker

    with RedisServer() as server:
        client = sq_client(server.url)
        sq_fill(client, "add_runs", args.runs)
        worker = SessionWorker(sq_settings(server.url))
        profiler = Profiler(interval=0.0005)
        started = time.perf_counter()
        profiler.start()
        worker.work(burst=True)
        profiler.stop()
        elapsed = time.perf_counter() - started
        client.close()
    print(f"drained {args.runs:,} runs in {elapsed:.2f}s: {args.runs / elapsed:,.0f} runs/s "
          f"under the profiler ({elapsed / args.runs * 1e6:.0f} us per run)")  # fmt: skip
    print(profiler.output_text(unicode=True, color=False))


if __name__ == "__main__":
    main()
