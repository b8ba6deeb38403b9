"""Creating jobs and receiving their files: upload URLs, the upload's own state, passive
submissions. A job leaves this part uploaded and queued (phase "validating")."""

from __future__ import annotations

import logging
import secrets
import string
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from bss.db import inserted_id, is_sqlite, now_s, write_tx
from bss.errors import ERR_PENDING, limit_exceeded
from bss.identity.ingest import E_LINKS_REPLACE, FILE_TYPES, LINKS
from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import jobs
from bss.jobs.queries import JobQueries
from bss.leases import live_processes_query
from bss.lifecycle.replace import APPEND, REPLACE, mode_columns

log = logging.getLogger("bss.jobs")

_ALPHABET = string.ascii_letters + string.digits
JOB_ID_LENGTH = 40
UPLOAD_SOURCES = ("api", "s3", "folder")
#: A live upload checks every UPLOAD_TOUCH_SECONDS that its job is still its own (it is not
#: when its process was presumed dead and the job failed: the upload then stops at once).
UPLOAD_TOUCH_SECONDS = 5


def new_job_id() -> str:
    """40 random alphanumerics (~238 bits): the upload URL is unguessable."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(JOB_ID_LENGTH))


class JobCreation(JobQueries):
    # --- job creation and the upload ------------------------------------------------------

    def create_job(
        self,
        member_id: int,
        base_url: str,
        file_type: str = "segments",
        *,
        mode: str = APPEND,
        force: bool = False,
    ) -> dict[str, Any]:
        """A new job in phase "starting"; an older unused URL of the member is invalidated.
        `file_type` "links" makes it a link file's job; `mode` "replace" a replace-mode
        upload (bss.lifecycle.replace) of a segment file."""
        if self.pending_count(member_id) >= self.settings.max_pending_jobs:
            raise limit_exceeded(ERR_PENDING)
        now = now_s()
        job_id = new_job_id()
        with write_tx(self.db) as conn:
            self._lock_member(conn, member_id)
            conn.execute(
                update(jobs)
                .where(jobs.c.member_id == member_id, jobs.c.phase == "starting")
                .values(
                    phase="error",
                    error_code="upload_url_replaced",
                    error_message="a newer upload URL was requested; only one URL is valid at a time",
                    last_modified=now,
                )
            )
            row = _insert_job(
                conn,
                dict(
                    job_id=job_id,
                    member_id=member_id,
                    phase="starting",
                    upload_url=f"{base_url.rstrip('/')}/segment-upload/{job_id}",
                    upload_source="api",
                    created_on=now,
                    last_modified=now,
                    percent_complete=0,
                    **_kind_columns(file_type, mode, force),
                ),
            )
        return self.job_out(row, now)

    def _lock_member(self, conn: Any, member_id: int) -> None:
        """Serialize a member's job creation and upload starts. SQLite needs nothing (its
        first write takes the database lock); on PostgreSQL the member row is locked, so the
        one-URL rule and max_concurrent_uploads hold under concurrent requests."""
        if not is_sqlite(self.db):
            from bss.accounts.models import members

            conn.execute(select(members.c.id).where(members.c.id == member_id).with_for_update())

    def expire_urls(self, now: int | None = None) -> int:
        now = now_s() if now is None else now
        with write_tx(self.db) as conn:
            return conn.execute(
                update(jobs)
                .where(
                    jobs.c.phase == "starting",
                    jobs.c.created_on < now - self.settings.upload_url_ttl_seconds,
                )
                .values(
                    phase="error",
                    error_code="upload_url_expired",
                    error_message="nothing was uploaded to the URL in time",
                    last_modified=now,
                )
            ).rowcount

    def touch_upload(self, job_pk: int, receiver: str) -> bool:
        """An upload in progress checks that its job is still its own; False: stop receiving."""
        with write_tx(self.db) as conn:
            return (
                conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == job_pk,
                        jobs.c.phase == "uploading",
                        jobs.c.claimed_by == receiver,
                    )
                    .values(last_modified=now_s())
                ).rowcount
                == 1
            )

    def fail_orphaned_uploads(self, now: int | None = None) -> list[str]:
        """Uploads whose receiving process is gone (its lease lapsed or was dropped) never
        finish: fail them at once, so that they stop holding a concurrent-upload slot, and
        remove their partial files. Returns their job ids."""
        now = now_s() if now is None else now
        orphaned = and_(
            jobs.c.phase == "uploading",
            or_(
                jobs.c.claimed_by.is_(None),
                jobs.c.claimed_by.not_in(live_processes_query(now * 1000)),
            ),
        )
        with write_tx(self.db) as conn:
            rows = conn.execute(
                update(jobs)
                .where(orphaned)
                .values(
                    phase="error",
                    error_code="uploading-error",
                    error_message="the upload was interrupted (the receiving server stopped)",
                    claimed_by=None,
                    file_path=None,
                    file_bytes=0,
                    file_lines=0,
                    last_modified=now,
                )
                .returning(jobs.c.id, jobs.c.job_id)
            ).all()
            for job_pk, _job_id in rows:
                self._job_finished(conn, job_pk)
        failed = [job_id for _job_pk, job_id in rows]
        for job_id in failed:
            self.files.discard_partial(job_id)
        if failed:
            log.warning("orphaned uploads failed", extra={"jobs": ",".join(failed)})
        return failed

    def begin_upload(self, row: Any, max_concurrent: int, receiver: str) -> bool:
        """starting -> uploading, atomically, if fewer than max_concurrent uploads run. The
        job names the receiving process (`receiver`, its lease in the leases table) until
        the upload is over: the slot stays taken exactly as long as the upload is received."""
        now = now_s()
        member_id = row["member_id"]
        other = jobs.alias("other")
        running = (
            select(func.count())
            .select_from(other)
            .where(other.c.member_id == member_id, other.c.phase == "uploading")
            .scalar_subquery()
        )
        with write_tx(self.db) as conn:
            self._lock_member(conn, member_id)
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == row["id"], jobs.c.phase == "starting", running < max_concurrent)
                .values(phase="uploading", start_time=now, last_modified=now, claimed_by=receiver)
            ).rowcount
        return n == 1

    def finish_upload(
        self, job_pk: int, file_ref: str, nbytes: int, nlines: int, receiver: str
    ) -> bool:
        """uploading -> validating with the file kept (`file_ref`, from the files store); False
        (and the file removed) when the job is no longer this receiver's upload: a failed job
        never comes back."""
        now = now_s()
        with write_tx(self.db) as conn:
            n = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_pk,
                    jobs.c.phase == "uploading",
                    jobs.c.claimed_by == receiver,
                )
                .values(
                    phase="validating",
                    uploaded_time=now,
                    last_modified=now,
                    claimed_by=None,
                    file_path=file_ref,
                    file_bytes=nbytes,
                    file_lines=nlines,
                )
            ).rowcount
        if n != 1:
            self.files.delete(file_ref)
        return n == 1

    def fail_upload(
        self, job_pk: int, message: str, *, error_code: str = "uploading-error"
    ) -> None:
        """The upload failed: phase error, counters 0, logs null, nothing kept."""
        now = now_s()
        values: dict[str, Any] = dict.fromkeys(COUNTER_NAMES, 0)
        with write_tx(self.db) as conn:
            failed = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_pk, jobs.c.phase.in_(("starting", "uploading")))
                .values(
                    phase="error",
                    claimed_by=None,
                    error_code=error_code,
                    error_message=message,
                    error_log_lines=None,
                    segment_log_lines=None,
                    percent_complete=0,
                    file_path=None,
                    file_bytes=0,
                    file_lines=0,
                    last_modified=now,
                    **values,
                )
            ).rowcount
            if failed:
                self._job_finished(conn, job_pk)

    # --- passive uploads --------------------------------------------------------------------

    def submit_file(
        self,
        member_id: int,
        source_path: Path,
        *,
        upload_source: str,
        source_key: str,
        file_type: str = "segments",
        mode: str = APPEND,
        force: bool = False,
    ) -> dict[str, Any]:
        """Move (or copy) a file into job storage as a job already uploaded and queued."""
        if upload_source not in UPLOAD_SOURCES:
            raise ValueError(f"upload_source must be one of {UPLOAD_SOURCES}")
        job_id = new_job_id()
        nbytes = source_path.stat().st_size
        file_ref = self.files.put_upload(job_id, source_path)
        now = now_s()
        with write_tx(self.db) as conn:
            row = _insert_job(
                conn,
                dict(
                    **_passive_job(job_id, member_id, upload_source, source_key, now),
                    phase="validating",
                    uploaded_time=now,
                    file_path=file_ref,
                    file_bytes=nbytes,
                    **_kind_columns(file_type, mode, force),
                ),
            )
        log.info(
            "job submitted",
            extra={"job_id": job_id, "member_id": member_id, "upload_source": upload_source},
        )
        return self.job_out(row, now)

    def submit_rejected(
        self,
        member_id: int,
        *,
        upload_source: str,
        source_key: str,
        file_bytes: int,
        error_code: str,
        error_message: str,
    ) -> dict[str, Any]:
        """Record a passive file refused before processing: phase error, counters 0, logs null."""
        now = now_s()
        job_id = new_job_id()
        with write_tx(self.db) as conn:
            row = _insert_job(
                conn,
                dict(
                    **_passive_job(job_id, member_id, upload_source, source_key, now),
                    phase="error",
                    completed_time=now,
                    error_code=error_code,
                    error_message=error_message,
                    file_path=None,
                    file_bytes=file_bytes,
                ),
            )
            self._job_finished(conn, row["id"])
        return self.get_job(job_id)  # type: ignore[return-value]


def _insert_job(conn: Any, values: dict[str, Any]) -> Any:
    """Insert one job and read its row back (ids and defaults as the database gave them)."""
    new_id = inserted_id(conn.execute(insert(jobs).values(**values)))
    return conn.execute(select(jobs).where(jobs.c.id == new_id)).mappings().one()


def _kind_columns(file_type: str, mode: str, force: bool) -> dict[str, Any]:
    """jobs.file_type (null for segment files: every job before link files was one) and
    the mode columns. Replace mode sets segments' members: a link file has none."""
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {FILE_TYPES}")
    if file_type == LINKS and mode == REPLACE:
        raise ValueError(E_LINKS_REPLACE)
    return {
        "file_type": None if file_type == "segments" else file_type,
        **mode_columns(mode, force),
    }


def _passive_job(
    job_id: str, member_id: int, upload_source: str, source_key: str, now: Any
) -> dict[str, Any]:
    """Columns every passively submitted job starts with: no upload URL, uploaded now."""
    return {
        "job_id": job_id,
        "member_id": member_id,
        "upload_url": None,
        "upload_source": upload_source,
        "source_key": source_key,
        "created_on": now,
        "last_modified": now,
        "start_time": now,
        "percent_complete": 0,
        "file_lines": 0,
    }
