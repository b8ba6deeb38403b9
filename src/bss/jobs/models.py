"""The `jobs` table: batch segment upload jobs, which are also the work queue."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from bss.db import metadata
from bss.ingest.result import COUNTER_NAMES

PHASES = ("starting", "uploading", "validating", "processing", "completed", "error")

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False, unique=True),
    Column("member_id", Integer, nullable=False),
    Column("phase", String(20), nullable=False),
    Column("upload_url", Text, nullable=True),
    #: "api", "s3" or "folder"
    Column("upload_source", String(10), nullable=False, default="api"),
    Column("source_key", Text, nullable=True),
    #: "links" for a link file (bss.identity.ingest); null for a segment file.
    Column("file_type", String(10), nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("last_modified", BigInteger, nullable=False),
    Column("start_time", BigInteger, nullable=True),
    Column("uploaded_time", BigInteger, nullable=True),
    Column("validated_time", BigInteger, nullable=True),
    Column("completed_time", BigInteger, nullable=True),
    #: Sub-second clock of processing start/end, for time_to_process.
    Column("processing_started", BigInteger, nullable=True),  # milliseconds
    Column("time_to_process", String(20), nullable=True),
    Column("percent_complete", Integer, nullable=False, default=0),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    *[Column(name, BigInteger, nullable=False, default=0) for name in COUNTER_NAMES],
    Column("error_log_lines", Text, nullable=True),
    Column("segment_log_lines", Text, nullable=True),
    Column("file_path", Text, nullable=True),
    Column("file_bytes", BigInteger, nullable=False, default=0),
    Column("file_lines", BigInteger, nullable=False, default=0),
    Column("file_deleted", Integer, nullable=False, default=0),
    Column("report_path", Text, nullable=True),
    Column("lines_read", BigInteger, nullable=False, default=0),
    Column("pairs_added", BigInteger, nullable=False, default=0),
    Column("pairs_removed", BigInteger, nullable=False, default=0),
    #: Queue lease: a worker owns the job until claimed_until (UNIX seconds), renewed while
    #: it works; an expired lease means the worker died and the job is claimed again.
    Column("claimed_until", BigInteger, nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    #: First of the JOB_SEQ_SPAN store seqs reserved at the job's first run; a replay of an
    #: interrupted run reuses them (bss.store.seqs).
    Column("seq_base", BigInteger, nullable=True),
    #: "replace" for a replace-mode upload (bss.lifecycle.replace); null: append.
    Column("mode", String(10), nullable=True),
    #: 1 when the upload said force=true: the replace removal guard does not apply.
    Column("replace_force", Integer, nullable=True),
    #: JSON, a replace job's bookkeeping kept across replays: the member counts of its
    #: segments before its first run, and what the floors removed (bss.lifecycle.replace).
    Column("replace_state", Text, nullable=True),
    #: Valid pairs not applied because their user opted out (an extra counter).
    Column("num_opted_out", BigInteger, nullable=True),
    Index("ix_jobs_member_modified", "member_id", "last_modified"),
    #: A member's history newest first (ORDER BY id DESC LIMIT n) without sorting all its
    #: jobs: 100 of 5000 in under 1 ms instead of ~100 ms on SQLite.
    Index("ix_jobs_member_id", "member_id", "id"),
    Index("ix_jobs_phase", "phase", "id"),
)
