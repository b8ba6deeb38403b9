"""Reading jobs: the documented job object, one job, the history and the figures about
them. Every other part of the job service builds on these."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, func, select

from bss.db import fmt_ts, now_s, run_sql
from bss.errors import Invalid
from bss.files import FileStore
from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import PHASES, jobs
from bss.lifecycle.replace import APPEND, REPLACE, replace_removed_total
from bss.settings import Settings
from bss.store import regions
from bss.webhooks.service import enqueue_job_finished

#: Phases in which a job waits for (or is being worked by) a worker.
QUEUED_PHASES = ("validating", "processing")

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


class JobQueries:
    db: Engine
    settings: Settings
    files: FileStore

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
        # Extra fields: why a queued job is waiting (the store, database or files store is
        # unavailable) and since when, and whether the store wrote some of it while a shard
        # had no replica to confirm the writes (BSS_STORE_WAIT_REPLICAS=attached).
        out["waiting_reason"] = row.get("waiting_reason")
        out["waiting_since"] = fmt_ts(row.get("waiting_since"))
        out["written_without_replica"] = bool(row.get("written_without_replica"))
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

    def job_id_of(self, job_pk: int) -> str:
        with self.db.connect() as conn:
            return conn.execute(select(jobs.c.job_id).where(jobs.c.id == job_pk)).scalar_one()
