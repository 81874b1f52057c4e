"""Instructions Redis runs per run, counted by valgrind: `python -m bench.instructions`.

Redis's CPU time per run (bench.measure sq_redis_cpu) moves by ±20% on a machine shared with
other work; the number of instructions the server executes does not. This starts a
redis-server under valgrind's callgrind (apt: valgrind; ~50x slower, so a few hundred runs),
warms a client up (its scripts or function library loaded), then counts, with the counters
zeroed before each phase: queuing N no-op runs (one session by add_runs, --mode single: N
create() calls of one run each, or --mode replicas: one create() of N replicas) and draining
them with one burst worker process. It prints
thousands of instructions per run for each phase; compare two checkouts with the same N.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis

from bench import measure

START_TIMEOUT_S = 60


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="runs")
    parser.add_argument("--mode", choices=("batch", "single", "replicas"), default="batch")
    parser.add_argument("--port", type=int, default=6499)
    args = parser.parse_args(argv)
    out = f"/tmp/sessionq-callgrind.{args.port}.out"
    for old in glob.glob(out + "*"):
        os.remove(old)
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server",
         "--port", str(args.port), "--save", "", "--appendonly", "no", "--hz", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{args.port}/0"
    try:
        measure.wait_until(lambda: _answers(url), "redis-server under valgrind", START_TIMEOUT_S)
        client = measure.sq_client(url)
        measure.sq_load_enqueue_script(client)
        for _ in range(5):
            client.create("warm", task=measure.SQ_TASK)

        def counted(phase: Any) -> int:
            _control(server.pid, "-z")
            phase()
            _control(server.pid, "-d")
            time.sleep(0.5)
            newest = max(glob.glob(out + "*"), key=os.path.getmtime)
            with open(newest) as dump:
                found = re.search(r"^(?:summary|totals):\s*(\d+)", dump.read(), re.M)
            return int(found.group(1)) if found else 0

        def enqueue() -> None:
            if args.mode == "single":
                for _ in range(args.n):
                    client.create("one", task=measure.SQ_TASK)
            elif args.mode == "replicas":
                client.create("rep", task=measure.SQ_TASK, replicas=args.n)
            else:
                client.add_runs(client.open_session("batch"), measure.sq_specs(args.n))

        drain = argparse.Namespace(url=url, n=args.n, workers=1, mode=None, burst=True)
        queued = counted(enqueue)
        drained = counted(lambda: measure.run_workers("sq_worker", drain))
        client.close()
    finally:
        server.terminate()
        server.wait()
    n = args.n
    print(f"kIr per run ({args.mode}, n={n}): enqueue {queued / n / 1000:.1f}  "
          f"drain {drained / n / 1000:.1f}  total {(queued + drained) / n / 1000:.1f}")  # fmt: skip
    return 0


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url).ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], stdout=subprocess.DEVNULL, check=True)


if __name__ == "__main__":
    raise SystemExit(main())
