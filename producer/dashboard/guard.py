"""Who may press the dashboard's buttons: the token guard and the same-origin check (SPEC §8).

Reading pages is open to whoever can reach the server; the control endpoints (pause, play,
step, stop, destroy) need the token whenever one is set, and one is always set when the server
listens beyond loopback. A browser presents it once (the token field of the page, or `?token=`
in any page's URL) and then carries it in an HttpOnly, SameSite=Strict cookie; other clients
send `Authorization: Bearer <token>` or `X-Sessionq-Token`. Every control request must also
come from the dashboard's own pages when it comes from a browser (its `Origin` matches the
host), so another site cannot press the buttons of a dashboard on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.requests import Request

log = logging.getLogger(__name__)
TOKEN_COOKIE = "sessionq_token"
TOKEN_HEADER = "x-sessionq-token"
TOKEN_FIELD = "token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
GENERATED_TOKEN_BYTES = 18


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_for(host: str, token: str | None) -> tuple[str | None, bool]:
    """The token the server will require (None: no guard) and whether it was generated here:
    a given token is always required; beyond loopback a missing one is generated."""
    if token:
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(GENERATED_TOKEN_BYTES), True


def presented_token(request: Request, form: Mapping[str, str] | None = None) -> str | None:
    """The token a request carries: header, bearer, form field, query or cookie."""
    header = request.headers.get(TOKEN_HEADER)
    if header:
        return header
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if form and form.get(TOKEN_FIELD):
        return form[TOKEN_FIELD]
    return request.query_params.get(TOKEN_FIELD) or request.cookies.get(TOKEN_COOKIE)


def token_ok(required: str | None, presented: str | None) -> bool:
    if required is None:
        return True
    return presented is not None and secrets.compare_digest(required, presented)


def same_origin(request: Request) -> bool:
    """A browser's request comes from a page of this server (no Origin: not a browser form)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    same = urlsplit(origin).netloc.lower() == host.lower()
    if not same:
        log.warning("refused a control request from origin %s (host %s)", origin, host)
    return same
