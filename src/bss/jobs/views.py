"""/batch-segment (jobs), /segment-upload/{job_id} (the streamed upload), error reports."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, WithJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from bss.accounts.service import Principal, member_exists, principal_for_token
from bss.api.deps import AppSettings, Caller, Db, Jobs, Parts, count_request, member_scope, token_of
from bss.api.envelope import error_response, ok, ok_list
from bss.api.params import (
    CHECKED_BY_VIEW,
    IdQuery,
    MemberIdQuery,
    Page,
    ScopedMemberIdQuery,
    Text,
)
from bss.api.query import TypedRoute, query_model
from bss.db import parse_ts
from bss.errors import Invalid, NotFound
from bss.identity.ingest import E_LINKS_REPLACE, FILE_TYPES, LINKS
from bss.jobs.service import FILTER_FIELDS, SORT_FIELDS, JobService
from bss.jobs.uploads import OCTET_STREAM, CutOff, RefusedMidway, Uploads

router = APIRouter(route_class=TypedRoute)
log = logging.getLogger("bss.upload")

NAME = "batch_segment_upload_job"
JobIdQuery = Annotated[Text, Query(description="The job_id returned by POST /batch-segment")]
#: FIELD, FIELD.asc or FIELD.desc for each sortable field.
_SORTS = [f"{name}{way}" for name in SORT_FIELDS for way in ("", ".asc", ".desc")]
#: The documented date form; the schema's pattern keeps to days every month has.
_DATE = (
    "^([1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    "([ T+]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])?)?$"
)
DateQuery = Annotated[
    str | None,
    WithJsonSchema({"type": "string", "pattern": _DATE}),
    Query(description="YYYY-MM-DD HH:MM:SS (UTC; also YYYY-MM-DD)"),
]


def _payload(p: Principal | None, job: dict[str, Any]) -> Any:
    """A data-provider login gets the job as a one-element array (as documented)."""
    return [job] if p is not None and p.user_type == "data_provider" else job


@router.post(
    "/batch-segment", tags=["batch-segment"], summary="Create a job and its upload URL, ?member_id="
)
def post_job(
    request: Request,
    p: Caller,
    jobs: Jobs,
    settings: AppSettings,
    member_id: ScopedMemberIdQuery = None,
    mode: Literal["append", "replace"] = Query(
        "append",
        description="Extra: replace makes each segment the file adds to exactly the file's "
        "members once the job completes (docs/lifecycle.md); segment files only",
    ),
    force: bool = Query(
        False,
        description="Extra, with mode=replace: replace even when more than the member's "
        "max_replace_removal_fraction of a segment's members would be removed",
    ),
    file_type: Text = None,
) -> Any:
    scoped = member_scope(p, member_id)
    file_type = file_type or "segments"
    if file_type not in FILE_TYPES:
        raise Invalid(f"file_type must be one of: {', '.join(FILE_TYPES)}")
    if file_type == LINKS and mode == "replace":
        raise Invalid(E_LINKS_REPLACE)
    if not member_exists(jobs.db, scoped):
        raise NotFound(f"member {scoped} not found")
    base_url = (settings.public_url or str(request.base_url)).rstrip("/")
    job = jobs.create_job(scoped, base_url, file_type, mode=mode, force=force)
    log.info("job created", extra={"job_id": job["job_id"], "member_id": scoped})
    return ok(
        NAME,
        _payload(p, job),
        id=job["id"],
        count=1,
        start_element=0,
        num_elements=100,
        # extra: lets a client check a file's size before sending it
        max_file_bytes=settings.max_file_bytes,
    )


class JobHistoryQuery(BaseModel):
    """The job history's order and filters (see GET /batch-segment/meta)."""

    sort: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "enum": _SORTS}),
        Query(description="FIELD.asc or FIELD.desc (see /batch-segment/meta)"),
    ] = None
    min_last_modified: DateQuery = None
    max_last_modified: DateQuery = None
    phase: Annotated[
        Text,
        Query(description="starting, uploading, validating, processing, completed or error"),
    ] = None
    upload_source: Annotated[Text, Query(description="api or passive")] = None
    id: IdQuery = None

    def filters(self) -> dict[str, Any]:
        """The filters given, as JobService.list_jobs takes them (dates as UTC seconds)."""
        filters: dict[str, Any] = {}
        for key in ("min_last_modified", "max_last_modified"):
            value = getattr(self, key)
            if value:
                try:
                    filters[key] = parse_ts(value)
                except ValueError as exc:
                    raise Invalid(str(exc)) from exc
        for key in ("phase", "upload_source"):
            if text := getattr(self, key):
                filters[key] = text
        if self.id is not None:
            filters["id"] = self.id
        return filters


class JobsQuery(Page, JobHistoryQuery):
    """GET /batch-segment: one job (job_id) or a page of the history."""

    job_id: JobIdQuery = None
    member_id: MemberIdQuery = None


@router.get(
    "/batch-segment",
    tags=["batch-segment"],
    summary="One job (?job_id=) or the member's job history",
)
async def get_jobs(
    p: Caller,
    parts: Parts,
    query: Annotated[JobsQuery, Depends(query_model(JobsQuery))],
) -> Any:
    jobs = parts.jobs
    scoped = member_scope(p, query.member_id, required=False)
    filters = query.filters()
    job_id = query.job_id
    # A job's status (one SQLite read, microseconds, never waiting on a writer in WAL mode)
    # on the event loop; the history, or any read on PostgreSQL, in a thread.
    if job_id:
        if parts.inline_reads:
            return _one_job(p, jobs, job_id, scoped)
        return await run_in_threadpool(_one_job, p, jobs, job_id, scoped)
    return await run_in_threadpool(_history, jobs, scoped, query, query.sort, filters)


def _one_job(p: Principal, jobs: JobService, job_id: str, member_id: int | None) -> Any:
    job = jobs.get_job(job_id)
    if job is None or (member_id is not None and job["member_id"] != member_id):
        raise NotFound(f"job {job_id} not found")
    return ok(NAME, _payload(p, job), count=1, start_element=0, num_elements=100)


def _history(
    jobs: JobService, member_id: int | None, page: Page, sort: str | None, filters: dict[str, Any]
) -> Any:
    total, items = jobs.list_jobs(
        member_id, start=page.start, num=page.num, sort=sort, filters=filters
    )
    return ok_list(NAME, items, count=total, start_element=page.start, num_elements=page.num)


@router.get(
    "/batch-segment/meta",
    tags=["batch-segment"],
    summary="Fields the job history can be filtered and sorted by",
)
def get_meta(p: Caller) -> Any:
    fields = [
        {"name": name, "type": kind, "sort_by": True, "filter_by": name in FILTER_FIELDS}
        for name, kind in SORT_FIELDS.items()
    ]
    fields += [
        {"name": name, "type": kind, "sort_by": False, "filter_by": True}
        for name, kind in FILTER_FIELDS.items()
        if name not in SORT_FIELDS
    ]
    return ok("fields", fields)


@router.get(
    "/batch-segment/error-report",
    tags=["batch-segment"],
    summary="The job's complete error report as CSV (line_no,counter,reason,raw)",
    response_class=FileResponse,
)
def get_error_report(
    p: Caller,
    jobs: Jobs,
    job_id: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "minLength": 1, CHECKED_BY_VIEW: True}),
        Query(description="The job_id returned by POST /batch-segment"),
    ] = None,
    member_id: MemberIdQuery = None,
) -> Any:
    svc = jobs
    if not job_id:
        raise Invalid("job_id is required")
    scoped = member_scope(p, member_id, required=False)
    row = svc.job_row(job_id)
    if row is None or (scoped is not None and row["member_id"] != scoped):
        raise NotFound(f"job {job_id} not found")
    ref = row["report_path"]
    if not ref or not svc.files.exists(ref):
        raise NotFound(f"job {job_id} has no error report (phase {row['phase']})")
    if not ref.startswith("s3://"):
        return FileResponse(ref, media_type="text/csv", filename=f"{job_id}-errors.csv")
    return StreamingResponse(
        svc.files.iter_bytes(ref),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-errors.csv"'},
    )


@router.post(
    "/segment-upload/{job_id}",
    tags=["batch-segment"],
    summary="Upload the segment file (Content-Type: application/octet-stream, gzip or plain)",
    openapi_extra={
        "requestBody": {
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def upload(job_id: str, request: Request, uploads: Uploading, db: Db) -> Any:
    row = await run_in_threadpool(uploads.url_row, job_id)
    caller: Principal | None = None
    token = token_of(request)
    if token:  # the URL is a capability; a token, when sent, must be valid and the member's
        caller = await run_in_threadpool(principal_for_token, db, token)
    uploads.check_caller(row, caller)
    # Refusals of a URL that can no longer take an upload are not counted against the member:
    # whoever holds an old URL must not be able to spend the member's request budget.
    await run_in_threadpool(uploads.check_usable, row)
    if caller is not None:  # only the member's own (valid) token spends its budget
        await run_in_threadpool(count_request, request, f"member:{row['member_id']}")
    uploads.check_content_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isascii() and declared.isdigit() else None
    await run_in_threadpool(uploads.check_declared_size, row, size)
    limits = await run_in_threadpool(uploads.begin, row)
    try:
        await uploads.receive(row, _body(request), limits)
    except RefusedMidway as refused:
        # close the connection, or the server would go on reading (and discarding) the rest
        # of the file, and a stalled client would keep it open
        response = error_response(refused.error)
        response.headers["Connection"] = "close"
        return response
    job = await run_in_threadpool(uploads.jobs.get_job, job_id)
    return ok(NAME, _payload(caller, job), id=row["id"])  # type: ignore[arg-type]


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        raise CutOff from exc


async def _uploads(request: Request, jobs: Jobs, settings: AppSettings) -> Uploads:
    return Uploads(jobs, settings, request.app.state.process_id)


Uploading = Annotated[Uploads, Depends(_uploads)]
