"""The identity graph's endpoints: POST /id-link (real-time links) and GET /user-links."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import member_exists
from bss.api.deps import AppSettings, Caller, Db, Stores, member_scope, region_store_dependency
from bss.api.envelope import ok
from bss.api.lookup import user_key
from bss.api.params import MemberIdQuery, ScopedMemberIdQuery
from bss.db import now_s
from bss.errors import Forbidden, Invalid, NotFound
from bss.identity.ids import InvalidId, parse_id
from bss.identity.service import MAX_LINKS_PER_POST, post_links, user_links
from bss.lifecycle.optout import SuppressionList
from bss.realtime.views import read_json_body
from bss.store import MembershipStore
from bss.store.base import SHARED_SCOPE

router = APIRouter()


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
