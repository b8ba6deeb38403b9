"""/batch-segment (jobs), /segment-upload/{job_id} (the streamed upload), error reports."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from bss.accounts.service import Principal, member_exists, principal_for_token
from bss.api.deps import count_request, int_param, member_scope, principal, token_of
from bss.api.envelope import error_response, ok, ok_list
from bss.db import now_s, parse_ts
from bss.errors import (
    ERR_CONCURRENT,
    ERR_DAILY_BYTES,
    ERR_DAILY_LINES,
    ERR_FILE_BYTES,
    ERR_HOURLY_BYTES,
    ERR_HOURLY_LINES,
    ERR_PENDING,
    ERR_UPLOAD_TIME,
    BssError,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    NotFound,
    TimedOut,
    UnsupportedMediaType,
    file_too_large,
    limit_exceeded,
)
from bss.jobs.linecount import LineCounter
from bss.jobs.service import FILTER_FIELDS, SORT_FIELDS, UPLOAD_TOUCH_SECONDS, JobService
from bss.metrics import COUNTERS
from bss.segments.service import get_config

router = APIRouter()
log = logging.getLogger("bss.upload")

NAME = "batch_segment_upload_job"
OCTET_STREAM = "application/octet-stream"


def _payload(p: Principal | None, job: dict[str, Any]) -> Any:
    """A data-provider login gets the job as a one-element array (as documented)."""
    return [job] if p is not None and p.user_type == "data_provider" else job


def _base_url(request: Request) -> str:
    public = request.app.state.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


@router.post(
    "/batch-segment", tags=["batch-segment"], summary="Create a job and its upload URL, ?member_id="
)
def post_job(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"))
    svc: JobService = request.app.state.jobs
    if not member_exists(svc.db, member_id):
        raise NotFound(f"member {member_id} not found")
    job = svc.create_job(member_id, _base_url(request))
    log.info("job created", extra={"job_id": job["job_id"], "member_id": member_id})
    return ok(
        NAME,
        _payload(p, job),
        id=job["id"],
        count=1,
        start_element=0,
        num_elements=100,
        # extra: lets a client check a file's size before sending it
        max_file_bytes=request.app.state.settings.max_file_bytes,
    )


@router.get(
    "/batch-segment",
    tags=["batch-segment"],
    summary="One job (?job_id=) or the member's job history",
)
async def get_jobs(request: Request, p: Principal = Depends(principal)) -> Any:
    # A job's status (one SQLite read, microseconds, never waiting on a writer in WAL mode)
    # on the event loop; the history, or any read on PostgreSQL, in a thread.
    if request.app.state.inline_reads and request.query_params.get("job_id"):
        return _get_jobs(request, p)
    return await run_in_threadpool(_get_jobs, request, p)


def _get_jobs(request: Request, p: Principal) -> Any:
    svc: JobService = request.app.state.jobs
    qp = request.query_params
    job_id = qp.get("job_id")
    member_id = member_scope(p, qp.get("member_id"), required=False)
    if job_id:
        job = svc.get_job(job_id)
        if job is None or (member_id is not None and job["member_id"] != member_id):
            raise NotFound(f"job {job_id} not found")
        return ok(NAME, _payload(p, job), count=1, start_element=0, num_elements=100)
    start = int_param(request, "start_element", 0, minimum=0) or 0
    num = min(int_param(request, "num_elements", 100, minimum=1) or 100, 100)
    filters: dict[str, Any] = {}
    for key in ("min_last_modified", "max_last_modified"):
        if qp.get(key):
            try:
                filters[key] = parse_ts(qp[key])
            except ValueError as exc:
                raise Invalid(str(exc)) from exc
    for key in ("phase", "upload_source"):
        if qp.get(key):
            filters[key] = qp[key]
    if qp.get("id"):
        filters["id"] = int_param(request, "id")
    total, items = svc.list_jobs(
        member_id, start=start, num=num, sort=qp.get("sort"), filters=filters
    )
    return ok_list(NAME, items, count=total, start_element=start, num_elements=num)


@router.get(
    "/batch-segment/meta",
    tags=["batch-segment"],
    summary="Fields the job history can be filtered and sorted by",
)
def get_meta(p: Principal = Depends(principal)) -> Any:
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
def get_error_report(request: Request, p: Principal = Depends(principal)) -> Any:
    svc: JobService = request.app.state.jobs
    job_id = request.query_params.get("job_id")
    if not job_id:
        raise Invalid("job_id is required")
    member_id = member_scope(p, request.query_params.get("member_id"), required=False)
    row = svc.job_row(job_id)
    if row is None or (member_id is not None and row["member_id"] != member_id):
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


class _UploadFailed(Exception):
    def __init__(self, error: BssError) -> None:
        super().__init__(error.error)
        self.error = error


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
async def upload(job_id: str, request: Request) -> Any:  # noqa: C901, PLR0915  to be split (issue 24.5): the upload rules move out of the view
    app = request.app
    svc: JobService = app.state.jobs
    settings = app.state.settings
    receiver: str = app.state.process_id
    row = await run_in_threadpool(svc.job_row, job_id)
    if row is None:
        raise NotFound("no such upload URL")
    member_id = row["member_id"]
    p: Principal | None = None
    token = token_of(request)
    if token:  # the URL is a capability; a token, when sent, must be valid and the member's
        p = await run_in_threadpool(principal_for_token, svc.db, token)
        if not (p.is_admin or p.member_id == member_id):
            raise Forbidden("This upload URL belongs to another member")
    ctx = {"job_id": job_id, "member_id": member_id}

    # Refusals of a URL that can no longer take an upload are not counted against the member:
    # whoever holds an old URL must not be able to spend the member's request budget.
    if row["phase"] == "starting" and svc._url_expired(row, now_s()):
        await run_in_threadpool(svc.expire_urls)
        raise Expired(
            "This upload URL has expired: uploads must start within "
            f"{settings.upload_url_ttl_seconds // 60} minutes; request a new URL",
            error_code="upload_url_expired",
        )
    if row["phase"] == "error" and row["error_code"] == "upload_url_expired":
        raise Expired(
            "This upload URL has expired: nothing was uploaded to it within "
            f"{settings.upload_url_ttl_seconds // 60} minutes; request a new URL",
            error_code="upload_url_expired",
        )
    if row["phase"] != "starting":
        raise Conflict(
            f"This upload URL is no longer valid (job phase {row['phase']!r}); each URL takes one upload",
            error_code="upload_url_used",
        )
    if p is not None:  # only the member's own (valid) token spends its budget
        await run_in_threadpool(count_request, request, f"member:{member_id}")
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != OCTET_STREAM:
        raise UnsupportedMediaType(
            f"Wrong Content-Type {ctype or '(none)'!r}: send the raw file with "
            "'Content-Type: application/octet-stream' (curl --data-binary @FILE, not -d/--data). "
            "Nothing was uploaded; this URL can still be used.",
            error_code="INVALID_CONTENT_TYPE",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_file_bytes:
        await run_in_threadpool(svc.fail_upload, row["id"], ERR_FILE_BYTES)
        log.warning("upload refused: file too large", extra={**ctx, "bytes": int(declared)})
        raise file_too_large(settings.max_file_bytes, int(declared))

    cfg = await run_in_threadpool(get_config, svc.db, member_id)
    if await run_in_threadpool(svc.pending_count, member_id) >= settings.max_pending_jobs:
        raise limit_exceeded(ERR_PENDING)
    usage = await run_in_threadpool(svc.usage, member_id)
    configured_byte_limits = [
        (cfg.daily_byte_limit, usage["bytes_day"], ERR_DAILY_BYTES),
        (cfg.hourly_byte_limit, usage["bytes_hour"], ERR_HOURLY_BYTES),
    ]
    configured_line_limits = [
        (cfg.daily_num_lines_limit, usage["lines_day"], ERR_DAILY_LINES),
        (cfg.hourly_num_lines_limit, usage["lines_hour"], ERR_HOURLY_LINES),
    ]
    # only the limits that are set (None: no limit)
    byte_limits = [
        (lim, used, text) for lim, used, text in configured_byte_limits if lim is not None
    ]
    line_limits = [
        (lim, used, text) for lim, used, text in configured_line_limits if lim is not None
    ]
    if not await run_in_threadpool(svc.begin_upload, row, cfg.max_concurrent_uploads, receiver):
        fresh = await run_in_threadpool(svc.job_row, job_id)
        if fresh is not None and fresh["phase"] != "starting":
            raise Conflict("This upload URL is already in use", error_code="upload_url_used")
        raise limit_exceeded(ERR_CONCURRENT)

    log.info("upload started", extra=ctx)
    sink = await run_in_threadpool(svc.files.upload_sink, job_id)
    nbytes = nlines = 0
    # Lines are counted while streaming only when a line limit applies (gzip is inflated
    # for it); otherwise the worker records the engine's count after processing.
    counter = LineCounter() if line_limits else None
    started = last_touch = time.monotonic()
    deadline = started + settings.max_upload_seconds
    chunks = request.stream().__aiter__()
    try:
        while True:
            chunk = await _next_chunk(chunks, deadline, settings.upload_idle_seconds)
            if chunk is None:
                break
            if not chunk:
                continue
            nbytes += len(chunk)
            if counter is not None:
                nlines = counter.feed(chunk)
            if nbytes > settings.max_file_bytes:
                raise _UploadFailed(file_too_large(settings.max_file_bytes, nbytes))
            for limit, used, text in byte_limits:
                if used + nbytes > limit:
                    raise _UploadFailed(limit_exceeded(text))
            for limit, used, text in line_limits:
                if used + nlines > limit:
                    raise _UploadFailed(limit_exceeded(text))
            await sink.awrite(chunk)
            if time.monotonic() - last_touch >= UPLOAD_TOUCH_SECONDS:
                last_touch = time.monotonic()
                if not await run_in_threadpool(svc.touch_upload, row["id"], receiver):
                    raise _UploadFailed(_upload_taken_away())
        if counter is not None:
            nlines = counter.finish()
            for limit, used, text in line_limits:
                if used + nlines > limit:
                    raise _UploadFailed(limit_exceeded(text))
        file_ref = await run_in_threadpool(sink.commit)
    except _UploadFailed as failed:
        await run_in_threadpool(sink.abort)
        await run_in_threadpool(svc.fail_upload, row["id"], failed.error.error)
        log.warning("upload refused", extra={**ctx, "reason": failed.error.error, "bytes": nbytes})
        return _closing(error_response(failed.error))
    except ClientDisconnect:
        await run_in_threadpool(sink.abort)
        await run_in_threadpool(
            svc.fail_upload, row["id"], "the upload was cut off (client disconnected)"
        )
        log.warning("upload cut off", extra={**ctx, "bytes": nbytes})
        return error_response(
            Invalid("upload cut off", error_id="SYSTEM", error_code="uploading-error")
        )
    except BaseException:
        await asyncio.shield(run_in_threadpool(sink.abort))
        await asyncio.shield(run_in_threadpool(svc.fail_upload, row["id"], "the upload failed"))
        raise
    if not await run_in_threadpool(
        svc.finish_upload, row["id"], file_ref, nbytes, nlines, receiver
    ):
        log.warning("upload finished after its job was failed; dropped", extra=ctx)
        return _closing(error_response(_upload_taken_away()))
    COUNTERS.inc("bss_bytes_uploaded_total", nbytes)
    elapsed = time.monotonic() - started
    log.info(
        "upload finished",
        extra={**ctx, "bytes": nbytes, "lines": nlines, "seconds": round(elapsed, 3)},
    )
    job = await run_in_threadpool(svc.get_job, job_id)
    return ok(NAME, _payload(p, job), id=row["id"])  # type: ignore[arg-type]


async def _next_chunk(chunks: Any, deadline: float, idle_seconds: float) -> bytes | None:
    """The next piece of the body (None at its end), or _UploadFailed when the client stays
    silent for `idle_seconds` or the whole upload runs past `deadline`."""
    left = deadline - time.monotonic()
    try:
        async with asyncio.timeout(min(idle_seconds, max(left, 0))):
            return await anext(chunks)
    except StopAsyncIteration:
        return None
    except TimeoutError as exc:
        # Decide by which wait was the shorter one: the event loop's clock (uvloop counts whole
        # milliseconds) can fire a hair before time.monotonic() reaches the deadline.
        if left <= idle_seconds:
            raise _UploadFailed(limit_exceeded(ERR_UPLOAD_TIME, TimedOut)) from exc
        raise _UploadFailed(
            TimedOut(
                f"the upload stalled: no data for {idle_seconds:g} seconds",
                error_id="SYSTEM",
                error_code="uploading-error",
            )
        ) from exc


def _closing(response: Response) -> Response:
    """An upload refused midway: close the connection, or the server would go on reading
    (and discarding) the rest of the file, and a stalled client would keep it open."""
    response.headers["Connection"] = "close"
    return response


def _upload_taken_away() -> BssError:
    return Conflict(
        "the upload was failed meanwhile (its server was presumed stopped); request a new URL",
        error_id="SYSTEM",
        error_code="uploading-error",
    )
