"""Browser safety for the whole service: security headers on every response, and a check that
a state-changing request made by a browser comes from this service's own pages.

The session is the documented token cookie (HttpOnly, SameSite=Lax). A browser sends it
with any request to this origin, so for a browser the cookie alone must not be enough to
change data: such a request must also carry `X-CSRF-Token`, a value derived from the
session token that only a page of this service (same origin) can read. Another site's
page cannot set that header without a CORS preflight, which this service never grants.

Clients that are not browsers (curl -b cookies, the Python client) send neither `Origin`
nor `Sec-Fetch-Site`; they keep working as documented.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import cookie_parser

from bss.api.deps import TOKEN_COOKIE
from bss.api.envelope import error_response
from bss.errors import Forbidden

CSRF_HEADER = "x-csrf-token"
#: Scripts, styles, images and connections only from this origin; no inline script or
#: style, no plugins, no framing, forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def csrf_token_for(session_token: str) -> str:
    """The value a page sends in X-CSRF-Token: bound to its session, useless elsewhere."""
    return hmac.new(session_token.encode(), b"bss-dashboard-csrf", hashlib.sha256).hexdigest()


def _refusal(message: str) -> Any:
    return error_response(Forbidden(message, error_code="CSRF"))


def origin_of(url: str | None) -> str | None:
    """scheme://host[:port] of a URL such as BSS_PUBLIC_URL."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def browser_refusal(
    method: str, path: str, headers: dict[str, str], public_origin: str | None = None
) -> str | None:
    """Why a request must be refused (None: let it through). `public_origin` is the origin
    of BSS_PUBLIC_URL: behind a proxy the Host header may name the backend instead."""
    if method not in _STATE_CHANGING:
        return None
    fetch_site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    host = headers.get("host", "")
    if fetch_site in ("cross-site", "same-site"):
        return "Cross-site request refused: this service acts only for its own pages"
    if origin is not None and origin.split("://", 1)[-1] != host and origin != public_origin:
        return "Cross-origin request refused: this service acts only for its own pages"
    if fetch_site is None and origin is None:
        return None  # not a browser
    if "authorization" in headers or (path == "/auth" and method == "POST"):
        return None  # the caller proved itself with a header, or is not yet logged in
    # The framework's parser, the one that finds the session for the request: a header it
    # reads differently from another parser cannot hide the session from this check.
    session = cookie_parser(headers.get("cookie", "")).get(TOKEN_COOKIE)
    if session is None:
        return None  # no ambient credential: the request is judged by its own token
    sent = headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent, csrf_token_for(session)):
        return (
            "Missing or wrong X-CSRF-Token: a browser request that changes data needs the "
            "token of this service's page, not just the session cookie"
        )
    return None


class BrowserGuard:
    """Pure ASGI middleware (request bodies keep streaming untouched)."""

    def __init__(self, app: Any, public_url: str | None = None) -> None:
        self.app = app
        self.public_origin = origin_of(public_url)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = browser_refusal(scope["method"], scope["path"], headers, self.public_origin)

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if refusal is not None:
            await _refusal(refusal)(scope, receive, _send)
            return
        await self.app(scope, receive, _send)
