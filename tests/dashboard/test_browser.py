"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright): a
session page follows real workers to 100 %, and its buttons pause and play the session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionq.producer import Client
from tests.conftest import ROOT, WorkerProcs, wait_for
from tests.dashboard.conftest import RunningDashboard, session_with_runs

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
UI_TIMEOUT_MS = 30_000


def _ensure_chromium() -> None:
    """Install Debian's chromium when it is missing and we can (root with apt-get, as CI)."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            "no /usr/bin/chromium, and no root apt-get to install Debian's chromium "
            "(.ci/run installs it; as root: apt-get install chromium)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-q"], check=True, env=env, timeout=300)
    subprocess.run([apt, "install", "-y", "-q", "chromium"], check=True, env=env, timeout=600)
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is missing"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    yield context.new_page()
    context.close()


def test_session_page_follows_the_workers_to_100_percent(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard, page: Any
) -> None:
    from playwright.sync_api import expect

    sid = session_with_runs(client, "analysis", 16, "tests.tasks:with_progress", 2)
    page.goto(f"{dashboard.base}/sessions/{sid}")
    bar = page.locator("#progress")
    expect(bar).to_have_attribute("aria-valuenow", "0")
    expect(page.locator("#stream-state")).to_have_text("live", timeout=UI_TIMEOUT_MS)
    # record every value the bar shows from now on
    page.evaluate(
        """() => {
        window.seen = [];
        const bar = document.getElementById("progress");
        new MutationObserver(() => window.seen.push(Number(bar.getAttribute("aria-valuenow"))))
            .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
    }"""
    )
    workers.start(1)
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#progress-label")).to_have_text("100 %")
    expect(page.locator("#status")).to_have_text("Completed", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#stream-state")).to_have_text("session ended", timeout=UI_TIMEOUT_MS)
    seen = page.evaluate("window.seen")
    assert any(0 < value < 100 for value in seen), f"the bar jumped straight to 100: {seen}"
    assert seen == sorted(seen)
    expect(page.locator("#tasks tbody tr")).to_have_count(16)
    expect(page.locator("#tasks .st-succeeded")).to_have_count(16)
    expect(page.locator("#logs")).to_contain_text("all steps done")
    expect(page.locator("#events li").last).to_contain_text("session.completed")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "session-page.png"))
    assert client.info(sid)[0]["status"] == "Completed"


def test_pause_button_pauses_the_session_and_play_resumes_it(
    client: Client, workers: WorkerProcs, dashboard: RunningDashboard, page: Any
) -> None:
    from playwright.sync_api import expect

    sid = session_with_runs(client, "pausable", 40, "tests.tasks:sleeper", 0.2)
    workers.start(1)
    wait_for(lambda: client.info(sid)[0]["status"] == "Running", what="the session to run")
    page.goto(f"{dashboard.base}/sessions/{sid}")
    expect(page.locator("#status")).to_have_text("Running")
    page.locator("button[data-action=pause]").click()
    expect(page.locator("#control-result")).to_have_text("pause: accepted")
    expect(page.locator("#status")).to_have_text("Paused", timeout=UI_TIMEOUT_MS)
    assert client.info(sid)[0]["status"] == "Paused"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "session-paused.png"))
    page.locator("button[data-action=play]").click()
    expect(page.locator("#control-result")).to_have_text("play: accepted")
    expect(page.locator("#status")).to_have_text("Running", timeout=UI_TIMEOUT_MS)
    page.on("dialog", lambda dialog: dialog.accept())  # destroy asks first
    page.locator("button[data-action=destroy]").click()
    expect(page.locator("#control-result")).to_have_text("destroy: accepted")
    wait_for(lambda: client.info(sid) == [], what="the session to be destroyed")
    expect(page.locator("#status")).to_have_text("Destroyed", timeout=UI_TIMEOUT_MS)
