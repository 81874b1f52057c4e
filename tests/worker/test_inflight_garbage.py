"""A run in flight leaves nothing for the garbage collector: an async run's asyncio task holds
its context, whose current_task() holds the run, which held the task (to cancel it) - a cycle
per run, found only by the collector's full passes, which grew with every run in flight and
took a fifth of a 500-in-flight drain."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import tests.inflight_tasks  # noqa: F401 - registers the @task functions
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.current import CurrentRun
from sessionq.worker.loop import SessionWorker

RUNS = 60


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """Whatever the collector finds unreachable is kept in gc.garbage rather than freed."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()


@pytest.mark.parametrize("func", ["async_sleep", "thread_sleep"])
def test_runs_in_flight_leave_no_cycles(
    client: Client, settings: Settings, saved_garbage: list[object], func: str
) -> None:
    ids = client.create("cycles", task=f"tests.inflight_tasks:{func}", args=[0.01],
                        replicas=RUNS)  # fmt: skip
    SessionWorker(settings, max_jobs=10).work(burst=True)
    assert {r["status"] for r in client.info(ids)} == {"Completed"}
    gc.collect()
    left = [o for o in saved_garbage if isinstance(o, CurrentRun)]
    assert left == [], f"{len(left)} of {RUNS} runs were left in reference cycles"
