"""The live web dashboard and Prometheus metrics of SPEC §8 (extra `dashboard`).

Importing this package needs the extra's packages (Starlette, uvicorn, Jinja2,
prometheus-client); the `sessionq dashboard` command loads it only when it runs.
"""

from sessionq.producer.dashboard.app import create_app
from sessionq.producer.dashboard.server import DashboardServer, build_server, serve

__all__ = ["DashboardServer", "build_server", "create_app", "serve"]
