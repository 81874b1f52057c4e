"""A run in a C call that holds the GIL starves its worker's watcher thread (no heartbeat, no
deadline): its supervisor, another process, vouches for it and enforces the deadline by
signal (worker/supervisor.py). Real worker processes; another worker's reaper looks on."""

from __future__ import annotations

from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for

HOLD_S = 8  # well past the heartbeat TTL (1.5 s here) and the deadline plus its grace


def test_a_run_holding_the_gil_fails_by_timeout_once(client: Client, workers: WorkerProcs) -> None:
    workers.start(1)
    workers.start(1)  # another host: its reaper would take a starved worker for lost
    names = set(workers.names())
    [sid] = client.create("gil", task="tests.tasks:gil_holder", args=[HOLD_S], timeout=1)
    wait_for(lambda: ended(client, sid), timeout=60, what="the run to end")
    [record] = client.info(sid)
    assert record["status"] == "Failed" and "timeout" in record["error"], record["error"]
    events = client.events(sid) or []
    assert [e["type"] for e in events].count("task.started") == 1, "it ran once"
    assert not [e for e in events if "lost" in str(e["data"])], "no worker declared lost"
    # the killed process is replaced; the other host's worker was never touched
    [ran_on] = [e["worker"] for e in events if e["type"] == "task.started"]

    def replaced() -> bool:
        now = set(workers.names())
        return len(now) == 2 and ran_on not in now and now & names == names - {ran_on}

    wait_for(replaced, what="the killed process replaced, the other worker untouched")
