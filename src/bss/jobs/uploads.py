"""The rules of an upload to a job's URL: who may use it and until when, what it must be
sent as, the member's quotas, and the streamed receipt (size, time and line limits, the
lease on the upload kept alive, the file committed or dropped).

The web view (bss.jobs.views.upload) only reads the request and renders the answer; every
refusal here is a domain error (bss.errors) and a refusal once the body has started is a
`RefusedMidway`, so that the view can close the connection instead of reading the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from bss.accounts.service import Principal
from bss.db import now_s
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
from bss.jobs.service import UPLOAD_TOUCH_SECONDS, JobService
from bss.metrics import COUNTERS
from bss.segments.service import get_config
from bss.settings import Settings

log = logging.getLogger("bss.upload")

OCTET_STREAM = "application/octet-stream"
#: A limit: (the member's limit, what it used already, the documented text when over).
Limit = tuple[int, int, str]


class RefusedMidway(Exception):
    """An upload refused after its body started (`error` says why): the file was dropped and
    the job failed; the rest of the body is not wanted."""

    def __init__(self, error: BssError) -> None:
        super().__init__(error.error)
        self.error = error


class CutOff(Exception):
    """The client went away before the end of its body (raised by the body's iterator)."""


async def _thread(fn: Any, *args: Any) -> Any:
    return await to_thread.run_sync(fn, *args)


class Uploads:
    """Uploads to the jobs' URLs, for one process (`receiver` names it in the job row)."""

    def __init__(self, jobs: JobService, settings: Settings, receiver: str) -> None:
        self.jobs = jobs
        self.settings = settings
        self.receiver = receiver

    # --- the URL ---------------------------------------------------------------------------

    def url_row(self, job_id: str) -> dict[str, Any]:
        row = self.jobs.job_row(job_id)
        if row is None:
            raise NotFound("no such upload URL")
        return row

    @staticmethod
    def check_caller(row: Any, caller: Principal | None) -> None:
        """The URL is a capability; a token, when sent, must be the member's (or an admin's)."""
        if caller is not None and not (caller.is_admin or caller.member_id == row["member_id"]):
            raise Forbidden("This upload URL belongs to another member")

    def check_usable(self, row: Any) -> None:
        """Refuse a URL that can no longer take an upload: past its time, or used."""
        minutes = self.settings.upload_url_ttl_seconds // 60
        if row["phase"] == "starting" and self.jobs._url_expired(row, now_s()):
            self.jobs.expire_urls()
            raise Expired(
                f"This upload URL has expired: uploads must start within {minutes} minutes; "
                "request a new URL",
                error_code="upload_url_expired",
            )
        if row["phase"] == "error" and row["error_code"] == "upload_url_expired":
            raise Expired(
                "This upload URL has expired: nothing was uploaded to it within "
                f"{minutes} minutes; request a new URL",
                error_code="upload_url_expired",
            )
        if row["phase"] != "starting":
            raise Conflict(
                f"This upload URL is no longer valid (job phase {row['phase']!r}); "
                "each URL takes one upload",
                error_code="upload_url_used",
            )

    # --- before the body -------------------------------------------------------------------

    @staticmethod
    def check_content_type(content_type: str) -> None:
        ctype = content_type.split(";", 1)[0].strip().lower()
        if ctype != OCTET_STREAM:
            raise UnsupportedMediaType(
                f"Wrong Content-Type {ctype or '(none)'!r}: send the raw file with "
                "'Content-Type: application/octet-stream' (curl --data-binary @FILE, not "
                "-d/--data). Nothing was uploaded; this URL can still be used.",
                error_code="INVALID_CONTENT_TYPE",
            )

    def check_declared_size(self, row: Any, declared: int | None) -> None:
        """A Content-Length over the file limit fails the job before anything is read."""
        if declared is not None and declared > self.settings.max_file_bytes:
            self.jobs.fail_upload(row["id"], ERR_FILE_BYTES)
            log.warning(
                "upload refused: file too large",
                extra={"job_id": row["job_id"], "member_id": row["member_id"], "bytes": declared},
            )
            raise file_too_large(self.settings.max_file_bytes, declared)

    def begin(self, row: Any) -> tuple[list[Limit], list[Limit]]:
        """Check the member's quotas and take the URL for this upload: the byte and line
        limits the body is held to while it streams."""
        member_id = row["member_id"]
        cfg = get_config(self.jobs.db, member_id)
        if self.jobs.pending_count(member_id) >= self.settings.max_pending_jobs:
            raise limit_exceeded(ERR_PENDING)
        usage = self.jobs.usage(member_id)
        configured_bytes = [
            (cfg.daily_byte_limit, usage["bytes_day"], ERR_DAILY_BYTES),
            (cfg.hourly_byte_limit, usage["bytes_hour"], ERR_HOURLY_BYTES),
        ]
        configured_lines = [
            (cfg.daily_num_lines_limit, usage["lines_day"], ERR_DAILY_LINES),
            (cfg.hourly_num_lines_limit, usage["lines_hour"], ERR_HOURLY_LINES),
        ]
        if not self.jobs.begin_upload(row, cfg.max_concurrent_uploads, self.receiver):
            fresh = self.jobs.job_row(row["job_id"])
            if fresh is not None and fresh["phase"] != "starting":
                raise Conflict("This upload URL is already in use", error_code="upload_url_used")
            raise limit_exceeded(ERR_CONCURRENT)
        # only the limits that are set (None: no limit)
        return (
            [(lim, used, text) for lim, used, text in configured_bytes if lim is not None],
            [(lim, used, text) for lim, used, text in configured_lines if lim is not None],
        )

    # --- the body ----------------------------------------------------------------------------

    async def receive(
        self,
        row: Any,
        chunks: AsyncIterator[bytes],
        limits: tuple[list[Limit], list[Limit]],
    ) -> None:
        """Stream the body into the job's file and hand the job to the workers; a refusal
        drops the file and fails the job (RefusedMidway, or a BssError when the client cut
        the body off)."""
        ctx = {"job_id": row["job_id"], "member_id": row["member_id"]}
        log.info("upload started", extra=ctx)
        sink = await _thread(self.jobs.files.upload_sink, row["job_id"])
        started = time.monotonic()
        received = _Received(limits, self.settings.max_file_bytes)
        try:
            await self._stream(row, chunks, sink, received, started)
            file_ref = await _thread(sink.commit)
        except RefusedMidway as refused:
            await _thread(sink.abort)
            await _thread(self.jobs.fail_upload, row["id"], refused.error.error)
            log.warning(
                "upload refused",
                extra={**ctx, "reason": refused.error.error, "bytes": received.bytes},
            )
            raise
        except CutOff as exc:
            await _thread(sink.abort)
            await _thread(
                self.jobs.fail_upload, row["id"], "the upload was cut off (client disconnected)"
            )
            log.warning("upload cut off", extra={**ctx, "bytes": received.bytes})
            raise Invalid(
                "upload cut off", error_id="SYSTEM", error_code="uploading-error"
            ) from exc
        except BaseException:
            await asyncio.shield(_thread(sink.abort))
            await asyncio.shield(_thread(self.jobs.fail_upload, row["id"], "the upload failed"))
            raise
        finished = await _thread(
            self.jobs.finish_upload,
            row["id"],
            file_ref,
            received.bytes,
            received.lines,
            self.receiver,
        )
        if not finished:
            log.warning("upload finished after its job was failed; dropped", extra=ctx)
            raise RefusedMidway(_taken_away())
        COUNTERS.inc("bss_bytes_uploaded_total", received.bytes)
        log.info(
            "upload finished",
            extra={
                **ctx,
                "bytes": received.bytes,
                "lines": received.lines,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def _stream(
        self,
        row: Any,
        chunks: AsyncIterator[bytes],
        sink: Any,
        received: _Received,
        started: float,
    ) -> None:
        settings = self.settings
        last_touch = started
        deadline = started + settings.max_upload_seconds
        while True:
            chunk = await _next_chunk(chunks, deadline, settings.upload_idle_seconds)
            if chunk is None:
                break
            if not chunk:
                continue
            received.feed(chunk)
            await sink.awrite(chunk)
            if time.monotonic() - last_touch >= UPLOAD_TOUCH_SECONDS:
                last_touch = time.monotonic()
                if not await _thread(self.jobs.touch_upload, row["id"], self.receiver):
                    raise RefusedMidway(_taken_away())
        received.finish()


class _Received:
    """What the body brought so far, held to the file, byte and line limits."""

    def __init__(self, limits: tuple[list[Limit], list[Limit]], max_file_bytes: int) -> None:
        self.byte_limits, self.line_limits = limits
        self.max_file_bytes = max_file_bytes
        self.bytes = self.lines = 0
        # Lines are counted while streaming only when a line limit applies (gzip is inflated
        # for it); otherwise the worker records the engine's count after processing.
        self.counter = LineCounter() if self.line_limits else None

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.counter is not None:
            self.lines = self.counter.feed(chunk)
        if self.bytes > self.max_file_bytes:
            raise RefusedMidway(file_too_large(self.max_file_bytes, self.bytes))
        self._check(self.byte_limits, self.bytes)
        self._check(self.line_limits, self.lines)

    def finish(self) -> None:
        if self.counter is not None:
            self.lines = self.counter.finish()
            self._check(self.line_limits, self.lines)

    @staticmethod
    def _check(limits: list[Limit], amount: int) -> None:
        for limit, used, text in limits:
            if used + amount > limit:
                raise RefusedMidway(limit_exceeded(text))


async def _next_chunk(
    chunks: AsyncIterator[bytes], deadline: float, idle_seconds: float
) -> bytes | None:
    """The next piece of the body (None at its end), or RefusedMidway when the client stays
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
            raise RefusedMidway(limit_exceeded(ERR_UPLOAD_TIME, TimedOut)) from exc
        raise RefusedMidway(
            TimedOut(
                f"the upload stalled: no data for {idle_seconds:g} seconds",
                error_id="SYSTEM",
                error_code="uploading-error",
            )
        ) from exc


def _taken_away() -> BssError:
    return Conflict(
        "the upload was failed meanwhile (its server was presumed stopped); request a new URL",
        error_id="SYSTEM",
        error_code="uploading-error",
    )
