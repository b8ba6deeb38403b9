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
    #: Runs started (claims). What may end a job is `failures`, not this.
    Column("attempts", Integer, nullable=False, default=0),
    #: Runs that failed by the job's own fault (bss.queue.failures), counted against
    #: BSS_JOB_MAX_ATTEMPTS; a failure of the infrastructure never counts.
    Column("failures", Integer, nullable=True, default=0),
    #: Leases that lapsed in a row (a worker killed or out of memory) without the job getting
    #: further than before (`progress_mark`); every LOST_LEASES_PER_FAILURE count as one failure.
    Column("lost_leases", Integer, nullable=True, default=0),
    #: The furthest a run of the job got (phase rank * 1000 + per mille of the phase).
    Column("progress_mark", Integer, nullable=True, default=0),
    #: While the job waits for the infrastructure (store, database, files store): why, and
    #: since when (UNIX seconds); both cleared when a run gets through.
    Column("waiting_reason", Text, nullable=True),
    Column("waiting_since", BigInteger, nullable=True),
    #: 1 when the store wrote some of the job while a shard had no replica to confirm it.
    Column("written_without_replica", Integer, nullable=True),
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
