"""/metrics: Prometheus text read from Redis at each scrape, durations from events."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for
from tests.dashboard.conftest import RunningDashboard, session_with_runs


def scrape(dashboard: RunningDashboard) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = dashboard.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_queued_runs_show_as_queue_depth_and_age(
    client: Client, dashboard: RunningDashboard
) -> None:
    session_with_runs(client, "waiting", 3, "tests.tasks:noop")
    client.create("elsewhere", task="tests.tasks:noop", queue="gpu", replicas=2)
    m = scrape(dashboard)
    assert m[("sessionq_queue_depth", (("queue", "default"),))] == 3
    assert m[("sessionq_queue_depth", (("queue", "gpu"),))] == 2
    assert m[("sessionq_queue_runs", (("queue", "gpu"), ("state", "queued")))] == 2
    assert m[("sessionq_queue_runs", (("queue", "gpu"), ("state", "started")))] == 0
    assert m[("sessionq_runs", (("state", "queued"),))] == 5
    assert m[("sessionq_sessions", (("status", "Pending"),))] == 3
    assert m[("sessionq_workers", ())] == 0
    assert m[("sessionq_oldest_queued_run_age_seconds", (("queue", "gpu"),))] > 0


def test_finished_runs_show_by_state_with_durations_and_workers(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    ok = session_with_runs(client, "fine", 4, "tests.tasks:sleeper", 0.01)
    [bad] = client.create("broken", task="tests.tasks:boom")
    workers.start(1)
    wait_for(lambda: ended(client, ok) and ended(client, bad), what="both sessions to end")

    def durations_seen() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        m = scrape(dashboard)
        done = m.get(("sessionq_run_duration_seconds_count", (("outcome", "succeeded"),)))
        failed = m.get(("sessionq_run_duration_seconds_count", (("outcome", "failed"),)))
        return m if (done, failed) == (4, 1) else None

    m = wait_for(durations_seen, what="the dashboard's listener to see the 5 runs end")
    assert m[("sessionq_runs", (("state", "succeeded"),))] == 4
    assert m[("sessionq_runs", (("state", "failed"),))] == 1
    assert m[("sessionq_sessions", (("status", "Completed"),))] == 1
    assert m[("sessionq_sessions", (("status", "Failed"),))] == 1
    assert m[("sessionq_queue_runs", (("queue", "default"), ("state", "finished")))] == 4
    assert m[("sessionq_queue_runs", (("queue", "default"), ("state", "failed")))] == 1
    assert m[("sessionq_queue_depth", (("queue", "default"),))] == 0
    assert m[("sessionq_oldest_queued_run_age_seconds", (("queue", "default"),))] == 0
    assert m[("sessionq_workers", ())] == 1
    assert m[("sessionq_run_duration_seconds_sum", (("outcome", "succeeded"),))] >= 0.04
    assert m[("sessionq_event_lag_seconds_count", ())] > 0
