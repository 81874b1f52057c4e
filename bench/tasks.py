"""No-op functions the benchmark runs: `noop` for sessionq workers (`--import bench.tasks`),
`rq_noop` for plain RQ workers (RQ runs any importable function)."""

from __future__ import annotations

from worker import task


@task
def noop() -> None:
    """Registered as "bench.tasks:noop"."""
    return None


def rq_noop() -> None:
    """For plain RQ: enqueued as `bench.tasks.rq_noop`."""
    return None
