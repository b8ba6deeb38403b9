"""/segment (per member CRUD) and /batch-segment-config (admin; a member may set its webhook)."""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal, member_exists
from bss.api.deps import (
    AppSettings,
    Caller,
    Db,
    Stores,
    can_touch,
    member_scope,
    region_store_dependency,
    require_admin,
)
from bss.api.envelope import ok, ok_list
from bss.api.params import (
    BodyCount,
    BodyInt32,
    BodyPositiveId,
    IdQuery,
    JsonBodyRoute,
    MemberIdQuery,
    Paging,
    RequiredIdQuery,
    ScopedMemberIdQuery,
    Text,
    body_of,
)
from bss.db import now_s
from bss.errors import Forbidden, Invalid, NotFound
from bss.formats.config import BatchSegmentConfig
from bss.segments import service
from bss.settings import Settings
from bss.store import MembershipStore
from bss.webhooks.service import MEMBER_WRITABLE_FIELDS, check_webhook_target

router = APIRouter(route_class=JsonBodyRoute)
log = logging.getLogger("bss.api")

_SEGMENT_SHAPE = 'expected a JSON body like {"segment": {"code": "...", ...}}'


class SegmentFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: BodyPositiveId = Field(None, description="Chosen id (optional; ids are global)")
    code: str | None = Field(None, description="Unique per member, in any letter case")
    short_name: str | None = None
    description: str | None = None
    state: str | None = Field(
        None,
        description="active (the default) or inactive, in any letter case",
        json_schema_extra={
            "pattern": "^([aA][cC][tT][iI][vV][eE]|[iI][nN][aA][cC][tT][iI][vV][eE])?$"
        },
    )
    expire_minutes: BodyCount = Field(None, description="Default lifetime of a membership")
    member_id: BodyInt32 = Field(None, description="If given, the member_id parameter's")
    taxonomy_id: BodyPositiveId = Field(None, description="OpenRTB segment taxonomy (segtax) id")
    taxonomy_node: str | None = Field(None, description="The segment's node in that taxonomy")


class SegmentBody(BaseModel):
    """{"segment": {...}}."""

    wrong_shape: ClassVar[str] = _SEGMENT_SHAPE

    segment: SegmentFields


class NewSegmentsBody(BaseModel):
    """{"segment": {...}}, or {"segments": [...]} to create up to 1000 at once (all or none)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["segment"], "properties": {"segment": {"type": "object"}}},
                {"required": ["segments"], "properties": {"segments": {"type": "array"}}},
            ]
        }
    )

    wrong_shape: ClassVar[str] = _SEGMENT_SHAPE

    segment: SegmentFields | None = None
    segments: list[SegmentFields] | None = Field(
        None, json_schema_extra={"minItems": 1, "maxItems": service.MAX_SEGMENTS_PER_REQUEST}
    )

    @model_validator(mode="after")
    def _one(self) -> NewSegmentsBody:
        if self.segments is None and self.segment is None:
            raise ValueError("segment or segments is required")
        return self


class ConfigBody(BaseModel):
    """{"batch_segment_upload_config": {...}} (or the fields alone, or a list of one)."""

    batch_segment_upload_config: BatchSegmentConfig


Region = Annotated[MembershipStore, Depends(region_store_dependency)]


#: A config body, read as sent: the service validates it into BatchSegmentConfig (merging a
#: PUT over the stored config first); an empty body is {}.
RawConfig = Annotated[Any, Body()]


def _counts(store: MembershipStore) -> dict[int, int] | None:
    """Live members per segment, kept exact by the store as writes apply (no scan); from
    the local store or the store region named by region=."""
    try:
        return store.segment_member_counts(now_s())
    except Exception:  # the store is optional for segment CRUD
        log.warning("segment member counts unavailable", exc_info=True)
        return None


def _out(row: Any, counts: dict[int, int] | None) -> dict[str, Any]:
    return service.segment_out(row, None if counts is None else counts.get(row["id"], 0))


def _fields(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True)


@router.get("/segment", tags=["segment"], summary="Segments: ?id=, ?code=, ?search=, paged list")
def get_segment(
    p: Caller,
    db: Db,
    store: Region,
    page: Paging,
    id: IdQuery = None,
    code: Annotated[
        Text, Query(description="A segment code (with member_id); case-insensitive")
    ] = None,
    member_id: MemberIdQuery = None,
    search: Annotated[
        Text, Query(description="Substring of code, short_name or description")
    ] = None,
) -> Any:
    member_id = member_scope(p, member_id, required=False)
    if id is not None or code is not None:
        if code is not None and member_id is None:
            raise Invalid("member_id is required with code")
        _, rows = service.list_segments(db, member_id=member_id, segment_id=id, code=code, limit=1)
        if not rows:
            raise NotFound("segment not found")
        return ok("segment", _out(rows[0], _counts(store)))
    total, rows = service.list_segments(
        db, member_id=member_id, search=search, start=page.start, limit=page.num
    )
    counts = _counts(store)
    return ok_list(
        "segments",
        [_out(r, counts) for r in rows],
        count=total,
        start_element=page.start,
        num_elements=page.num,
    )


@router.post(
    "/segment",
    description="Refused with 400 SYNTAX, whatever the schema allows: a member that does not exist, a code or id that is taken.",
    tags=["segment"],
    summary="Create a segment, ?member_id=",
)
async def post_segment(
    p: Caller, db: Db, body: NewSegmentsBody, member_id: ScopedMemberIdQuery = None
) -> Any:
    scoped = member_scope(p, member_id)
    bulk = body.segments is not None
    items = body.segments if body.segments is not None else [body.segment]
    for item in items:
        if item is not None and item.member_id not in (None, scoped):
            raise Invalid("segment.member_id must match the member_id parameter")
    if not await run_in_threadpool(member_exists, db, scoped):
        raise Invalid(f"member {scoped} does not exist")
    data = [_fields(item) for item in items if item is not None]
    if not bulk:
        row = await run_in_threadpool(service.create_segment, db, scoped, data[0])
        return ok("segment", _out(row, None), id=row["id"])
    rows = await run_in_threadpool(service.create_segments, db, scoped, data)
    return ok_list(
        "segments",
        [_out(r, None) for r in rows],
        count=len(rows),
        start_element=0,
        num_elements=len(rows),
    )


@router.put(
    "/segment",
    description="Refused with 400 SYNTAX, whatever the schema allows: no id, in the query or in the body's segment.",
    tags=["segment"],
    summary="Update a segment, ?id=",
)
async def put_segment(p: Caller, db: Db, body: SegmentBody, id: IdQuery = None) -> Any:
    data = _fields(body.segment)
    segment_id = id if id is not None else data.get("id")
    if segment_id is None:
        raise Invalid("id is required")
    current = await run_in_threadpool(service.get_segment_row, db, segment_id)
    if not can_touch(p, current["member_id"]):
        raise NotFound(f"segment {segment_id} not found")
    data.pop("member_id", None)
    row = await run_in_threadpool(service.update_segment, db, segment_id, data)
    return ok("segment", _out(row, None), id=row["id"])


@router.delete("/segment", tags=["segment"], summary="Delete a segment, ?id=")
def delete_segment(p: Caller, db: Db, stores: Stores, id: RequiredIdQuery) -> Any:
    if id is None:
        raise Invalid("id is required")
    current = service.get_segment_row(db, id)
    if not can_touch(p, current["member_id"]):
        raise NotFound(f"segment {id} not found")
    service.delete_segment(db, id, stores.get(), stores.remote_regions)
    return ok(None)


# --- /batch-segment-config -------------------------------------------------------------------


@router.get(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="A member's config (defaults if none)",
)
def get_config(p: Caller, db: Db, member_id: ScopedMemberIdQuery = None) -> Any:
    scoped = member_scope(p, member_id)
    if not p.is_admin and p.member_id != scoped:
        raise Forbidden()
    row = service.get_config_row(db, scoped)
    cfg = service.get_config(db, scoped)
    return ok("batch_segment_upload_config", service.config_out(cfg, scoped, row))


async def _put(
    p: Principal, db: Engine, settings: Settings, member_id: int | None, body: Any, *, merge: bool
) -> Any:
    scoped = member_scope(p, member_id)
    if not await run_in_threadpool(member_exists, db, scoped):
        raise Invalid(f"member {scoped} does not exist")
    if not p.is_admin:
        # A member may set its own webhook fields, and nothing else of its config.
        fields = body.get("batch_segment_upload_config", body) if isinstance(body, dict) else None
        if not isinstance(fields, dict) or not fields or set(fields) - MEMBER_WRITABLE_FIELDS:
            require_admin(p)
        merge = True
    await run_in_threadpool(check_webhook_target, body, settings)
    out = await run_in_threadpool(service.put_config, db, scoped, body, merge=merge)
    return ok("batch_segment_upload_config", out)


@router.post(
    "/batch-segment-config",
    description="Refused with 400 SYNTAX, whatever the schema allows: a config that breaks its own rules (separators distinct, segment_fields).",
    tags=["batch-segment-config"],
    summary="Set a member's config (admin)",
    openapi_extra=body_of(ConfigBody),
)
async def post_config(
    p: Caller,
    db: Db,
    settings: AppSettings,
    member_id: ScopedMemberIdQuery = None,
    body: RawConfig = None,
) -> Any:
    return await _put(p, db, settings, member_id, {} if body is None else body, merge=False)


@router.put(
    "/batch-segment-config",
    description="Refused with 400 SYNTAX, whatever the schema allows: a config that breaks its own rules (separators distinct, segment_fields).",
    tags=["batch-segment-config"],
    summary="Change fields of a member's config (admin)",
    openapi_extra=body_of(ConfigBody),
)
async def put_config(
    p: Caller,
    db: Db,
    settings: AppSettings,
    member_id: ScopedMemberIdQuery = None,
    body: RawConfig = None,
) -> Any:
    return await _put(p, db, settings, member_id, {} if body is None else body, merge=True)


@router.delete(
    "/batch-segment-config",
    tags=["batch-segment-config"],
    summary="Drop a member's config: back to the defaults (admin)",
)
def delete_config(p: Caller, db: Db, member_id: ScopedMemberIdQuery = None) -> Any:
    require_admin(p)
    service.delete_config(db, member_scope(p, member_id))
    return ok(None)
