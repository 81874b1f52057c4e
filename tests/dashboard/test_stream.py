"""The SSE stream of a session page: events with seq ids, records, resume without gap."""

from __future__ import annotations

from typing import Any

from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for
from tests.dashboard.conftest import (
    Message,
    RunningDashboard,
    events_of,
    read_sse,
    session_with_runs,
)


def test_stream_replays_an_ended_session_with_seq_ids_then_ends(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    sid = session_with_runs(client, "streamed", 5, "tests.tasks:add", 1, 2)
    workers.start(1)
    wait_for(lambda: ended(client, sid), what="the session to end")
    with dashboard.http.stream("GET", f"/sessions/{sid}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = read_sse(response)
    events = events_of(messages)
    kept = client.events(sid) or []
    assert [e["seq"] for e in events] == [e["seq"] for e in kept]
    assert events == kept
    assert [m.id for m in messages if m.event == "message"] == [str(e["seq"]) for e in kept]
    records = [m.json for m in messages if m.event == "record"]
    assert records[-1]["status"] == "Completed" and records[-1]["progress"] == 1.0
    assert records[-1]["tasks"]["succeeded"] == 5
    assert messages[-1].event == "end"


def test_stream_starts_after_the_seq_asked_for(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    sid = session_with_runs(client, "tail", 3, "tests.tasks:noop")
    workers.start(1)
    wait_for(lambda: ended(client, sid), what="the session to end")
    last = (client.events(sid) or [])[-1]["seq"]
    with dashboard.http.stream("GET", f"/sessions/{sid}/events?after={last - 2}") as response:
        assert [e["seq"] for e in events_of(read_sse(response))] == [last - 1, last]
    response = dashboard.http.get(f"/sessions/{sid}/events?after=-1")
    assert response.status_code == 400


def test_reconnecting_with_last_event_id_resumes_without_gap_or_duplicate(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    sid = session_with_runs(client, "resumed", 12, "tests.tasks:with_progress", 2)
    seen: list[dict[str, Any]] = []
    with dashboard.http.stream("GET", f"/sessions/{sid}/events") as response:
        workers.start(1)  # events start flowing while the browser is connected

        def far_enough(m: Message) -> bool:
            return m.event == "message" and m.json["seq"] >= 20

        first = read_sse(response, far_enough)
    seen += events_of(first)
    last_id = [m.id for m in first if m.id is not None][-1]
    # the browser's EventSource reconnects sending Last-Event-ID (it wins over ?after=)
    headers = {"Last-Event-ID": last_id}
    with dashboard.http.stream(
        "GET", f"/sessions/{sid}/events?after=0", headers=headers
    ) as response:
        second = read_sse(response)
    assert second[-1].event == "end"
    resumed = events_of(second)
    assert resumed[0]["seq"] == int(last_id) + 1
    seen += resumed
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(1, seqs[-1] + 1))  # no gap, no duplicate
    assert seen == client.events(sid)
    assert seen[-1]["type"] == "session.completed"


def test_stream_of_an_unknown_session_says_gone_and_ends(dashboard: RunningDashboard) -> None:
    with dashboard.http.stream("GET", "/sessions/nosuchsession/events") as response:
        messages = read_sse(response)
    assert [m.event for m in messages] == ["record", "end"]
    assert messages[0].json == {"gone": True}
