"""The identity graph's endpoints: POST /id-link (real-time links), GET /user-links, and
ID sync (`sync_router`: GET /getuid, /mapuid, /optout, PUT/GET /id-sync; the app includes
it without the one-value-per-parameter check, since the query of /getuid is a partner's URL)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal, member_exists
from bss.api.deps import (
    AppSettings,
    Caller,
    Db,
    Limiter,
    Stores,
    member_scope,
    principal,
    region_store_dependency,
    require_admin,
)
from bss.api.envelope import ok
from bss.api.lookup import user_key
from bss.api.params import MemberIdQuery, ScopedMemberIdQuery
from bss.api.query import RepeatableQueryRoute, TypedRoute, one_value_per_query_parameter
from bss.db import now_s
from bss.errors import Forbidden, Invalid, NotFound, RateLimited
from bss.identity import sync
from bss.identity.ids import OPTED_OUT_UID, InvalidId, parse_id
from bss.identity.service import MAX_LINKS_PER_POST, post_links, user_links
from bss.lifecycle.optout import SuppressionList
from bss.realtime.views import read_json_body
from bss.settings import Settings
from bss.store import MembershipStore
from bss.store.base import SHARED_SCOPE

router = APIRouter(route_class=TypedRoute)


@router.post(
    "/id-link",
    tags=["identity"],
    summary=f"Assert or remove up to {MAX_LINKS_PER_POST} links between user IDs at once",
    description="Refused with 400 SYNTAX, whatever the schema allows: a body that breaks the "
    "documented shape; links that cannot be applied are warnings.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def post_id_link(
    request: Request,
    p: Caller,
    db: Db,
    settings: AppSettings,
    stores: Stores,
    member_id: ScopedMemberIdQuery = None,
) -> Any:
    scope_member: int = member_scope(p, member_id)
    body = await read_json_body(request, settings.rt_max_post_bytes)
    scope_name = body.get("scope", "member") if isinstance(body, dict) else "member"
    if scope_name not in ("member", "shared"):
        raise Invalid('scope must be "member" or "shared"')
    if scope_name == "shared" and not p.is_admin:
        raise Forbidden("Only admin users may write shared links")
    if not await run_in_threadpool(member_exists, db, scope_member):
        raise NotFound(f"member {scope_member} not found")
    result = await run_in_threadpool(
        lambda: post_links(
            db,
            stores.get(),
            stores.remote_regions,
            scope=SHARED_SCOPE if scope_name == "shared" else scope_member,
            body=body,
            now=now_s(),
            ttl_days=settings.link_ttl_days,
            suppression=SuppressionList.of(db, settings),
        )
    )
    return ok("message", result.message(), warnings=result.warnings)


@router.get(
    "/user-links",
    tags=["identity"],
    summary="A user's related IDs and the links that relate them (id=uid=... or the lookup forms)",
)
def get_user_links(
    request: Request,
    p: Caller,
    settings: AppSettings,
    store: Annotated[MembershipStore, Depends(region_store_dependency)],
    member_id: MemberIdQuery = None,
    id: str | None = Query(None, description="The user in the link text form (uid=..., ext=M:ID)."),
) -> Any:
    scope_member = member_scope(p, member_id, required=False)
    if id:
        try:
            kind, key = parse_id(id)
        except InvalidId as exc:
            raise Invalid(str(exc)) from exc
    else:
        kind, key = user_key(request.query_params, scope_member)
    # A member sees its own links; admins see shared links too.
    scopes = [] if scope_member is None else [scope_member]
    if p.is_admin:
        scopes.append(SHARED_SCOPE)
    answer = user_links(store, (int(kind), key), scopes, now_s(), settings.graph_caps)
    return ok("ids", answer["ids"], links=answer["links"])


# --- ID sync (getuid, mapuid, optout) and its per-member settings -------------------------

sync_router = APIRouter(route_class=RepeatableQueryRoute)
NO_STORE = {"Cache-Control": "no-store"}


def _set_cookie(response: Response, settings: Settings, value: str) -> None:
    secure = (settings.public_url or "").lower().startswith("https://")
    response.set_cookie(
        settings.uid_cookie,
        value,
        max_age=sync.COOKIE_MAX_AGE,
        httponly=True,
        secure=secure,
        samesite="none" if secure else None,
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


@sync_router.get(
    "/getuid",
    tags=["id-sync"],
    summary="Redirect to ?<URL> with $UID replaced by the browser's uid (0 when unknown)",
    response_class=RedirectResponse,
    status_code=302,
    responses={302: {"description": "To the URL with $UID replaced (or to itself once)"}},
)
def get_uid(request: Request, settings: AppSettings) -> Any:
    params, url, check = sync.split_getuid_query(request.url.query)
    url = sync.check_redirect(url, settings.sync_hosts)
    uid = sync.cookie_uid(request.cookies.get(settings.uid_cookie))
    if uid == OPTED_OUT_UID or not sync.consent(params, settings.tcf_vendor_id).allowed:
        return _redirect(sync.with_uid(url, "0"))
    if uid is not None:
        response = _redirect(sync.with_uid(url, uid))
        _set_cookie(response, settings, uid)  # kept another Max-Age
        return response
    if check:  # the browser did not keep the cookie: third-party cookies blocked
        return _redirect(sync.with_uid(url, "0"))
    response = _redirect(f"{request.url.path}?{sync.COOKIE_CHECK}&{request.url.query}")
    _set_cookie(response, settings, sync.new_uid())
    return response


@sync_router.get(
    "/mapuid",
    tags=["id-sync"],
    summary="Link the member's user ID to the browser's uid (a 1x1 GIF)",
    response_class=Response,
    responses={200: {"description": "A 1x1 GIF", "content": {"image/gif": {}}}},
)
def get_map_uid(
    request: Request,
    db: Db,
    settings: AppSettings,
    stores: Stores,
    limiter: Limiter,
    member: int = Query(..., ge=1, le=2**31 - 1, description="The member whose ID this is."),
    user: str = Query(..., min_length=1, max_length=400, description="The member's user ID."),
    sig: str | None = Query(None, max_length=200, description="HMAC when the member set one."),
) -> Any:
    pixel = Response(sync.PIXEL_GIF, media_type="image/gif", headers=NO_STORE)
    uid = sync.cookie_uid(request.cookies.get(settings.uid_cookie))
    params = {k: v for k, v in request.query_params.items() if k in sync.CONSENT_PARAMS}
    if uid is None or uid == OPTED_OUT_UID:
        return pixel  # no cookie, no link
    if not sync.consent(params, settings.tcf_vendor_id).allowed:
        return pixel
    for key, limit in (
        (f"mapuid:uid:{uid}", settings.sync_uid_per_minute),
        (f"mapuid:member:{member}", settings.sync_member_per_minute),
    ):
        verdict = limiter.hit(key, limit, 60)
        if not verdict.allowed:
            raise RateLimited(
                f"Rate limit exceeded: at most {limit} mapuid calls per minute",
                retry_after=verdict.retry_after,
            )
    sync.map_uid(
        db,
        stores.get(),
        stores.remote_regions,
        member_id=member,
        user=user,
        sig=sig,
        uid=uid,
        ttl_days=settings.link_ttl_days,
    )
    return pixel


@sync_router.get(
    "/optout",
    tags=["id-sync"],
    summary="Opt this browser out of ID sync",
    response_class=PlainTextResponse,
)
def get_optout(settings: AppSettings) -> Any:
    response = Response("This browser is opted out: it is never synced.\n", media_type="text/plain")
    _set_cookie(response, settings, OPTED_OUT_UID)
    return response


class IdSyncSettings(BaseModel):
    enabled: bool
    secret: str | None = Field(None, min_length=16, max_length=200)


class IdSyncBody(BaseModel):
    id_sync: IdSyncSettings


@sync_router.put(
    "/id-sync",
    tags=["id-sync"],
    dependencies=[Depends(one_value_per_query_parameter)],
    summary="A member's ID-sync settings (admins)",
)
async def put_id_sync(
    body: IdSyncBody,
    db: Db,
    member_id: int = Query(..., ge=1, le=2**31 - 1),
    p: Principal = Depends(principal),
) -> Any:
    require_admin(p)
    if not await run_in_threadpool(member_exists, db, member_id):
        raise NotFound(f"member {member_id} not found")
    await run_in_threadpool(
        lambda: sync.set_sync_settings(
            db, member_id, enabled=body.id_sync.enabled, secret=body.id_sync.secret
        )
    )
    return ok("id_sync", {"member_id": member_id, "enabled": body.id_sync.enabled,
                          "has_secret": bool(body.id_sync.secret)})  # fmt: skip


@sync_router.get(
    "/id-sync",
    tags=["id-sync"],
    dependencies=[Depends(one_value_per_query_parameter)],
    summary="A member's ID-sync settings",
)
def get_id_sync(
    db: Db, member_id: int | None = Query(None), p: Principal = Depends(principal)
) -> Any:
    mid = member_scope(p, member_id)
    found = sync.sync_settings(db, mid)
    return ok(
        "id_sync",
        {"member_id": mid, "enabled": found["enabled"], "has_secret": bool(found["secret"])},
    )
