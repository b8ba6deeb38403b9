"""Request-scoped helpers: the caller (token from header or cookie), member scope, throttling,
and the application's parts as typed dependencies (`db: Db`, `jobs: Jobs`, ...), so that views
never reach into `request.app.state`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Annotated, Any, Literal, overload

from fastapi import Depends, Request
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal, cached_principal, principal_for_token
from bss.api.params import RegionQuery
from bss.api.query import query_model
from bss.errors import Forbidden, Invalid, RateLimited
from bss.jobs.service import JobService
from bss.jobs.worker import StoreHandle
from bss.ratelimit import RateLimiter, ReservedBudget, Verdict
from bss.settings import Settings
from bss.store import MembershipStore

TOKEN_COOKIE = "bss_token"


def token_of(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        header = header.strip()
        scheme, _, rest = header.partition(" ")
        if rest and scheme.lower() in ("bearer", "token"):
            header = rest.strip()
        return header or None
    return request.cookies.get(TOKEN_COOKIE)


class SingleFlight:
    """Blocking calls run in a thread once per key at a time: callers asking for a key
    already in flight wait for that call instead of starting their own (a token read, a
    budget reservation: when one lapses, every concurrent request of that token would
    otherwise go to the thread pool at once)."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    def start(self, key: Hashable, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """The call in flight for `key`, or a new one (not waited for: `await` it, shielded)."""
        running = self._running.get(key)
        if running is not None and not running.done():  # a done one may await its callback
            return running
        future = asyncio.ensure_future(run_in_threadpool(fn, *args, **kw))
        self._running[key] = future

        def _done(f: asyncio.Future[Any]) -> None:
            if self._running.get(key) is f:
                del self._running[key]
            if not f.cancelled():
                f.exception()  # retrieved: a read made ahead may fail unseen

        future.add_done_callback(_done)
        return future

    async def run(self, key: Hashable, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.shield(self.start(key, fn, *args, **kw))


async def principal(request: Request) -> Principal:
    """Dependency: the authenticated caller (NOAUTH otherwise); throttled per member.

    Runs on the event loop: a token read less than a second ago comes from memory
    (accounts.service.cached_principal) and the request is counted from hits this process
    reserved (ratelimit.ReservedBudget). Only a token not in memory and a reservation go to
    a thread (database I/O), one at a time per token and per member; both are made ahead of
    need for busy tokens and members, so that their requests do not wait for them."""
    state = request.app.state
    db = state.db
    token = token_of(request)
    found, refresh = cached_principal(db, token)
    if found is None:
        found = await state.flights.run(("token", token), principal_for_token, db, token)
    elif refresh:
        state.flights.start(("token", token), principal_for_token, db, token)
    request.state.principal = found
    per_minute = state.settings.requests_per_minute
    if per_minute > 0:
        _check(await _count(state, _member_key(request, found), per_minute), per_minute)
    return found


async def _count(state: Any, key: str, per_minute: int) -> Verdict:
    budget: ReservedBudget = state.budget
    flight = ("budget", key, per_minute)
    while True:
        verdict, due = budget.take(key, per_minute, 60)
        if verdict is not None:
            if due:
                state.flights.start(flight, budget.reserve, key, per_minute, 60, use=False)
            return verdict
        # no hit held: reserve (or wait for the reservation in flight), then take one
        await state.flights.run(flight, budget.reserve, key, per_minute, 60, use=False)


def _member_key(request: Request, found: Principal) -> str:
    if found.member_id is not None:
        return f"member:{found.member_id}"
    member = request.query_params.get("member_id") or ""
    # never a key made of arbitrary text
    known = member.isascii() and member.isdigit() and len(member) <= 10
    return f"member:{int(member)}" if known else f"user:{found.user_id}"


def require_admin(p: Principal) -> None:
    if not p.is_admin:
        raise Forbidden("This service is available to admin users only")


@overload
def member_scope(p: Principal, member_id: int | None, *, required: Literal[True] = True) -> int: ...
@overload
def member_scope(p: Principal, member_id: int | None, *, required: bool) -> int | None: ...


def member_scope(p: Principal, member_id: int | None, *, required: bool = True) -> int | None:
    """The member a request acts for: a non-admin only ever acts for its own member.

    Only an admin acts for no member (without `required`): every other user has one."""
    if member_id is None:
        if p.is_admin:
            if required:
                raise Invalid("member_id is required")
            return None
        return p.member_id
    if not p.is_admin and member_id != p.member_id:
        raise Forbidden(f"You have no access to member {member_id}")
    return member_id


def can_touch(p: Principal, member_id: int) -> bool:
    return p.is_admin or p.member_id == member_id


def count_request(request: Request, member_key: str) -> None:
    """Count a request against a member's (or user's) budget, shared by every API process:
    HTTP 429 + Retry-After when over BSS_REQUESTS_PER_MINUTE (blocking: run in a thread)."""
    per_minute = request.app.state.settings.requests_per_minute
    if per_minute <= 0:
        return
    budget: ReservedBudget = request.app.state.budget
    verdict, _due = budget.take(member_key, per_minute, 60)
    if verdict is None:
        verdict = budget.reserve(member_key, per_minute, 60)
        assert verdict is not None  # reserve() with use=True always returns one
    _check(verdict, per_minute)


def _check(verdict: Verdict, per_minute: int) -> None:
    if not verdict.allowed:
        raise RateLimited(
            f"Too many requests: at most {per_minute} per minute per member",
            error_code="RATE_EXCEEDED",
            retry_after=verdict.retry_after,
        )


def client_address(request: Request) -> str:
    """The client's address: the peer's, or behind a proxy listed in BSS_TRUSTED_PROXIES, the
    nearest X-Forwarded-For entry that is not itself a trusted proxy (a client can put
    anything in that header; only the entries our own proxies appended are believed)."""
    peer = request.client.host if request.client else ""
    trusted = request.app.state.trusted_proxies
    if not trusted or not _in_networks(peer, trusted):
        return peer
    forwarded = [
        hop.strip()
        for line in request.headers.getlist("x-forwarded-for")
        for hop in line.split(",")
        if hop.strip()
    ]
    for hop in reversed(forwarded):
        if not _in_networks(hop, trusted):
            return hop
    return forwarded[0] if forwarded else peer


def _in_networks(address: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def database(request: Request) -> Engine:
    """The database engine, for code that runs outside a route's dependencies (the
    dashboard's session check)."""
    return request.app.state.db


async def _db(request: Request) -> Engine:
    return database(request)


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


async def _stores(request: Request) -> StoreHandle:
    return request.app.state.stores


async def _limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter


@dataclass(frozen=True)
class AppParts:
    """The application's long-lived parts as one dependency, for a hot view that needs
    several: FastAPI solves each dependency at about 15 us a request on this machine kind,
    however little it does, which a lookup's budget does not have four times over."""

    db: Engine
    settings: Settings
    stores: StoreHandle
    jobs: JobService
    #: Whether the reads may answer on the event loop (bss.api.app).
    inline_reads: bool


async def _parts(request: Request) -> AppParts:
    return request.app.state.parts


#: The database, the settings, the stores and the job service, in one dependency.
Parts = Annotated[AppParts, Depends(_parts)]
#: The database engine.
Db = Annotated[Engine, Depends(_db)]
#: The service's settings.
AppSettings = Annotated[Settings, Depends(_settings)]
#: The job service (queries, uploads, queue).
Jobs = Annotated[JobService, Depends(_jobs)]
#: The membership stores: the local one and the store regions.
Stores = Annotated[StoreHandle, Depends(_stores)]
#: The shared rate limiter (database-backed).
Limiter = Annotated[RateLimiter, Depends(_limiter)]
#: The authenticated caller (NOAUTH otherwise), throttled per member.
Caller = Annotated[Principal, Depends(principal)]


def region_store(request: Request, region: str | None = None) -> MembershipStore:
    """The membership store a read answers from: the local one, or the store region named
    by `region=` (400 for a region this service does not have). Called directly, without
    the declared parameter, it reads `region=` from the query itself."""
    return store_of(request.app.state.stores, region or request.query_params.get("region"))


def store_of(stores: StoreHandle, region: str | None) -> MembershipStore:
    """The local store, or `region`'s (400 for a region this service does not have)."""
    if not region:
        return stores.get()
    if region not in stores.regions:
        known = ", ".join(stores.regions) or "none: BSS_STORE_REGIONS is not set"
        raise Invalid(f"unknown region {region!r} (regions: {known})")
    return stores.get(region)


class RegionChoice(BaseModel):
    """region=, the store region a read answers from."""

    region: RegionQuery = None


async def region_store_dependency(
    request: Request, choice: Annotated[RegionChoice, Depends(query_model(RegionChoice))]
) -> MembershipStore:
    """region_store as a route's dependency: the local store on the event loop (a dict
    read), another region's in a thread (opening its first connection may wait on the
    network). A sync dependency would take a thread hop on every request."""
    stores, region = request.app.state.stores, choice.region
    if not region:
        return stores.get()
    return await run_in_threadpool(store_of, stores, region)
