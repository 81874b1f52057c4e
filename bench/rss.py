"""A worker that does not grow: `python -m bench.rss [--runs 1000000] [--json FILE]`.

Starts a throwaway redis-server and one in-process worker (the main thread, not burst) that
drains N no-op runs of one persistent session, while a feeder thread keeps a few chunks of
runs queued and removes each chunk once it has run (so that Redis does not hold N finished
runs). The worker's RSS (VmRSS of /proc/self/status) is sampled as the runs go by; prints the
samples and the growth after the warm-up (the first tenth of the runs, at least 20,000), and
exits 1 when RSS moved more than --limit-mb (default 5) after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sessionq.common.redisserver import RedisServer

CHUNK_RUNS = 5_000
CHUNKS_AHEAD = 3
SAMPLES = 20
WARMUP_MIN_RUNS = 20_000
POLL_S = 0.01


def rss_kb() -> int:
    """This process's resident set size, in KiB (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class Feeder(threading.Thread):
    """Keeps CHUNKS_AHEAD chunks of runs queued, removes each chunk once its last run ended
    (one worker runs them in order), samples RSS, and stops the worker after `runs`."""

    def __init__(self, client: Any, sid: str, worker: Any, runs: int, warmup: int) -> None:
        super().__init__(name="rss-feeder", daemon=True)
        self.client, self.sid, self.worker = client, sid, worker
        self.runs, self.warmup = runs, warmup
        self.samples: list[tuple[int, int, float]] = []  # (runs done, RSS KiB, seconds)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # noqa: BLE001 - reported by main(), the worker stops
            self.error = exc
        finally:
            self.worker.shutting_down = True

    def _feed(self) -> None:
        from bench.measure import sq_specs

        scripts, rq = self.client.scripts, self.client.scripts.rq
        added = done = 0
        chunks: deque[list[str]] = deque()
        every = max(1, (self.runs - self.warmup) // SAMPLES)
        next_sample = self.warmup
        started = time.perf_counter()
        self.samples.append((0, rss_kb(), 0.0))
        while done < self.runs:
            while len(chunks) < CHUNKS_AHEAD and added < self.runs:
                n = min(CHUNK_RUNS, self.runs - added)
                chunks.append(self.client.add_runs(self.sid, sq_specs(n)))
                added += n
            last = chunks[0][-1]
            if self.client.redis.hget(rq.job(last), "state") != b"succeeded":
                time.sleep(POLL_S)
                continue
            chunk = chunks.popleft()
            scripts.control("drop", self.sid, {"delete": True}, [(i, "default") for i in chunk])
            done += len(chunk)
            if done >= next_sample or done >= self.runs:
                self.samples.append((done, rss_kb(), time.perf_counter() - started))
                next_sample = done + every


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000, help="no-op runs to drain")
    parser.add_argument("--limit-mb", type=float, default=5.0, help="allowed RSS change, MB")
    parser.add_argument("--warmup-runs", type=int, help="runs before the RSS baseline "
                        "(default: a tenth of --runs, at least 20,000)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args(argv)
    if args.runs < 2 * CHUNK_RUNS:
        parser.error(f"--runs: give at least {2 * CHUNK_RUNS}")

    import bench.tasks  # noqa: F401 - registers the no-op task
    from bench.measure import sq_client, sq_settings
    from sessionq.worker.loop import SessionWorker

    warmup = args.warmup_runs or min(args.runs // 2, max(WARMUP_MIN_RUNS, args.runs // 10))
    warmup -= warmup % CHUNK_RUNS
    if not 0 < warmup < args.runs:
        parser.error("--warmup-runs: give fewer than --runs, at least one chunk of runs")
    with RedisServer() as server:
        client = sq_client(server.url)
        sid = client.open_session("rss")
        worker = SessionWorker(sq_settings(server.url))
        feeder = Feeder(client, sid, worker, args.runs, warmup)
        feeder.start()
        worker.work()
        feeder.join()
        client.close()
    if feeder.error is not None:
        raise feeder.error
    samples = feeder.samples
    print(f"{'runs':>10} {'RSS MB':>8} {'s':>7}")
    for done, kb, secs in samples:
        print(f"{done:>10,} {kb / 1024:>8.1f} {secs:>7.1f}")
    after = [kb for done, kb, _ in samples if done >= warmup]
    base = after[0]
    growth_mb = (after[-1] - base) / 1024
    spread_mb = (max(after) - min(after)) / 1024
    runs_after = samples[-1][0] - warmup
    per_run = (after[-1] - base) * 1024 / max(1, runs_after)
    flat = max(abs(kb - base) for kb in after) / 1024 <= args.limit_mb
    print(f"after the warm-up ({warmup:,} runs): RSS {base / 1024:.1f} -> {after[-1] / 1024:.1f} "
          f"MB over {runs_after:,} runs ({growth_mb:+.2f} MB, {per_run:+.1f} B per run; "
          f"spread {spread_mb:.2f} MB): {'flat' if flat else 'NOT flat'} "
          f"(limit +-{args.limit_mb:g} MB)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "runs": args.runs, "warmup_runs": warmup, "growth_mb": growth_mb,
            "bytes_per_run": per_run, "flat": flat,
            "samples": [{"runs": d, "rss_kb": kb, "seconds": s} for d, kb, s in samples],
        }, indent=1))  # fmt: skip
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
