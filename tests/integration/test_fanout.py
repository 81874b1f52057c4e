"""Session.map / starmap drained by real workers: every result right, kwargs passed."""

from __future__ import annotations

from sessionq.producer import Client
from tests.conftest import WorkerProcs


def test_mapped_runs_give_their_results_after_a_worker_drains_them(
    client: Client, workers: WorkerProcs
) -> None:
    s = client.session("drained")
    mapped = s.map("tests.tasks:add", range(20), kwargs={"b": 100})
    starred = s.starmap("tests.tasks:add", [(i, i) for i in range(20)])
    echoed = s.map("tests.tasks:echo", [{"a": [1, "x"]}, None, "text"])
    workers.start(concurrency=2)
    assert s.wait(timeout=60) == "Completed"
    results = {r["id"]: r["result"] for r in s}
    assert [results[t] for t in mapped] == [i + 100 for i in range(20)]
    assert [results[t] for t in starred] == [2 * i for i in range(20)]
    assert [results[t] for t in echoed] == [{"a": [1, "x"]}, None, "text"]
