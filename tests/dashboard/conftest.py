"""Fixtures for the dashboard: a real uvicorn server on a free loopback port, an SSE reader."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.jobhash import build_run
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.producer.dashboard import DashboardServer, build_server
from tests.conftest import wait_for


@dataclass
class RunningDashboard:
    """A dashboard serving on a loopback port in a thread of the test process."""

    server: DashboardServer
    thread: threading.Thread
    origin: str  # scheme://host:port
    root_path: str = ""
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.origin, timeout=30)

    @property
    def base(self) -> str:
        return f"{self.origin}{self.root_path}"

    def stop(self) -> None:
        self.http.close()
        self.server.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the dashboard did not shut down"


@pytest.fixture
def start_dashboard(settings: Settings, redis: Redis) -> Iterator[Callable[..., RunningDashboard]]:
    """start_dashboard(**build_server options) -> a running dashboard, stopped at teardown."""
    running: list[RunningDashboard] = []

    def start(**options: Any) -> RunningDashboard:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = build_server(settings, sock=sock, **options)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), what="the dashboard to start")
        assert server.started, "the dashboard failed to start"
        # its metrics listener follows every session from here on
        channel = Keys(settings.prefix).events_all_channel()
        wait_for(lambda: sync_reply(redis.pubsub_numsub(channel))[0][1] > len(running),
                 what="the dashboard's listener to subscribe")  # fmt: skip
        host, port = sock.getsockname()[:2]
        dash = RunningDashboard(server, thread, f"http://{host}:{port}",
                                options.get("root_path", ""))  # fmt: skip
        running.append(dash)
        return dash

    yield start
    for dash in running:
        if dash.thread.is_alive():
            dash.stop()


@pytest.fixture
def dashboard(start_dashboard: Callable[..., RunningDashboard]) -> RunningDashboard:
    return start_dashboard()


@dataclass
class Message:
    """One server-sent event as a browser's EventSource sees it."""

    event: str = "message"
    id: str | None = None
    data: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.data)


def read_sse(
    response: httpx.Response, stop: Callable[[Message], bool] = lambda m: m.event == "end"
) -> list[Message]:
    """Messages from a streaming response until `stop(message)` is true or the stream ends."""
    out: list[Message] = []
    current = Message()
    for line in response.iter_lines():
        if line == "":
            if current.data or current.event != "message" or current.id is not None:
                out.append(current)
                if stop(current):
                    return out
            current = Message()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data = f"{current.data}\n{value}" if current.data else value
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
    return out


def events_of(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.json for m in messages if m.event == "message"]


def session_with_runs(client: Client, name: str, n: int, task: str, *args: Any) -> str:
    """A persistent session holding `n` queued runs of `task(*args)`."""
    sid = client.open_session(name)
    client.add_runs(sid, [build_run(name=f"{name}-{i}", task=task, args=list(args))
                          for i in range(n)])  # fmt: skip
    return sid
