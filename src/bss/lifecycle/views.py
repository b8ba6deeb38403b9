"""/user-optout: opt-outs (POST), their audit trail (GET) and withdrawals (DELETE)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal
from bss.api.deps import AppSettings, Db, Stores, member_scope, principal
from bss.api.envelope import ok, ok_list
from bss.api.lookup import user_key
from bss.api.query import TypedRoute
from bss.db import now_s
from bss.errors import BssError, Invalid, NotFound
from bss.identity.graph import related_ids
from bss.lifecycle import optout

router = APIRouter(route_class=TypedRoute)

NAME = "user_optout"


class OptOutRequest(BaseModel):
    """The body of POST /user-segments, plus `related`."""

    model_config = ConfigDict(extra="forbid")

    users: list[dict[str, str | int | None]] = Field(
        min_length=1,
        max_length=optout.MAX_USERS,
        description='Users as GET /user-segments names them: {"uid": "..."}, '
        '{"device_id": "...", "domain": "idfa"}, {"ifa": "...", "ifa_type": "aaid"}, '
        '{"external_id": "...", "external_member_id": 1}, {"eid": "...", "source": "..."}',
    )
    related: bool = Field(
        False, description="Also each user's related IDs (the identity graph's expansion)."
    )


def _parsed(users: list[dict[str, Any]], member_id: int | None) -> list[tuple[int, str]]:
    parsed = []
    for i, user in enumerate(users):
        try:
            kind, key = user_key(
                {k: str(v) for k, v in user.items() if v is not None and v != ""}, member_id
            )
        except BssError as exc:
            raise Invalid(f"users[{i}]: {exc.error}") from exc
        parsed.append((int(kind), key))
    return parsed


@router.post(
    "/user-optout",
    tags=["optout"],
    summary="Opt users out (?member_id=; an admin without it: platform-wide): their "
    "memberships and links go in every region and later writes for them are not applied",
)
async def post_optout(
    db: Db,
    settings: AppSettings,
    stores: Stores,
    body: OptOutRequest = Body(...),
    member_id: int | None = Query(None, ge=1, le=2**31 - 1),
    p: Principal = Depends(principal),
) -> Any:
    scope = member_scope(p, member_id, required=False)
    users = _parsed(body.users, scope)

    def run() -> optout.OptOutResult:
        store = stores.get()
        expanded = users
        if body.related:
            found = related_ids(store, users, scope, now_s(), settings.graph_caps)
            expanded = [*users, *((r.kind, r.key) for r in found.ids)]
        return optout.opt_out(
            db,
            settings,
            stores,
            member_id=scope,
            users=expanded,
            requested_by=p.username,
        )

    result = await run_in_threadpool(run)
    return ok(
        NAME,
        {
            "id": result.request_id,
            "member_id": scope,
            "ids": result.ids,
            "memberships_removed": result.memberships_removed,
            "links_removed": result.links_removed,
        },
    )


@router.get(
    "/user-optout",
    tags=["optout"],
    summary="The opt-out requests and withdrawals of a member (?member_id=; an admin "
    "without it: the platform-wide ones), newest first: who, when, how many IDs and removals",
)
def get_optouts(
    db: Db,
    member_id: int | None = Query(None, ge=1, le=2**31 - 1),
    start_element: int = Query(0, ge=0, le=2**31 - 1),
    num_elements: int = Query(100, ge=1, le=100),
    p: Principal = Depends(principal),
) -> Any:
    scope = member_scope(p, member_id, required=False)
    total, items = optout.list_requests(db, scope, start=start_element, limit=num_elements)
    return ok_list(
        "user_optouts",
        items,
        count=total,
        start_element=start_element,
        num_elements=num_elements,
    )


@router.delete(
    "/user-optout",
    tags=["optout"],
    summary="Withdraw the opt-out of one ID (?member_id=&<one ID form of GET "
    "/user-segments>): only writes after the withdrawal apply again",
)
def delete_optout(
    request: Request,
    db: Db,
    settings: AppSettings,
    member_id: int | None = Query(None, ge=1, le=2**31 - 1),
    p: Principal = Depends(principal),
) -> Any:
    scope = member_scope(p, member_id, required=False)
    kind, key = user_key(request.query_params, scope)
    withdrawn = optout.withdraw(
        db,
        settings,
        member_id=scope,
        user=(int(kind), key),
        requested_by=p.username,
    )
    if not withdrawn:
        raise NotFound("no opt-out of this ID stands in this scope")
    return ok(NAME, {"member_id": scope, "withdrawn": withdrawn})
