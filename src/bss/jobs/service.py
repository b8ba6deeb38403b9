"""Batch segment upload jobs: creation, upload state, the queue, history and retention.

The `jobs` table is the queue: a worker claims the oldest waiting job by setting a lease
(`claimed_until`) with a guarded UPDATE (PostgreSQL: after SELECT ... FOR UPDATE SKIP
LOCKED), renews it while working, and a job whose lease ran out is claimed again.

`JobService(engine_or_db, settings)` is also the entry point the passive scanners use:
`submit_file(...)` and `get_job(...)`.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from bss.db import (
    fmt_ts,
    init_db,
    inserted_id,
    is_sqlite,
    make_engine,
    now_s,
    run_sql,
    write_tx,
)
from bss.errors import ERR_PENDING, Invalid, limit_exceeded
from bss.files import FileStore, open_files
from bss.files.local import LocalFiles
from bss.identity.ingest import E_LINKS_REPLACE, FILE_TYPES, LINKS
from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import PHASES, jobs
from bss.leases import live_processes_query
from bss.lifecycle.replace import APPEND, REPLACE, mode_columns, replace_removed_total
from bss.reports.service import SegmentLoads, record_loads
from bss.settings import Settings
from bss.store import regions
from bss.webhooks.service import enqueue_job_finished

log = logging.getLogger("bss.jobs")

_ALPHABET = string.ascii_letters + string.digits
JOB_ID_LENGTH = 40
#: Phases in which a job waits for (or is being worked by) a worker.
QUEUED_PHASES = ("validating", "processing")
UPLOAD_SOURCES = ("api", "s3", "folder")
#: A live upload checks every UPLOAD_TOUCH_SECONDS that its job is still its own (it is not
#: when its process was presumed dead and the job failed: the upload then stops at once).
UPLOAD_TOUCH_SECONDS = 5

#: Fields one may filter and sort the job history by (GET /batch-segment/meta).
SORT_FIELDS = {
    "id": "int",
    "job_id": "string",
    "member_id": "int",
    "phase": "string",
    "upload_source": "string",
    "created_on": "date",
    "last_modified": "date",
    "start_time": "date",
    "uploaded_time": "date",
    "validated_time": "date",
    "completed_time": "date",
    "percent_complete": "int",
    **{name: "int" for name in COUNTER_NAMES},
}
FILTER_FIELDS = {
    "id": "int",
    "job_id": "string",
    "phase": "string",
    "upload_source": "string",
    "min_last_modified": "date",
    "max_last_modified": "date",
}


def new_job_id() -> str:
    """40 random alphanumerics (~238 bits): the upload URL is unguessable."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(JOB_ID_LENGTH))


class JobService:
    def __init__(self, engine_or_db: Engine | str, settings: Settings) -> None:
        if isinstance(engine_or_db, str):
            engine_or_db = make_engine(engine_or_db)
            init_db(engine_or_db)
        self.db: Engine = engine_or_db
        self.settings = settings
        self.files: FileStore = open_files(
            settings.resolved_files_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            scratch=settings.data_dir / "scratch",
        )
        #: Local room for a job's error report while it is written.
        self.reports_dir = settings.data_dir / "reports"
        self.reports_dir.mkdir(parents=True, exist_ok=True)

    # --- presentation --------------------------------------------------------------------

    def job_out(self, row: Any, now: int | None = None) -> dict[str, Any]:
        now = now_s() if now is None else now
        phase, error_code = row["phase"], row["error_code"]
        last_modified = row["last_modified"]
        if phase == "starting" and self._url_expired(row, now):
            phase, error_code = "error", "upload_url_expired"
        out: dict[str, Any] = {
            "id": row["id"],
            "job_id": row["job_id"],
            "member_id": row["member_id"],
            "phase": phase,
            "upload_url": row["upload_url"],
            "upload_source": row["upload_source"],
            "source_key": row["source_key"],
            "start_time": fmt_ts(row["start_time"]),
            "uploaded_time": fmt_ts(row["uploaded_time"]),
            "validated_time": fmt_ts(row["validated_time"]),
            "completed_time": fmt_ts(row["completed_time"]),
            "error_code": error_code,
            "error_message": row["error_message"],
            "time_to_process": row["time_to_process"],
            "percent_complete": row["percent_complete"],
        }
        for name in COUNTER_NAMES:
            out[name] = row[name]
        out["error_log_lines"] = row["error_log_lines"]
        out["segment_log_lines"] = row["segment_log_lines"]
        out["created_on"] = fmt_ts(row["created_on"])
        out["last_modified"] = fmt_ts(last_modified)
        out["num_opted_out"] = row["num_opted_out"] or 0
        out["mode"] = row["mode"] or APPEND
        if row["mode"] == REPLACE:
            out["replace_removed"] = replace_removed_total(row["replace_state"])
        # Extra: what the file holds (bss.identity.ingest for "links").
        out["file_type"] = row["file_type"] or "segments"
        return out

    def _url_expired(self, row: Any, now: int) -> bool:
        # Whole seconds: a URL lives at least its TTL (up to a second more), never less.
        return row["created_on"] < now - self.settings.upload_url_ttl_seconds

    def _job_finished(self, conn: Connection, job_pk: int) -> None:
        """In the transaction that moved an uploaded job to completed or error: queue its
        completion webhook. (A URL that expired or was replaced unused is no finished job.)"""
        row = conn.execute(select(jobs).where(jobs.c.id == job_pk)).mappings().one()
        enqueue_job_finished(conn, self.job_out(row))

    # --- reads -----------------------------------------------------------------------------

    def job_row(self, job_id: str) -> dict[str, Any] | None:
        # Every status poll reads this: on the driver directly (see run_sql).
        rows = run_sql(self.db, "SELECT * FROM jobs WHERE job_id = :job_id", {"job_id": job_id})
        return rows[0] if rows else None

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job object (documented fields plus upload_source/source_key, and `regions`
        with store regions), or None."""
        row = self.job_row(job_id)
        if row is None:
            return None
        out = self.job_out(row)
        if self.settings.regions:
            out["regions"] = self.region_states([row])[row["id"]]
        return out

    def region_states(self, rows: list[Any]) -> dict[int, dict[str, str]]:
        """Job -> its `regions` extra field: every region, the local one first. The local
        region has a job once it finished (its phase says how); another region shows its
        catch-up state, and a finished job that owes it nothing shows "applied"."""
        owed = regions.job_region_states(self.db, [row["id"] for row in rows])
        local = self.settings.local_region
        out = {}
        for row in rows:
            phase = row["phase"]
            finished = phase in ("completed", "error")
            here = "applied" if finished else "applying" if phase == "processing" else "pending"
            states = {local: here} if local else {}
            for name in self.settings.regions:
                if name != local:
                    states[name] = owed.get(row["id"], {}).get(
                        name, "applied" if finished else "pending"
                    )
            out[row["id"]] = states
        return out

    def list_jobs(
        self,
        member_id: int | None,
        *,
        start: int = 0,
        num: int = 100,
        sort: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        now = now_s()
        q = select(jobs).where(jobs.c.created_on >= now - self.settings.history_days * 86400)
        if member_id is not None:
            q = q.where(jobs.c.member_id == member_id)
        for key, value in (filters or {}).items():
            if value is None:
                continue
            if key == "min_last_modified":
                q = q.where(jobs.c.last_modified >= value)
            elif key == "max_last_modified":
                q = q.where(jobs.c.last_modified <= value)
            elif key == "id":
                q = q.where(jobs.c.id == value)
            elif key in ("job_id", "phase", "upload_source"):
                q = q.where(jobs.c[key] == value)
        order = [jobs.c.id.desc()]
        if sort:
            field, _, direction = sort.partition(".")
            if field not in SORT_FIELDS:
                raise Invalid(f"cannot sort by {field!r}; see /batch-segment/meta")
            if direction not in ("", "asc", "desc"):
                raise Invalid("sort must look like FIELD.asc or FIELD.desc")
            col = jobs.c[field]
            order = [col.desc() if direction == "desc" else col.asc(), jobs.c.id.asc()]
        with self.db.connect() as conn:
            total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
            rows = conn.execute(q.order_by(*order).offset(start).limit(num)).mappings().all()
        out = [self.job_out(r, now) for r in rows]
        if self.settings.regions:
            states = self.region_states(list(rows))
            for job, row in zip(out, rows, strict=True):
                job["regions"] = states[row["id"]]
        return total, out

    def counts_by_phase(self) -> dict[str, int]:
        with self.db.connect() as conn:
            rows = conn.execute(select(jobs.c.phase, func.count()).group_by(jobs.c.phase)).all()
        counts = dict.fromkeys(PHASES, 0)
        counts.update({phase: n for phase, n in rows})
        return counts

    def pending_count(self, member_id: int) -> int:
        with self.db.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.member_id == member_id, jobs.c.phase.in_(QUEUED_PHASES))
            ).scalar_one()

    def usage(self, member_id: int, now: int | None = None) -> dict[str, int]:
        """Bytes and lines uploaded in the last hour / day (finished uploads)."""
        now = now_s() if now is None else now
        out = {}
        with self.db.connect() as conn:
            for window, seconds in (("hour", 3600), ("day", 86400)):
                b, n = conn.execute(
                    select(
                        func.coalesce(func.sum(jobs.c.file_bytes), 0),
                        func.coalesce(func.sum(jobs.c.file_lines), 0),
                    ).where(jobs.c.member_id == member_id, jobs.c.uploaded_time > now - seconds)
                ).one()
                out[f"bytes_{window}"] = int(b)
                out[f"lines_{window}"] = int(n)
        return out

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
            inserted = conn.execute(
                insert(jobs).values(
                    job_id=job_id,
                    member_id=member_id,
                    phase="starting",
                    upload_url=f"{base_url.rstrip('/')}/segment-upload/{job_id}",
                    upload_source="api",
                    created_on=now,
                    last_modified=now,
                    percent_complete=0,
                    **_kind_columns(file_type, mode, force),
                )
            )
            new_id = inserted_id(inserted)
            row = conn.execute(select(jobs).where(jobs.c.id == new_id)).mappings().one()
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

    def job_id_of(self, job_pk: int) -> str:
        with self.db.connect() as conn:
            return conn.execute(select(jobs.c.job_id).where(jobs.c.id == job_pk)).scalar_one()

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
            inserted = conn.execute(
                insert(jobs).values(
                    **_passive_job(job_id, member_id, upload_source, source_key, now),
                    phase="validating",
                    uploaded_time=now,
                    file_path=file_ref,
                    file_bytes=nbytes,
                    **_kind_columns(file_type, mode, force),
                )
            )
            new_id = inserted_id(inserted)
            row = conn.execute(select(jobs).where(jobs.c.id == new_id)).mappings().one()
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
            inserted = conn.execute(
                insert(jobs).values(
                    **_passive_job(job_id, member_id, upload_source, source_key, now),
                    phase="error",
                    completed_time=now,
                    error_code=error_code,
                    error_message=error_message,
                    file_path=None,
                    file_bytes=file_bytes,
                )
            )
            new_id = inserted_id(inserted)
            self._job_finished(conn, new_id)
        return self.get_job(job_id)  # type: ignore[return-value]

    # --- the queue ---------------------------------------------------------------------------

    def claim_next(self, worker_id: str) -> Any | None:
        """Claim the oldest waiting job (or one whose worker's lease ran out)."""
        now = now_s()
        lease = now + self.settings.job_lease_seconds
        free = or_(jobs.c.claimed_until.is_(None), jobs.c.claimed_until < now)
        waiting = and_(jobs.c.phase.in_(QUEUED_PHASES), free)
        if is_sqlite(self.db):
            # One guarded UPDATE ... RETURNING: no read-then-write window at all.
            cand = jobs.alias("cand")
            cand_free = or_(cand.c.claimed_until.is_(None), cand.c.claimed_until < now)
            oldest = (
                select(cand.c.id)
                .where(cand.c.phase.in_(QUEUED_PHASES), cand_free)
                .order_by(cand.c.id)
                .limit(1)
                .scalar_subquery()
            )
            with write_tx(self.db) as conn:
                return (
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == oldest, waiting)
                        .values(
                            claimed_until=lease,
                            claimed_by=worker_id,
                            attempts=jobs.c.attempts + 1,
                        )
                        .returning(*jobs.c)
                    )
                    .mappings()
                    .first()
                )
        with write_tx(self.db) as conn:
            q = (
                select(jobs.c.id)
                .where(waiting)
                .order_by(jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            job_pk = conn.execute(q).scalar()
            if job_pk is None:
                return None
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_pk, waiting)
                .values(claimed_until=lease, claimed_by=worker_id, attempts=jobs.c.attempts + 1)
            ).rowcount
            if n != 1:
                return None
            return conn.execute(select(jobs).where(jobs.c.id == job_pk)).mappings().one()

    def _update_owned(
        self,
        job_pk: int,
        worker_id: str,
        values: dict[str, Any],
        then: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Write to a queued job only while this worker still owns it; False otherwise.
        `then` runs in the same transaction when the write happened."""
        with write_tx(self.db) as conn:
            owned = update(jobs).where(
                jobs.c.id == job_pk,
                jobs.c.claimed_by == worker_id,
                jobs.c.phase.in_(QUEUED_PHASES),
            )
            written = conn.execute(owned.values(**values)).rowcount == 1
            if written and then is not None:
                then(conn)
            return written

    def renew(self, job_pk: int, worker_id: str, **values: Any) -> bool:
        """Extend the lease (and write progress); False when another worker owns the job."""
        now = now_s()
        return self._update_owned(
            job_pk, worker_id, {"claimed_until": now + self.settings.job_lease_seconds, **values}
        )

    def start_processing(self, job_pk: int, worker_id: str) -> None:
        with write_tx(self.db) as conn:
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_pk,
                    jobs.c.claimed_by == worker_id,
                    jobs.c.processing_started.is_(None),
                )
                .values(processing_started=int(time.time() * 1000))
            )

    def finish(
        self,
        job_pk: int,
        worker_id: str,
        values: dict[str, Any],
        loads: SegmentLoads | None = None,
        *,
        also: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Record the job's result; its segment load figures, its completion webhook and
        `also` (what other store regions are owed) are written in the same transaction, once:
        a job finishes only while its worker owns it, so a replayed (re-claimed) job never
        counts twice."""
        now = now_s()
        with self.db.connect() as conn:
            started = conn.execute(
                select(jobs.c.processing_started).where(jobs.c.id == job_pk)
            ).scalar()
        minutes = (time.time() * 1000 - (started or time.time() * 1000)) / 60000
        values = {
            **values,
            "time_to_process": f"{minutes:.2f}",
            "last_modified": now,
            "claimed_until": None,
        }
        if values.get("phase") == "completed":
            values.setdefault("completed_time", now)
            values["percent_complete"] = 100
        values.setdefault("validated_time", func.coalesce(jobs.c.validated_time, now))

        def then(conn: Connection) -> None:
            if loads is not None:
                record_loads(conn, loads, source=f"job:{job_pk}")
            if also is not None:
                also(conn)
            self._job_finished(conn, job_pk)

        return self._update_owned(job_pk, worker_id, values, then)

    def release(self, job_pk: int, worker_id: str, retry_in: int) -> None:
        """Give a job back after an infrastructure failure; it is retried after `retry_in` s."""
        with write_tx(self.db) as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_pk, jobs.c.claimed_by == worker_id)
                .values(claimed_until=now_s() + retry_in)
            )

    # --- retention ---------------------------------------------------------------------------

    def sweep(self, now: int | None = None) -> dict[str, int]:
        """Expire unused URLs, delete old uploaded files and old job history."""
        now = now_s() if now is None else now
        expired = self.expire_urls(now)
        self.fail_orphaned_uploads(now)
        files = 0
        file_cutoff = now - self.settings.file_retention_days * 86400
        with self.db.connect() as conn:
            old_files = conn.execute(
                select(jobs.c.id, jobs.c.file_path).where(
                    jobs.c.file_path.is_not(None),
                    jobs.c.file_deleted == 0,
                    jobs.c.phase.in_(("completed", "error")),
                    jobs.c.uploaded_time < file_cutoff,
                    # Kept, whatever the retention, until every store region has the job.
                    ~regions.job_owed(jobs.c.id),
                )
            ).all()
        for job_pk, path in old_files:
            self.files.delete(path)
            files += 1
            with write_tx(self.db) as conn:
                conn.execute(update(jobs).where(jobs.c.id == job_pk).values(file_deleted=1))
        history_cutoff = now - self.settings.history_days * 86400
        with self.db.connect() as conn:
            old = conn.execute(
                select(jobs.c.id, jobs.c.file_path, jobs.c.report_path).where(
                    jobs.c.created_on < history_cutoff,
                    jobs.c.phase.in_(("completed", "error", "starting")),
                    ~regions.job_owed(jobs.c.id),
                )
            ).all()
        for _job_pk, path, report in old:
            for ref in (path, report):
                if ref:
                    self.files.delete(ref)
        if old:
            with write_tx(self.db) as conn:
                conn.execute(delete(jobs).where(jobs.c.id.in_([r[0] for r in old])))
                regions.forget_jobs(conn, [r[0] for r in old])
        regions.purge_applied(self.db, history_cutoff)
        # Stray partial uploads whose job is no longer uploading. (On S3, incomplete
        # multipart uploads are left to the bucket's lifecycle rule: docs/scale-out.md.)
        strays = self.files.uploads.glob(".*.part") if isinstance(self.files, LocalFiles) else []
        for part in strays:
            job_id = part.name[1:-5]
            row = self.job_row(job_id)
            if (row is None or row["phase"] != "uploading") and part.stat().st_mtime < now - 60:
                part.unlink(missing_ok=True)
        return {"urls_expired": expired, "files_deleted": files, "jobs_deleted": len(old)}


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
