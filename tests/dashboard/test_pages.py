"""The dashboard's pages over HTTP: the session list with its filters and counts, a session's
page, its logs, and all of it behind a path prefix."""

from __future__ import annotations

import re
from collections.abc import Callable

from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.conftest import WorkerProcs, ended, wait_for
from tests.dashboard.conftest import RunningDashboard, read_sse, session_with_runs


def listed(html: str) -> list[str]:
    """Session ids in the list page's table, in order."""
    return re.findall(r'<tr data-session="([0-9a-f]+)">', html)


def test_list_filters_by_kind_status_owner_and_name_with_counts(
    client: Client, settings: Settings, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    fit = client.create("fit", task="tests.tasks:noop", replicas=2)
    [boom] = client.create("fitboom", task="tests.tasks:boom")
    persistent = client.open_session("notebook")
    with Client(settings=settings.__class__(**{**_fields(settings), "user": "alice"})) as alice:
        [theirs] = alice.create("fit-alice", task="tests.tasks:noop")
    workers.start(1)
    wait_for(lambda: all(ended(client, s) for s in [*fit, boom, theirs]), what="runs to end")
    http = dashboard.http

    page = http.get("/sessions")
    assert page.status_code == 200
    assert set(listed(page.text)) == {*fit, boom, theirs, persistent}
    assert _count(page.text, "all") == 5
    assert _count(page.text, "Completed") == 3 and _count(page.text, "Failed") == 1

    assert set(listed(http.get("/sessions?status=Completed").text)) == {*fit, theirs}
    assert listed(http.get("/sessions?status=Failed").text) == [boom]
    assert set(listed(http.get("/sessions?owner=alice").text)) == {theirs}
    assert listed(http.get("/sessions?kind=session").text) == [persistent]
    by_name = http.get("/sessions?name=fit-")
    assert set(listed(by_name.text)) == {*fit, theirs}  # a prefix, not a regex
    assert _count(by_name.text, "all") == 3
    combined = http.get("/sessions?name=fit&owner=tester&status=Failed")
    assert listed(combined.text) == [boom]
    assert _count(combined.text, "all") == 3 and _count(combined.text, "Completed") == 2
    assert http.get("/sessions?status=Bogus").status_code == 400
    assert http.get("/sessions?kind=Not_A_Kind").status_code == 400
    assert http.get("/").headers["location"] == "/sessions"


def _fields(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def _count(html: str, label: str) -> int:
    match = re.search(rf"{label} <b>(\d+)</b>", html)
    assert match, f"no count for {label}"
    return int(match.group(1))


def test_session_page_shows_progress_tasks_and_controls(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    sid = session_with_runs(client, "paged", 3, "tests.tasks:with_progress", 1)
    workers.start(1)
    wait_for(lambda: ended(client, sid), what="the session to end")
    page = dashboard.http.get(f"/sessions/{sid}")
    assert page.status_code == 200
    html = page.text
    assert 'role="progressbar"' in html and 'aria-valuenow="100"' in html
    assert '<span class="status st-completed" id="status">Completed</span>' in html
    assert len(re.findall(r'<tr data-task="', html)) == 3
    for action in ("pause", "play", "step", "stop", "destroy"):
        assert f'formaction="/sessions/{sid}/{action}"' in html
    assert f'data-stream="/sessions/{sid}/events?after=0"' in html
    assert 'name="token"' not in html  # loopback without a token: no guard
    assert dashboard.http.get(f"/sessions/{sid}/logs").text == (client.logs(sid) or {})[sid]
    assert dashboard.http.get("/sessions/nosuch").status_code == 404
    assert dashboard.http.get("/sessions/nosuch/logs").status_code == 404
    assert dashboard.http.get("/static/session.js").status_code == 200


def test_guarded_session_page_asks_for_the_token(
    client: Client, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    dashboard = start_dashboard(token="s3cret-token")
    [sid] = client.create("asks", task="tests.tasks:noop")
    assert 'name="token"' in dashboard.http.get(f"/sessions/{sid}").text
    dashboard.http.get(f"/sessions/{sid}?token=s3cret-token")  # sets the cookie
    assert 'name="token"' not in dashboard.http.get(f"/sessions/{sid}").text


def test_everything_works_under_a_root_path_with_or_without_the_proxy_stripping_it(
    client: Client, workers: WorkerProcs, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    dashboard = start_dashboard(root_path="/tools/sq")
    [sid] = client.create("rooted", task="tests.tasks:noop")
    workers.start(1)
    wait_for(lambda: ended(client, sid), what="the session to end")
    assert client.info(sid)[0]["connect_url"] == f"{dashboard.origin}/tools/sq/sessions/{sid}"
    for prefix in ("/tools/sq", ""):  # a proxy that keeps the prefix, one that strips it
        page = dashboard.http.get(f"{prefix}/sessions")
        assert page.status_code == 200
        assert f'href="/tools/sq/sessions/{sid}"' in page.text
        assert 'href="/tools/sq/static/dashboard.css"' in page.text
        session = dashboard.http.get(f"{prefix}/sessions/{sid}")
        assert f'data-stream="/tools/sq/sessions/{sid}/events?after=0"' in session.text
        assert 'src="/tools/sq/static/session.js"' in session.text
        assert dashboard.http.get(f"{prefix}/static/dashboard.css").status_code == 200
        assert dashboard.http.get(f"{prefix}/metrics").status_code == 200
        with dashboard.http.stream("GET", f"{prefix}/sessions/{sid}/events") as response:
            assert read_sse(response)[-1].event == "end"
    home = dashboard.http.get("/tools/sq/")
    assert home.headers["location"] == "/tools/sq/sessions"
    response = dashboard.http.post(f"/tools/sq/sessions/{sid}/destroy")
    assert response.headers["location"] == "/tools/sq/sessions"
