"""POST /rt-segment: the real-time segment API (the documented Instant Audience payload)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import member_exists, principal_for_token
from bss.api.deps import member_scope, token_of
from bss.api.envelope import ok
from bss.errors import Invalid, NotFound, TooLarge
from bss.realtime.service import RealtimeService
from bss.segments.service import get_config

router = APIRouter()
MAX_IDEMPOTENCY_KEY = 200


async def read_json_body(request: Request, limit: int) -> Any:
    """A JSON body of at most `limit` bytes (413 past it, read no further)."""
    declared = request.headers.get("content-length")
    too_large = TooLarge(f"the JSON payload exceeds {limit} bytes")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from exc


def _service(request: Request) -> RealtimeService:
    state = request.app.state
    if getattr(state, "realtime", None) is None:
        state.realtime = RealtimeService(state.db, state.settings, state.limiter)
    return state.realtime


@router.post(
    "/rt-segment",
    tags=["real-time"],
    summary="Add users to segments (or remove them) at once; token as header or ?access_token=",
)
async def post_rt_segment(request: Request) -> Any:
    state = request.app.state
    settings = state.settings
    token = request.query_params.get("access_token") or token_of(request)
    p = await run_in_threadpool(principal_for_token, state.db, token)
    member_id: int = member_scope(p, request.query_params.get("member_id"))
    rt = _service(request)
    rt.admit(member_id)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid(f"Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
    body = await read_json_body(request, settings.rt_max_post_bytes)
    if not await run_in_threadpool(member_exists, state.db, member_id):
        raise NotFound(f"member {member_id} not found")
    if key is not None:
        earlier = await run_in_threadpool(rt.replay_or_claim, member_id, key, body)
        if earlier is not None:
            return ok("message", earlier["message"], warnings=earlier["warnings"], replayed=True)
    config = await run_in_threadpool(get_config, state.db, member_id)
    try:
        result = await run_in_threadpool(
            lambda: rt.apply(
                member_id=member_id,
                config=config,
                body=body,
                store=state.stores.get(),
                idempotency_key=key,
                other_regions=state.stores.remote_regions,
            )
        )
    except BaseException:
        if key is not None:
            await run_in_threadpool(rt.release_key, member_id, key)
        raise
    if key is not None:
        await run_in_threadpool(rt.remember, member_id, key, result)
    out = result.body()
    return ok("message", out["message"], warnings=out["warnings"])
