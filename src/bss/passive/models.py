"""The `passive_claims` table: exactly-once bookkeeping for passively uploaded files.

One row per file version seen in a member's `submitted/` area (an S3 bucket or the local
folder). The row is created by an INSERT on a unique `identity` (a hash of backend,
location, key and the object's fingerprint): whoever inserts it owns the file; a unique
violation means another scanner already has it. The row then walks

    claimed -> job_created -> moved

and records the job it created and where the file went, so a scanner that died at any
point (before creating the job, between copy and delete, ...) can be finished by another
one without processing the file twice or losing it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from bss.db import metadata

#: Claim states, in order.
CLAIMED = "claimed"  # someone owns the file; no job yet (reclaimable after the lease)
JOB_CREATED = "job_created"  # a job exists for the file; waiting for it, then move
MOVED = "moved"  # the file sits in done/ or failed/; nothing left to do

passive_claims = Table(
    "passive_claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: sha256 hex of (backend, location, source_key, fingerprint): the exactly-once key.
    Column("identity", String(64), nullable=False, unique=True),
    #: "s3" or "folder" (the job's upload_source).
    Column("backend", String(16), nullable=False),
    #: S3: "<endpoint or aws>/<bucket>"; folder: the member folder's absolute path.
    Column("location", String(1024), nullable=False),
    Column("member_id", BigInteger, nullable=False),
    #: The file's key relative to the location, e.g. "submitted/a b/c.txt".
    Column("source_key", Text, nullable=False),
    #: S3: ETag + size; folder: size + mtime_ns + inode. A rewritten file is a new version.
    Column("fingerprint", String(256), nullable=False),
    Column("size", BigInteger, nullable=True),
    Column("state", String(16), nullable=False),
    #: Which scanner holds the claim and until when (UTC); reclaimable after expiry.
    Column("owner", String(128), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Column("job_id", String(64), nullable=True),
    Column("job_db_id", BigInteger, nullable=True),
    #: For the folder backend: where the file was parked while processing.
    Column("work_key", Text, nullable=True),
    #: "done" or "failed", and the final key, once decided.
    Column("outcome", String(16), nullable=True),
    Column("dest_key", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

Index("ix_passive_claims_state", passive_claims.c.state)
Index("ix_passive_claims_member", passive_claims.c.member_id)
