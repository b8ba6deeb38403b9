"""What the documented API answers, as pydantic models: the OpenAPI document's response
schemas are generated from them (bss.api.openapi), and schemathesis checks every answer
against them (tests/test_openapi.py).

Field names, required fields and value sets are the documented ones; fields marked "Extra"
are this service's additions, which a client written for the hosted API ignores. Every
object may carry further fields (no `additionalProperties: false`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model

from bss.db import INT32_MAX
from bss.ingest.result import COUNTER_NAMES

#: A time as the API writes it, or null where it has none.
Date = Annotated[str | None, Field(description="YYYY-MM-DD HH:MM:SS (UTC)")]
State = Literal["active", "inactive"]


class Member(BaseModel):
    id: int
    name: str
    state: State
    created_on: Date = None
    last_modified: Date = None


class User(BaseModel):
    id: int
    username: str
    user_type: Literal["admin", "member", "data_provider"]
    member_id: int | None
    created_on: Date = None
    last_modified: Date = None


class Segment(BaseModel):
    id: int = Field(ge=1, le=INT32_MAX)
    code: str | None
    short_name: str | None = None
    description: str | None = None
    member_id: int
    state: State
    expire_minutes: int | None
    member_count: int | None = None
    taxonomy_id: int | None = Field(
        None, description="Extra: the taxonomy of the segment's node (OpenRTB segtax)"
    )
    taxonomy_node: str | None = Field(None, description="Extra: the node id in that taxonomy")
    created_on: Date = None
    last_modified: Date = None


class SegmentOwnerAccess(BaseModel):
    segment_owner_member_id: int | None = None


class BatchSegmentUploadConfig(BaseModel):
    id: int | None = None
    member_id: int
    separator_1: str
    separator_2: str | None = None
    separator_3: str | None = None
    separator_4: str | None = None
    separator_5: str | None = None
    segment_fields: str = Field(description='e.g. "[SEG_ID,EXPIRATION]"')
    default_expiration: int = 0
    num_error_log_lines: int = 0
    num_invalid_before_error: int | None = None
    daily_byte_limit: int | None = None
    hourly_byte_limit: int | None = None
    daily_num_lines_limit: int | None = None
    hourly_num_lines_limit: int | None = None
    max_concurrent_uploads: int = 1
    use_external_uids: bool = False
    external_member_uid: int | None = None
    member_segment_access: list[SegmentOwnerAccess] = []
    default_domain: str | None = None
    use_specific_geo: bool | None = None
    webhook_url: str | None = Field(
        None, description="Extra: where finished jobs are POSTed (docs/webhooks.md)"
    )
    max_replace_removal_fraction: float = Field(
        0.5, description="Extra: the replace-mode removal guard (docs/lifecycle.md)"
    )
    created_on: Date = None
    last_modified: Date = None


class _JobFields(BaseModel):
    id: int
    job_id: str
    member_id: int
    phase: Literal["starting", "uploading", "validating", "processing", "completed", "error"]
    upload_url: str | None = None
    upload_source: str | None = None
    source_key: str | None = None
    start_time: Date = None
    uploaded_time: Date = None
    validated_time: Date = None
    completed_time: Date = None
    error_code: str | None = None
    error_message: str | None = None
    time_to_process: str | None = None
    percent_complete: int | None = None
    error_log_lines: str | None = None
    segment_log_lines: str | None = None
    created_on: Date = None
    last_modified: Date = None
    num_opted_out: int | None = Field(
        None, description="Extra: valid entries an opt-out suppressed (docs/lifecycle.md)"
    )
    mode: Literal["append", "replace"] | None = Field(
        None,
        description="Extra: replace makes each segment the file adds to exactly the file's "
        "members once the job completes (docs/lifecycle.md)",
    )
    replace_removed: int | None = Field(
        None, description="Extra, replace jobs only: memberships the replace removed"
    )
    file_type: Literal["segments", "links"] | None = Field(
        None, description="Extra: what the file holds (docs/identity.md)"
    )
    waiting_reason: str | None = Field(
        None, description="Extra: why a queued job waits (the store, database or files store)"
    )
    waiting_since: Date = None
    written_without_replica: bool | None = Field(
        None, description="Extra: some writes had no replica to confirm them (docs/scale-out.md)"
    )
    regions: dict[str, str] | None = Field(
        None,
        description="Extra, with store regions only: region -> pending, applying, applied "
        "or error: <reason> (docs/scale-out.md)",
    )


#: The job, with one integer field per documented counter (each valid entry counted once;
#: num_invalid_segment and the like count each segment once per job).
BatchSegmentUploadJob: type[BaseModel] = create_model(
    "BatchSegmentUploadJob",
    __base__=_JobFields,
    **{name: (int | None, None) for name in COUNTER_NAMES},  # type: ignore[call-overload]
)


class UserSegment(BaseModel):
    id: int
    code: str | None = None
    member_id: int | None
    value: int | None = None
    timestamp: Date = None
    expiry: Date = None
    via: str | None = Field(
        None,
        description="Extra, with related=true: the related ID the segment came from, or "
        '"shared" when a shared link was needed (docs/identity.md)',
    )


class ErrorBody(BaseModel):
    """Upload limits carry only status, error_code and errors (word for word as documented);
    extra fields may follow."""

    status: Literal["ERROR"]
    error_id: Literal["NOAUTH", "UNAUTH", "NOTFOUND", "SYNTAX", "SYSTEM"] | None = None
    error: str | None = None
    error_description: str | None = None
    error_code: str | None = None
    errors: list[str] | None = None


class Error(BaseModel):
    """The documented error envelope."""

    response: ErrorBody


#: The models whose schemas the OpenAPI document's components hold, by name.
ANSWER_MODELS: dict[str, type[BaseModel]] = {
    "Member": Member,
    "User": User,
    "Segment": Segment,
    "BatchSegmentUploadConfig": BatchSegmentUploadConfig,
    "BatchSegmentUploadJob": BatchSegmentUploadJob,
    "UserSegment": UserSegment,
    "Error": Error,
}


def answer_schemas(ref_template: str) -> dict[str, Any]:
    """The components' schemas of every answer model (nested models included)."""
    schemas: dict[str, Any] = {}
    for name, model in ANSWER_MODELS.items():
        schema = model.model_json_schema(ref_template=ref_template, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schema["title"] = name
        schemas[name] = schema
    return schemas
