"""The dashboard's web app (SPEC §8): the session list, one live page per session, the control
buttons, the SSE stream and `/metrics`, on Starlette.

Build it with `create_app(settings, ...)`; `producer.dashboard.server` runs it under uvicorn.
Pages are rendered on the server (Jinja2) and a little plain JavaScript (static/session.js)
appends what the SSE stream brings; no build step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from sessionq.common.errors import NotFound, SessionqError, ValidationError
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status
from sessionq.producer.aio import AsyncClient
from sessionq.producer.dashboard import guard
from sessionq.producer.dashboard.announce import ANNOUNCE_TTL_S, Announcer
from sessionq.producer.dashboard.metrics import EventMetrics, build_registry
from sessionq.producer.dashboard.stream import session_events, start_after

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
MAX_LIST_ROWS = 500
MAX_TASK_ROWS = 1000
TAIL_EVENTS = 300
ACTIONS = ("pause", "play", "step", "stop", "destroy")
TOKEN_COOKIE_MAX_AGE_S = 7 * 24 * 3600


@dataclass(eq=False)
class Dashboard:
    """What the handlers share: the client, the token, where the app is mounted."""

    settings: Settings
    client: AsyncClient
    token: str | None = None
    root_path: str = ""
    public_url: str | None = None
    announce_ttl_s: float = ANNOUNCE_TTL_S
    registry: CollectorRegistry = field(init=False)
    event_metrics: EventMetrics = field(init=False)
    templates: Jinja2Templates = field(init=False)
    # set when the server shuts down: open SSE streams end so that it need not wait for them
    closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.registry, self.event_metrics = build_registry(self.client.sync)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def href(self, path: str) -> str:
        return f"{self.root_path}{path}"


class RootPath:
    """Serve under `root_path` whether or not a proxy in front strips it: the scope gets it as
    its root_path and, as ASGI has it, at the front of its path; links are built with it."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = self.root_path
        if root and scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != root and not path.startswith(f"{root}/"):
                path = f"{root}{path}"
            scope = {**scope, "root_path": root, "path": path}
        await self.app(scope, receive, send)


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


# -- pages -------------------------------------------------------------------------------------
async def home(request: Request) -> Response:
    return RedirectResponse(_dash(request).href("/sessions"), status_code=303)


async def sessions_page(request: Request) -> Response:
    dash, q = _dash(request), request.query_params
    kind, status = q.get("kind") or None, q.get("status") or None
    owner, name = q.get("owner") or "", q.get("name") or ""
    if status is not None and status not in Status.__members__.values():
        raise ValidationError("status", f"{status!r} is not a session status")
    records = await dash.client.fetch(kind=kind, view="all")
    owners = sorted({r["owner"] for r in records})
    kinds = sorted({r["kind"] for r in records} | {kind or "headless"})
    records = [r for r in records
               if (not owner or r["owner"] == owner) and r["name"].startswith(name)]  # fmt: skip
    counts = Counter(r["status"] for r in records)
    total = len(records)
    if status is not None:
        records = [r for r in records if r["status"] == status]
    records.reverse()  # newest first
    filters = {"kind": kind or "", "status": status or "", "owner": owner, "name": name}
    return _page(request, "sessions.html", {
        "records": records[:MAX_LIST_ROWS], "shown_of": len(records), "total": total,
        "counts": [(s.value, counts.get(s.value, 0)) for s in Status], "filters": filters,
        "owners": owners, "kinds": kinds, "stats": await dash.client.stats(),
    })  # fmt: skip


async def session_page(request: Request) -> Response:
    dash, sid = _dash(request), request.path_params["sid"]
    records = await dash.client.info(sid)
    if not records:
        raise HTTPException(404, f"no such session: {sid}")
    record = records[0]
    tasks = await dash.client.tasks(sid)
    (seq,) = await dash.client.seqs([sid])
    after = max(0, seq - TAIL_EVENTS)
    authorized = guard.token_ok(dash.token, request.cookies.get(guard.TOKEN_COOKIE))
    return _page(request, "session.html", {
        "s": record, "pct": int(record["progress"] * 100), "tasks": tasks[:MAX_TASK_ROWS],
        "task_count": len(tasks), "max_task_rows": MAX_TASK_ROWS, "after": after,
        "actions": ACTIONS, "ask_token": not authorized,
    })  # fmt: skip


async def logs_text(request: Request) -> Response:
    dash, sid = _dash(request), request.path_params["sid"]
    logs = await dash.client.logs(sid) or {}
    if sid not in logs:
        raise HTTPException(404, f"no such session: {sid}")
    return PlainTextResponse(logs[sid])


def _page(request: Request, name: str, context: dict[str, Any]) -> Response:
    """Render a page; a valid `?token=` becomes a cookie and is taken out of the URL."""
    dash = _dash(request)
    given = request.query_params.get(guard.TOKEN_FIELD)
    if dash.token is not None and given and guard.token_ok(dash.token, given):
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != guard.TOKEN_FIELD]
        query = urlencode(rest)
        target = dash.href(_route_path(dash, request))
        response: Response = RedirectResponse(f"{target}?{query}" if query else target, 303)
        return _set_token_cookie(dash, response)
    context = {"root": dash.root_path, "guarded": dash.token is not None, **context}
    return dash.templates.TemplateResponse(request, name, context)


def _route_path(dash: Dashboard, request: Request) -> str:
    """The request's path inside the app (RootPath put root_path in front of it)."""
    path: str = request.scope["path"]
    return path.removeprefix(dash.root_path)


def _set_token_cookie(dash: Dashboard, response: Response) -> Response:
    response.set_cookie(
        guard.TOKEN_COOKIE, dash.token or "", max_age=TOKEN_COOKIE_MAX_AGE_S,
        path=dash.root_path or "/", httponly=True, samesite="strict",
    )  # fmt: skip
    return response


# -- live and control --------------------------------------------------------------------------
async def events_stream(request: Request) -> Response:
    dash, sid = _dash(request), request.path_params["sid"]
    body = session_events(dash.client, dash.closing, sid, start_after(request))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


async def control(request: Request) -> Response:
    dash, sid, action = _dash(request), request.path_params["sid"], request.path_params["action"]
    if action not in ACTIONS:
        raise HTTPException(404, f"no such action: {action}")
    form: Mapping[str, str] = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
    if not guard.same_origin(request):
        raise HTTPException(403, "control requests must come from the dashboard's own pages")
    presented = guard.presented_token(request, form)
    if not guard.token_ok(dash.token, presented):
        raise HTTPException(401 if presented is None else 403, "a valid token is required")
    call: Callable[[list[str]], Awaitable[dict[str, bool]]] = getattr(dash.client, action)
    accepted = bool((await call([sid])).get(sid))
    log.info("dashboard: %s %s: %s", action, sid, "accepted" if accepted else "refused")
    response: Response
    if "application/json" in request.headers.get("accept", ""):
        response = JSONResponse({"session": sid, "action": action, "accepted": accepted})
    else:
        target = "/sessions" if action == "destroy" and accepted else f"/sessions/{sid}"
        response = RedirectResponse(dash.href(target), status_code=303)
    if dash.token is not None and presented != request.cookies.get(guard.TOKEN_COOKIE):
        _set_token_cookie(dash, response)
    return response


async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(generate_latest, _dash(request).registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# -- errors, lifespan, app ---------------------------------------------------------------------
async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code)


async def _bad_input(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), status_code=400)


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), status_code=404)


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dashboard request %s failed: %s", request.url.path, exc)
    return PlainTextResponse(str(exc), status_code=503)


async def _feed_metrics(dash: Dashboard) -> None:
    """Every session's events into the duration and lag histograms, while the app runs."""
    async for event in dash.client.listen(None):
        dash.event_metrics.observe(event)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    dash: Dashboard = app.state.dashboard
    announcer = None
    tasks = [asyncio.create_task(_feed_metrics(dash), name="dashboard-metrics")]
    if dash.public_url:
        announcer = Announcer(dash.client.redis, dash.client.keys, dash.public_url,
                              ttl_s=dash.announce_ttl_s)  # fmt: skip
        await announcer.announce()
        tasks.append(asyncio.create_task(announcer.keep(), name="dashboard-announce"))
    try:
        yield
    finally:
        dash.closing.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if announcer is not None:
            await announcer.withdraw()
        await dash.client.aclose()


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    root_path: str = "",
    public_url: str | None = None,
    announce_ttl_s: float = ANNOUNCE_TTL_S,
) -> Starlette:
    """The dashboard app; with `public_url` it registers that URL while it runs (lifespan)."""
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise ValidationError("root_path", f"{root_path!r} must start with / and not end with /")
    dash = Dashboard(
        settings=settings, client=AsyncClient(settings=settings), token=token,
        root_path=root_path, public_url=public_url, announce_ttl_s=announce_ttl_s,
    )  # fmt: skip
    routes = [
        Route("/", home),
        Route("/sessions", sessions_page),
        Route("/sessions/{sid}", session_page),
        Route("/sessions/{sid}/events", events_stream),
        Route("/sessions/{sid}/logs", logs_text),
        Route("/sessions/{sid}/{action}", control, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RootPath, root_path=root_path)],
        exception_handlers={
            HTTPException: _http_error, ValidationError: _bad_input, NotFound: _not_found,
            SessionqError: _unavailable,
        },
        lifespan=_lifespan,
    )  # fmt: skip
    app.state.dashboard = dash
    return app
