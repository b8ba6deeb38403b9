"""POST /openrtb/user-data (a bid request's segments as OpenRTB Data objects) and
GET/PUT /openrtb/settings (a member's answer settings)."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal
from bss.api.deps import Db, member_scope, principal, region_store
from bss.api.envelope import ok
from bss.api.params import ScopedMemberIdQuery
from bss.api.query import TypedRoute
from bss.errors import Invalid, NotFound, TooLarge
from bss.lifecycle.optout import SuppressionList
from bss.targeting import data_settings
from bss.targeting.catalog import Catalog, MemberSettings, write_member_settings
from bss.targeting.service import Targeting, merge_user_data

router = APIRouter(route_class=TypedRoute, tags=["openrtb"])

_BID_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "An OpenRTB 2.5 or 2.6 BidRequest; only user, device and regs are read.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "user": {"type": "object"},
                        "device": {"type": "object"},
                        "regs": {"type": "object"},
                    },
                }
            }
        },
    }
}


#: Nesting a merged request may have: it is sent back, and JSON encoders recurse (a real bid
#: request nests under ten levels).
MAX_MERGE_DEPTH = 100


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests more than `limit` arrays and objects deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def targeting_of(request: Request) -> Targeting:
    """The app's Targeting over the store a read answers from (region= names another)."""
    state = request.app.state
    catalog = getattr(state, "openrtb_catalog", None)
    if catalog is None:
        catalog = state.openrtb_catalog = Catalog(state.db)
        state.openrtb_settings = data_settings(state.settings)
    suppression = SuppressionList.of(state.db, state.settings)
    return Targeting(region_store(request), catalog, state.openrtb_settings, suppression)


async def _bid_request(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    too_large = TooLarge(f"the bid request exceeds {limit} bytes")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Invalid("the body is not valid JSON: post an OpenRTB BidRequest object") from exc
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object: an OpenRTB BidRequest")
    return body


@router.post(
    "/openrtb/user-data",
    summary="The segments of a bid request's user as OpenRTB Data objects (merge=true: the "
    "request with them in user.data)",
    openapi_extra=_BID_REQUEST_BODY,
)
async def post_user_data(
    request: Request,
    member_id: ScopedMemberIdQuery = None,
    merge: bool = Query(False, description="Answer the posted request with user.data filled"),
    related: bool = Query(True, description="Also read IDs related through links"),
    explain: bool = Query(
        False,
        description="Add `segments`: each segment's id and code, where the Data objects name "
        "it, and the ID its membership came from",
    ),
    p: Principal = Depends(principal),
) -> Any:
    member = member_scope(p, member_id)
    body = await _bid_request(request, request.app.state.settings.openrtb_max_request_bytes)
    if merge and nested_deeper_than(body, MAX_MERGE_DEPTH):
        raise Invalid(f"the bid request nests more than {MAX_MERGE_DEPTH} levels deep")
    targeting = targeting_of(request)

    def answer() -> Any:
        if targeting.catalog.member(member) is None:
            raise NotFound(f"member {member} not found")
        return targeting.answer(body, member, related=related)

    if request.app.state.inline_reads and not request.query_params.get("region"):
        found = answer()
    else:
        found = await run_in_threadpool(answer)
    extras: dict[str, Any] = {
        "ids": found.ids,
        "related_ids": found.related_ids,
        "reason": found.reason,
    }
    if explain:
        extras["segments"] = [source.out() for source in found.sources]
    if merge:
        merged = merge_user_data(body, found.data, targeting.settings.data_id)
        return ok("request", merged, **extras, skipped=found.skipped)
    return ok("data", found.data, **extras, skipped=found.skipped)


class OpenrtbSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id_is_external: bool = False
    segment_id_field: Literal["id", "code"] = "id"


class OpenrtbSettingsBody(BaseModel):
    openrtb_settings: OpenrtbSettings


@router.get("/openrtb/settings", summary="A member's OpenRTB answer settings")
def get_settings(
    request: Request,
    member_id: ScopedMemberIdQuery = None,
    p: Principal = Depends(principal),
) -> Any:
    member = member_scope(p, member_id)
    settings = targeting_of(request).catalog.member(member)
    if settings is None:
        raise NotFound(f"member {member} not found")
    return ok("openrtb_settings", settings.out())


@router.put("/openrtb/settings", summary="Set a member's OpenRTB answer settings")
def put_settings(
    request: Request,
    body: OpenrtbSettingsBody,
    db: Db,
    member_id: ScopedMemberIdQuery = None,
    p: Principal = Depends(principal),
) -> Any:
    member = member_scope(p, member_id)
    catalog = targeting_of(request).catalog
    catalog.forget_member(member)
    if catalog.member(member) is None:
        raise NotFound(f"member {member} not found")
    settings = MemberSettings(**body.openrtb_settings.model_dump())
    write_member_settings(db, member, settings)
    catalog.forget_member(member)
    return ok("openrtb_settings", settings.out())
