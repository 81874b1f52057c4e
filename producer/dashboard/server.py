"""Running the dashboard under uvicorn: access policy, registration URL, clean shutdown."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from sessionq.common.connection import connect
from sessionq.common.settings import Settings
from sessionq.producer.dashboard.announce import ANNOUNCE_TTL_S, public_url
from sessionq.producer.dashboard.app import Dashboard, create_app
from sessionq.producer.dashboard.guard import token_for

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
GRACEFUL_SHUTDOWN_S = 3


class DashboardServer(uvicorn.Server):
    """A uvicorn server that ends the app's open SSE streams when it is asked to stop (else
    it would wait for every watching browser to go away)."""

    def __init__(self, config: uvicorn.Config, dash: Dashboard) -> None:
        super().__init__(config)
        self.dash = dash

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.dash.closing.set()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Ask a server running in another thread to shut down."""
        self.dash.closing.set()
        self.should_exit = True


def build_server(
    settings: Settings,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    root_path: str = "",
    url: str | None = None,
    announce_ttl_s: float = ANNOUNCE_TTL_S,
    sock: socket.socket | None = None,
    log_level: str = "warning",
) -> DashboardServer:
    """The server for `sessionq dashboard`; with `sock`, it serves that bound socket."""
    if sock is not None:
        host, port = sock.getsockname()[:2]
    app = create_app(
        settings, token=token, root_path=root_path,
        public_url=url or public_url(host, port, root_path), announce_ttl_s=announce_ttl_s,
    )  # fmt: skip
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, access_log=False, log_config=None,
    )  # fmt: skip
    return DashboardServer(config, app.state.dashboard)


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    token: str | None,
    root_path: str,
    url: str | None,
    echo: Callable[[str], None] = print,
) -> None:
    """Check Redis, settle the token, print where to go, then serve until Ctrl-C/SIGTERM."""
    token, generated = token_for(host, token)
    server = build_server(settings, host=host, port=port, token=token, root_path=root_path,
                          url=url, log_level="info")  # fmt: skip
    connect(settings).close()  # ConnectionFailed (one line, exit 1) before anything starts
    dash = server.dash
    echo(f"sessionq dashboard on {dash.public_url}/ (Ctrl-C stops it)")
    if generated:
        echo(f"control token (listening beyond loopback): {token}")
        echo(
            f"  open {dash.public_url}/?token={token} once, or send 'Authorization: Bearer <token>'"
        )
    elif token:
        echo("control buttons need the token given with --token")
    # uvicorn re-raises the signal it stopped on: after a clean shutdown SIGTERM exits 0
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
