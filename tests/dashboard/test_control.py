"""The control endpoints: the token guard, the same-origin check, the actions themselves."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sessionq.producer import Client
from sessionq.producer.dashboard.guard import TOKEN_COOKIE, is_loopback, token_for
from tests.conftest import WorkerProcs, wait_for
from tests.dashboard.conftest import RunningDashboard, session_with_runs

JSON = {"Accept": "application/json"}


def test_loopback_needs_no_token_but_another_host_gets_one() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("dash.example.org")
    assert token_for("127.0.0.1", None) == (None, False)
    assert token_for("127.0.0.1", "given") == ("given", False)
    assert token_for("0.0.0.0", "given") == ("given", False)
    token, generated = token_for("0.0.0.0", None)
    assert generated and token and len(token) >= 20
    assert token_for("::", None)[0] != token


def test_destroy_button_without_a_token_on_loopback(
    client: Client, dashboard: RunningDashboard
) -> None:
    [sid] = client.create("doomed", task="tests.tasks:noop")
    response = dashboard.http.post(f"/sessions/{sid}/destroy", headers=JSON)
    assert response.status_code == 200
    assert response.json() == {"session": sid, "action": "destroy", "accepted": True}
    assert client.info(sid)[0]["status"] == "Terminating"


def test_form_post_redirects_back_and_refusals_are_reported(
    client: Client, dashboard: RunningDashboard
) -> None:
    [sid] = client.create("formed", task="tests.tasks:noop")
    response = dashboard.http.post(f"/sessions/{sid}/destroy", data={})
    assert response.status_code == 303 and response.headers["location"] == "/sessions"
    response = dashboard.http.post("/sessions/nosuch/destroy", headers=JSON)
    assert response.json()["accepted"] is False
    assert dashboard.http.post(f"/sessions/{sid}/explode", headers=JSON).status_code == 404
    assert dashboard.http.get(f"/sessions/{sid}/destroy").status_code == 405


def test_token_guards_every_action(
    client: Client, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    dashboard = start_dashboard(token="s3cret-token")
    [sid] = client.create("guarded", task="tests.tasks:noop")
    http = dashboard.http
    for action in ("pause", "play", "step", "stop", "destroy"):
        assert http.post(f"/sessions/{sid}/{action}", headers=JSON).status_code == 401
        wrong = {**JSON, "Authorization": "Bearer nope"}
        assert http.post(f"/sessions/{sid}/{action}", headers=wrong).status_code == 403
    assert client.info(sid)[0]["status"] == "Pending"  # nothing got through
    ok = {**JSON, "Authorization": "Bearer s3cret-token"}
    response = http.post(f"/sessions/{sid}/destroy", headers=ok)
    assert response.status_code == 200 and response.json()["accepted"] is True


def test_token_from_the_page_becomes_a_cookie(
    client: Client, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    dashboard = start_dashboard(token="s3cret-token")
    [sid] = client.create("cookie", task="tests.tasks:noop")
    http = dashboard.http
    page = http.get("/sessions?status=Pending")
    assert 'name="token"' not in page.text  # the list has no buttons
    response = http.get("/sessions?status=Pending&token=wrong")
    assert response.status_code == 200 and TOKEN_COOKIE not in response.cookies
    response = http.get("/sessions?status=Pending&token=s3cret-token")
    assert response.status_code == 303
    assert response.headers["location"] == "/sessions?status=Pending"  # token out of the URL
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    response = http.post(f"/sessions/{sid}/destroy", headers=JSON)  # the cookie carries it
    assert response.status_code == 200 and response.json()["accepted"] is True


def test_form_field_token_is_accepted(
    client: Client, start_dashboard: Callable[..., RunningDashboard]
) -> None:
    dashboard = start_dashboard(token="s3cret-token")
    [sid] = client.create("field", task="tests.tasks:noop")
    response = dashboard.http.post(f"/sessions/{sid}/destroy", data={"token": "s3cret-token"})
    assert response.status_code == 303
    assert TOKEN_COOKIE in response.cookies


@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_another_sites_page_cannot_press_the_buttons(
    client: Client, start_dashboard: Callable[..., RunningDashboard], token: str | None
) -> None:
    dashboard = start_dashboard(token=token)
    [sid] = client.create("csrf", task="tests.tasks:noop")
    headers = {**JSON, "Origin": "http://evil.example", "X-Sessionq-Token": token or ""}
    assert dashboard.http.post(f"/sessions/{sid}/destroy", headers=headers).status_code == 403
    headers["Origin"] = dashboard.origin
    assert dashboard.http.post(f"/sessions/{sid}/destroy", headers=headers).status_code == 200
    wait_for(lambda: client.info(sid)[0]["status"] == "Terminating", what="destroy accepted")


def test_pause_step_play_and_stop_buttons_control_the_session(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard
) -> None:
    sid = session_with_runs(client, "controlled", 30, "tests.tasks:sleeper", 0.2)
    workers.start(1)
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the session to run")

    def press(action: str) -> bool:
        response = dashboard.http.post(f"/sessions/{sid}/{action}", headers=JSON)
        assert response.status_code == 200
        return bool(response.json()["accepted"])

    def status() -> str:
        return str(client.info(sid)[0]["status"])

    assert press("pause")
    assert status() == "Paused"  # pause returns once no further run can start
    wait_for(lambda: client.info(sid)[0]["tasks"]["started"] == 0, what="the running run to end")
    done = client.info(sid)[0]["tasks"]["succeeded"]
    assert press("step")
    wait_for(lambda: client.info(sid)[0]["tasks"]["succeeded"] == done + 1, what="one step")
    assert status() == "Paused"
    assert press("play")
    assert status() == "Running"
    assert press("stop")
    wait_for(lambda: status() == "Stopped", what="the session to stop")
    assert client.info(sid)[0]["tasks"]["canceled"] > 0
