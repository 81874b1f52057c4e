"""What every call of a script costs Redis before its body runs: `python -m bench.luacost`.

Redis runs the whole source of a script on every EVALSHA: the contract's prologue (named keys
and arguments, key builders, the vocabulary) and the prelude functions the body uses are made
anew each call. For each script this loads its source cut before the body (ending `return 1`)
and a bare `return 1`, calls each 20,000 times with the contract's fixed keys and arguments on
a throwaway redis-server, and prints Redis's own time per call (INFO commandstats, best of 3):
the difference is the per-call setup. The last column is the same setup as sessionq sends it
on Redis 7, a function of its library (library.py) whose body is `return 1`, by FCALL: what
is left per call (the named keys and arguments, the prelude's state made anew).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import resources

from redis import Redis

from sessionq.common.keys import Layout
from sessionq.common.redisserver import RedisServer
from sessionq.common.rqcompat import rq_keys
from sessionq.common.scripts.base import key_builders, lua_source
from sessionq.common.scripts.contracts import CONTRACTS
from sessionq.common.scripts.library import library

CALLS = 20_000
PIPELINE = 500  # calls sent per round trip
ROUNDS = 3


def cost_us(
    redis: Redis, source: str, nkeys: int, nargs: int, calls: int, function: str = ""
) -> float:
    """Redis's time per EVALSHA of `source` (µs, best of ROUNDS); with `function`, per FCALL
    of that function of the library `source`."""
    if function:
        redis.function_load(source, replace=True)
        words: tuple[str, ...] = ("FCALL", function)
    else:
        words = ("EVALSHA", redis.script_load(source))
    keys = [f"k{i}" for i in range(nkeys)]
    args = ["1"] * nargs
    best = float("inf")
    for _ in range(ROUNDS):
        redis.config_resetstat()
        pipe = redis.pipeline(transaction=False)
        for i in range(calls):
            pipe.execute_command(*words, nkeys, *keys, *args)
            if i % PIPELINE == PIPELINE - 1:
                pipe.execute()
        pipe.execute()
        stat = f"cmdstat_{words[0].lower()}"
        best = min(best, float(redis.info("commandstats")[stat]["usec_per_call"]))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.luacost", description=__doc__)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per round")
    parser.add_argument("scripts", nargs="*", help="scripts (default: every one)")
    args = parser.parse_args(argv)
    builders = key_builders(Layout(), rq_keys("sq:"))
    server = RedisServer().start()
    try:
        redis = Redis(port=server.port)
        print(f"{'script':<10} {'bare':>7} {'setup':>7} {'per call':>9} {'fcall':>7}"
              "  (µs of Redis time)")  # fmt: skip
        bare_bodies = dict.fromkeys(CONTRACTS, "return 1")
        prelude = (resources.files("sessionq.common") / "lua" / "prelude.lua").read_text()
        lib, functions = library(CONTRACTS, bare_bodies, prelude, builders)
        for name in args.scripts or sorted(CONTRACTS):
            contract = CONTRACTS[name]
            source = lua_source(name, builders)
            body = (resources.files("sessionq.common") / "lua" / f"{name}.lua").read_text()
            assert source.endswith(body)
            setup = source[: len(source) - len(body)] + "return 1\n"
            nkeys, nargs = len(contract.keys), len(contract.args)
            bare = cost_us(redis, "return 1", nkeys, nargs, args.calls)
            full = cost_us(redis, setup, nkeys, nargs, args.calls)
            fcall = cost_us(redis, lib, nkeys, nargs, args.calls, functions[name])
            print(f"{name:<10} {bare:>7.2f} {full:>7.2f} {full - bare:>9.2f} {fcall:>7.2f}")
        redis.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
