"""Where a worker's time goes: `python -m bench.profile [--runs N]`.

Starts a throwaway redis-server, queues N no-op runs in one session, and drains them with one
in-process worker (burst) under pyinstrument (`pip install pyinstrument`); prints the rate and
the call tree. The rate is lower than bench.compare's: the profiler samples every 0.5 ms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from sessionq.common.redisserver import RedisServer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000, help="no-op runs to drain")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: give at least 1")
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
