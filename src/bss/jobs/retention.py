"""Retention of jobs: unused upload URLs expire, old files and old history go."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from bss.db import now_s, write_tx
from bss.files.local import LocalFiles
from bss.jobs.creation import JobCreation
from bss.jobs.models import jobs
from bss.store import regions


class JobRetention(JobCreation):
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
