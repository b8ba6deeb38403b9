"""Batch segment upload jobs, one service in four parts: reading jobs (bss.jobs.queries),
creating them and the state of their uploads (bss.jobs.creation), the queue workers take them
from (bss.jobs.queue) and retention (bss.jobs.retention).

`JobService(engine_or_db, settings)` is also the entry point the passive scanners use:
`submit_file(...)` and `get_job(...)`.
"""

from __future__ import annotations

from sqlalchemy import Engine

from bss.db import init_db, make_engine
from bss.files import open_files
from bss.jobs.creation import UPLOAD_SOURCES, UPLOAD_TOUCH_SECONDS, new_job_id
from bss.jobs.queries import FILTER_FIELDS, QUEUED_PHASES, SORT_FIELDS
from bss.jobs.queue import JobQueue
from bss.jobs.retention import JobRetention
from bss.settings import Settings

__all__ = [
    "FILTER_FIELDS",
    "QUEUED_PHASES",
    "SORT_FIELDS",
    "UPLOAD_SOURCES",
    "UPLOAD_TOUCH_SECONDS",
    "JobService",
    "new_job_id",
]


class JobService(JobRetention, JobQueue):
    def __init__(self, engine_or_db: Engine | str, settings: Settings) -> None:
        if isinstance(engine_or_db, str):
            engine_or_db = make_engine(engine_or_db)
            init_db(engine_or_db)
        self.db = engine_or_db
        self.settings = settings
        self.files = open_files(
            settings.resolved_files_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            scratch=settings.data_dir / "scratch",
        )
        #: Local room for a job's error report while it is written.
        self.reports_dir = settings.data_dir / "reports"
        self.reports_dir.mkdir(parents=True, exist_ok=True)
