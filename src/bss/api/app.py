"""The FastAPI application: `create_app(settings)`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from bss.accounts.service import ensure_admin
from bss.accounts.views import router as accounts_router
from bss.api.deps import AppParts, SingleFlight
from bss.api.docs import add_docs_routes
from bss.api.envelope import error_response, http_error_response
from bss.api.lookup import router as lookup_router
from bss.api.openapi import install as install_openapi
from bss.api.params import validation_message
from bss.db import init_db, is_sqlite, make_engine
from bss.errors import BssError, Invalid, NotAuthenticated, StoreUnavailable, Unavailable
from bss.identity.views import router as identity_router
from bss.identity.views import sync_router as id_sync_router
from bss.jobs.service import JobService
from bss.jobs.views import router as jobs_router
from bss.jobs.worker import StoreHandle
from bss.leases import new_process_id
from bss.lifecycle.views import router as lifecycle_router
from bss.metrics import COUNTERS, render, scrape_allowed
from bss.ratelimit import DatabaseRateLimiter, ReservedBudget
from bss.realtime.service import RealtimeService
from bss.realtime.views import router as realtime_router
from bss.reports.views import router as reports_router
from bss.segments.views import router as segments_router
from bss.settings import Settings
from bss.targeting.views import router as targeting_router
from bss.web.views import mount_dashboard
from bss.webhooks.views import router as webhooks_router

log = logging.getLogger("bss.api")

_HTTP_IDS = {
    401: "NOAUTH",
    403: "UNAUTH",
    404: "NOTFOUND",
    405: "SYNTAX",
    413: "SYNTAX",
    429: "SYSTEM",
}


class AccessLog:
    """Pure ASGI access log (keeps request bodies streaming untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            COUNTERS.inc("bss_http_requests_total")
            client = scope.get("client")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status[0],
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )


def trusted_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """BSS_TRUSTED_PROXIES -> networks; a wrong entry stops start-up with one clear line."""
    out = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            out.append(ip_network(entry, strict=False))
        except ValueError as exc:
            raise SystemExit(
                f"BSS_TRUSTED_PROXIES: {entry!r} is not an address or network (CIDR)"
            ) from exc
    return tuple(out)


def create_app(
    settings: Settings,
    *,
    db: Engine | None = None,
    stores: StoreHandle | None = None,
    process_id: str | None = None,
) -> FastAPI:
    """The API; `process_id` names this process in the leases table (uploads it receives are
    failed once its lease lapses)."""
    settings.make_data_dir()
    if db is None:
        db = make_engine(settings.resolved_database_url)
        init_db(db)
    ensure_admin(db, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Blocking request work (database, store) runs in this many threads: more only adds
        # GIL hand-offs between threads that each need the interpreter for most of their work
        # (throughput fell as clients grew with anyio's default of 40).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="Batch Segment Service",
        version=version("bss"),
        description='Self-hostable Batch Segment Service; every response is wrapped as {"response": {...}}.',
        docs_url=None,  # served below from the package's own assets, not from a CDN
        redoc_url=None,
    )
    install_openapi(app)
    add_docs_routes(app)
    _set_state(app, settings, db, stores, process_id)
    _add_error_handlers(app)
    app.add_middleware(AccessLog)
    _include_routers(app)
    mount_dashboard(app)  # the web dashboard at / and /ui/...
    _add_ops_routes(app, settings)
    return app


def _set_state(
    app: FastAPI,
    settings: Settings,
    db: Engine,
    stores: StoreHandle | None,
    process_id: str | None,
) -> None:
    """The application's long-lived parts, which the views' dependencies hand out."""
    app.state.settings = settings
    app.state.db = db
    app.state.jobs = JobService(db, settings)
    app.state.stores = stores or StoreHandle.for_settings(settings)
    app.state.limiter = DatabaseRateLimiter(db)
    app.state.realtime = RealtimeService(db, settings, app.state.limiter)
    app.state.budget = ReservedBudget(app.state.limiter)  # API requests per member
    app.state.trusted_proxies = trusted_networks(settings.trusted_proxies)
    app.state.flights = SingleFlight()
    #: The hot reads (a user's segments, a job's status) answer on the event loop when all
    #: they touch is SQLite (WAL: a reader never waits for a writer) and the local LMDB
    #: store: microseconds, less than a thread hop costs. Over a network (PostgreSQL, Redis)
    #: they keep to a thread.
    app.state.inline_reads = is_sqlite(db) and app.state.stores.url.startswith("lmdb://")
    app.state.parts = AppParts(
        db, settings, app.state.stores, app.state.jobs, app.state.inline_reads
    )
    app.state.process_id = process_id or new_process_id()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered in the documented envelope."""

    @app.exception_handler(BssError)
    async def _api_error(_request: Request, exc: BssError) -> Any:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Any:
        error_id = _HTTP_IDS.get(exc.status_code, "SYNTAX" if exc.status_code < 500 else "SYSTEM")
        return http_error_response(exc.status_code, error_id, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        wrong_shape = getattr(request.scope.get("route"), "wrong_shape", None)
        return error_response(Invalid(validation_message(exc.errors(), wrong_shape)))

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> Any:
        # e.g. a lookup in a store region that is down (region=): the store's fault, said so
        log.warning("membership store unavailable", extra={"path": request.url.path})
        return error_response(Unavailable(str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        log.exception("unhandled error", extra={"path": request.url.path})
        return http_error_response(500, "SYSTEM", "Internal error; see the server log")


def _include_routers(app: FastAPI) -> None:
    # Routes are matched in order, router by router: the hot reads (a lookup, a job's
    # status) first.
    for router in (
        lookup_router,
        jobs_router,
        accounts_router,
        segments_router,
        identity_router,
        realtime_router,
        webhooks_router,
        reports_router,
        targeting_router,
        lifecycle_router,
    ):
        app.include_router(router)
    # ID sync: the query of GET /getuid is a partner's URL, whose own parameters may
    # repeat (RepeatableQueryRoute); its settings routes check their parameters themselves.
    app.include_router(id_sync_router)


def _add_ops_routes(app: FastAPI, settings: Settings) -> None:
    """GET /metrics (with the metrics token) and GET /health."""

    @app.get(
        "/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse
    )
    def metrics(request: Request) -> PlainTextResponse:
        if not scrape_allowed(settings.metrics_token, request.headers.get("authorization")):
            raise NotAuthenticated(
                "GET /metrics needs the metrics token: Authorization: Bearer <BSS_METRICS_TOKEN>"
            )
        return PlainTextResponse(
            render(app.state.jobs.counts_by_phase()), media_type="text/plain; version=0.0.4"
        )

    # On the event loop: a sync route would take a thread hop on every liveness probe.
    @app.get("/health", tags=["ops"], summary="Liveness")
    async def health() -> Any:
        return {"response": {"status": "OK", "dbg_info": {"output_term": None}}}
