"""POST /rt-segment: the real-time segment API (the documented Instant Audience payload)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import member_exists, principal_for_token
from bss.api.deps import AppSettings, Db, Stores, member_scope, token_of
from bss.api.envelope import ok
from bss.api.params import ScopedMemberIdQuery, Text, body_of, parse_json
from bss.api.query import TypedRoute
from bss.errors import Invalid, NotFound, TooLarge
from bss.realtime.service import RealtimeService
from bss.segments.service import get_config

router = APIRouter(route_class=TypedRoute)
MAX_IDEMPOTENCY_KEY = 200


#: A block's numbers are 64-bit (a number out of range is a 400; one that names nothing
#: is a warning).
Int64 = Annotated[int | None, Field(ge=-(2**63), le=2**63 - 1)]


class SegBlock(BaseModel):
    """One segment for the user: by seg_id, or by seg_code with member_id."""

    seg_id: Int64 = None
    seg_code: str | None = None
    member_id: Int64 = None
    value: Int64 = None
    expiration: Int64 = Field(
        None, description="Minutes the membership lasts; 0 uses the default, -1 removes it"
    )


class RtSegmentEntry(BaseModel):
    user_id: str | int | None = None
    domain: str | None = None
    seg_block: list[SegBlock] | None = None


class RtSegmentBody(BaseModel):
    """The documented Instant Audience payload. Entries that cannot be applied are reported
    as warnings in the answer, not refused: the body is checked by the service."""

    rt_segment: list[RtSegmentEntry]
    domain: str | None = Field(None, description="Default device ID type of the entries")


async def read_json_body(request: Request, limit: int) -> Any:
    """A JSON body of at most `limit` bytes (413 past it, read no further), nested at most
    bss.api.params.MAX_JSON_DEPTH levels."""
    declared = request.headers.get("content-length")
    too_large = TooLarge(f"the JSON payload exceeds {limit} bytes")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        if not raw.strip():
            return json.loads(raw)  # raises: an empty body is not JSON
        return parse_json(bytes(raw))
    except json.JSONDecodeError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from exc


async def _realtime(request: Request) -> RealtimeService:
    """The real-time service, one per application (bss.api.app)."""
    return request.app.state.realtime


Realtime = Annotated[RealtimeService, Depends(_realtime)]


@router.post(
    "/rt-segment",
    description="Refused with 400 SYNTAX, whatever the schema allows: a body that breaks the documented shape; entries that name nothing are warnings.",
    tags=["real-time"],
    summary="Add users to segments (or remove them) at once; token as header or ?access_token=",
    openapi_extra=body_of(RtSegmentBody),
)
async def post_rt_segment(
    request: Request,
    db: Db,
    settings: AppSettings,
    stores: Stores,
    rt: Realtime,
    access_token: Annotated[
        Text, Query(description="The token, for clients that cannot send a header")
    ] = None,
    member_id: ScopedMemberIdQuery = None,
    idempotency_key: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}),
        Header(description="Makes a retried post apply once (1 to 200 characters)"),
    ] = None,
) -> Any:
    token = access_token or token_of(request)
    p = await run_in_threadpool(principal_for_token, db, token)
    scoped: int = member_scope(p, member_id)
    rt.admit(scoped)
    key = idempotency_key
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid(f"Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
    body = await read_json_body(request, settings.rt_max_post_bytes)
    if not await run_in_threadpool(member_exists, db, scoped):
        raise NotFound(f"member {scoped} not found")
    if key is not None:
        earlier = await run_in_threadpool(rt.replay_or_claim, scoped, key, body)
        if earlier is not None:
            return ok("message", earlier["message"], warnings=earlier["warnings"], replayed=True)
    config = await run_in_threadpool(get_config, db, scoped)
    try:
        result = await run_in_threadpool(
            lambda: rt.apply(
                member_id=scoped,
                config=config,
                body=body,
                store=stores.get(),
                idempotency_key=key,
                other_regions=stores.remote_regions,
            )
        )
    except BaseException:
        if key is not None:
            await run_in_threadpool(rt.release_key, scoped, key)
        raise
    if key is not None:
        await run_in_threadpool(rt.remember, scoped, key, result)
    out = result.body()
    return ok("message", out["message"], warnings=out["warnings"])
