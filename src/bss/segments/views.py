"""/segment (per member CRUD) and /batch-segment-config (admin; a member may set its webhook)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal, member_exists
from bss.api.deps import (
    body_doc,
    can_touch,
    int_param,
    json_body,
    member_scope,
    principal,
    region_store,
    require_admin,
)
from bss.api.envelope import ok, ok_list
from bss.db import bounded_int, now_s
from bss.errors import Forbidden, Invalid, NotFound
from bss.segments import service
from bss.webhooks.service import MEMBER_WRITABLE_FIELDS, check_webhook_target

router = APIRouter()
_SEGMENT_BODY = body_doc(
    "segment",
    {
        "id": "integer",
        "code": "string",
        "short_name": "string",
        "description": "string",
        "state": "string",
        "expire_minutes": "integer",
        "taxonomy_id": "integer",
        "taxonomy_node": "string",
    },
)
_CONFIG_BODY = body_doc(
    "batch_segment_upload_config",
    {
        **{f"separator_{i}": "string" for i in range(1, 6)},
        "segment_fields": "string",
        "default_expiration": "integer",
        "num_error_log_lines": "integer",
        "num_invalid_before_error": "integer",
        "daily_byte_limit": "integer",
        "hourly_byte_limit": "integer",
        "daily_num_lines_limit": "integer",
        "hourly_num_lines_limit": "integer",
        "max_concurrent_uploads": "integer",
        "use_external_uids": "boolean",
        "external_member_uid": "integer",
        "member_segment_access": "array",
    },
)
log = logging.getLogger("bss.api")


def _counts(request: Request) -> dict[int, int] | None:
    """Live members per segment, kept exact by the store as writes apply (no scan); from
    the local store or the store region named by region=."""
    store = region_store(request)  # an unknown region is the client's error: 400
    try:
        return store.segment_member_counts(now_s())
    except Exception:  # the store is optional for segment CRUD
        log.warning("segment member counts unavailable", exc_info=True)
        return None


def _out(row: Any, counts: dict[int, int] | None) -> dict[str, Any]:
    return service.segment_out(row, None if counts is None else counts.get(row["id"], 0))


def _segment_body(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("segment"), dict):
        return body["segment"]
    raise Invalid('expected a JSON body like {"segment": {"code": "...", ...}}')


def _new_segments(body: Any) -> tuple[list[Any], bool]:
    """POST /segment takes {"segment": {...}} or {"segments": [...]} (bulk): (items, bulk)."""
    if isinstance(body, dict) and isinstance(body.get("segments"), list):
        return body["segments"], True
    return [_segment_body(body)], False


@router.get("/segment", tags=["segment"], summary="Segments: ?id=, ?code=, ?search=, paged list")
def get_segment(request: Request, p: Principal = Depends(principal)) -> Any:
    db = request.app.state.db
    segment_id = int_param(request, "id")
    code = request.query_params.get("code")
    member_id = member_scope(p, request.query_params.get("member_id"), required=False)
    if segment_id is not None or code is not None:
        if code is not None and member_id is None:
            raise Invalid("member_id is required with code")
        _, rows = service.list_segments(
            db, member_id=member_id, segment_id=segment_id, code=code, limit=1
        )
        if not rows:
            raise NotFound("segment not found")
        return ok("segment", _out(rows[0], _counts(request)))
    start = int_param(request, "start_element", 0, minimum=0) or 0
    num = min(int_param(request, "num_elements", 100, minimum=1) or 100, 100)
    total, rows = service.list_segments(
        db, member_id=member_id, search=request.query_params.get("search"), start=start, limit=num
    )
    counts = _counts(request)
    return ok_list(
        "segments",
        [_out(r, counts) for r in rows],
        count=total,
        start_element=start,
        num_elements=num,
    )


@router.post(
    "/segment",
    tags=["segment"],
    summary="Create a segment, ?member_id=",
    openapi_extra=_SEGMENT_BODY,
)
async def post_segment(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"))
    items, bulk = _new_segments(await json_body(request))
    for item in items:
        if isinstance(item, dict) and item.get("member_id") not in (None, member_id):
            raise Invalid("segment.member_id must match the member_id parameter")
    db = request.app.state.db
    if not await run_in_threadpool(member_exists, db, member_id):
        raise Invalid(f"member {member_id} does not exist")
    if not bulk:
        row = await run_in_threadpool(service.create_segment, db, member_id, items[0])
        return ok("segment", _out(row, None), id=row["id"])
    rows = await run_in_threadpool(service.create_segments, db, member_id, items)
    return ok_list(
        "segments",
        [_out(r, None) for r in rows],
        count=len(rows),
        start_element=0,
        num_elements=len(rows),
    )


@router.put(
    "/segment", tags=["segment"], summary="Update a segment, ?id=", openapi_extra=_SEGMENT_BODY
)
async def put_segment(request: Request, p: Principal = Depends(principal)) -> Any:
    segment_id = int_param(request, "id")
    data = _segment_body(await json_body(request))
    if segment_id is None and data.get("id") is not None:
        segment_id = bounded_int(data["id"], "id")
    if segment_id is None:
        raise Invalid("id is required")
    db = request.app.state.db
    current = await run_in_threadpool(service.get_segment_row, db, segment_id)
    if not can_touch(p, current["member_id"]):
        raise NotFound(f"segment {segment_id} not found")
    data.pop("member_id", None)
    row = await run_in_threadpool(service.update_segment, db, segment_id, data)
    return ok("segment", _out(row, None), id=row["id"])


@router.delete("/segment", tags=["segment"], summary="Delete a segment, ?id=")
def delete_segment(request: Request, p: Principal = Depends(principal)) -> Any:
    segment_id = int_param(request, "id")
    if segment_id is None:
        raise Invalid("id is required")
    db = request.app.state.db
    current = service.get_segment_row(db, segment_id)
    if not can_touch(p, current["member_id"]):
        raise NotFound(f"segment {segment_id} not found")
    stores = request.app.state.stores
    service.delete_segment(db, segment_id, stores.get(), stores.remote_regions)
    return ok(None)


# --- /batch-segment-config -------------------------------------------------------------------


@router.get(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="A member's config (defaults if none)",
)
def get_config(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"))
    if not p.is_admin and p.member_id != member_id:
        raise Forbidden()
    db = request.app.state.db
    row = service.get_config_row(db, member_id)
    cfg = service.get_config(db, member_id)
    return ok("batch_segment_upload_config", service.config_out(cfg, member_id, row))


async def _put(request: Request, p: Principal, merge: bool) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"))
    db = request.app.state.db
    if not await run_in_threadpool(member_exists, db, member_id):
        raise Invalid(f"member {member_id} does not exist")
    body = await json_body(request)
    if not p.is_admin:
        # A member may set its own webhook fields, and nothing else of its config.
        fields = body.get("batch_segment_upload_config", body) if isinstance(body, dict) else None
        if not isinstance(fields, dict) or not fields or set(fields) - MEMBER_WRITABLE_FIELDS:
            require_admin(p)
        merge = True
    await run_in_threadpool(check_webhook_target, body, request.app.state.settings)
    out = await run_in_threadpool(service.put_config, db, member_id, body, merge=merge)
    return ok("batch_segment_upload_config", out)


@router.post(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="Set a member's config (admin)",
    openapi_extra=_CONFIG_BODY,
)
async def post_config(request: Request, p: Principal = Depends(principal)) -> Any:
    return await _put(request, p, merge=False)


@router.put(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="Change fields of a member's config (admin)",
    openapi_extra=_CONFIG_BODY,
)
async def put_config(request: Request, p: Principal = Depends(principal)) -> Any:
    return await _put(request, p, merge=True)


@router.delete(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="Drop a member's config: back to the defaults (admin)",
)
def delete_config(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    member_id = member_scope(p, request.query_params.get("member_id"))
    service.delete_config(request.app.state.db, member_id)
    return ok(None)
