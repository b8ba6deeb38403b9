"""Baseline: the schema as `bss.db.init_db` made it before migrations existed.

Written out here, not taken from the models, so that later model changes (each with a
revision of its own) never change what this revision makes. A database made before
migrations has no alembic_version table: this revision then creates the tables it lacks and
adds the nullable columns and indexes an older version lacked, as init_db did, and leaves the
data as it is.

Revision ID: 0001
Revises:
Create Date: 2026-12-06 02:07:35
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _baseline() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(
        "batch_segment_configs",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("member_id"),
    )
    sa.Table(
        "job_replays",
        meta,
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("applied_as_of", sa.BigInteger(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("registry", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    sa.Table(
        "jobs",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=20), nullable=False),
        sa.Column("upload_url", sa.Text(), nullable=True),
        sa.Column("upload_source", sa.String(length=10), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("uploaded_time", sa.BigInteger(), nullable=True),
        sa.Column("validated_time", sa.BigInteger(), nullable=True),
        sa.Column("completed_time", sa.BigInteger(), nullable=True),
        sa.Column("processing_started", sa.BigInteger(), nullable=True),
        sa.Column("time_to_process", sa.String(length=20), nullable=True),
        sa.Column("percent_complete", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("num_valid", sa.BigInteger(), nullable=False),
        sa.Column("num_invalid_format", sa.BigInteger(), nullable=False),
        sa.Column("num_valid_user", sa.BigInteger(), nullable=False),
        sa.Column("num_invalid_user", sa.BigInteger(), nullable=False),
        sa.Column("num_invalid_segment", sa.BigInteger(), nullable=False),
        sa.Column("num_invalid_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("num_unauth_segment", sa.BigInteger(), nullable=False),
        sa.Column("num_past_expiration", sa.BigInteger(), nullable=False),
        sa.Column("num_inactive_segment", sa.BigInteger(), nullable=False),
        sa.Column("num_other_error", sa.BigInteger(), nullable=False),
        sa.Column("error_log_lines", sa.Text(), nullable=True),
        sa.Column("segment_log_lines", sa.Text(), nullable=True),
        sa.Column("file_path", sa.Text(), nullable=True),
        sa.Column("file_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_lines", sa.BigInteger(), nullable=False),
        sa.Column("file_deleted", sa.Integer(), nullable=False),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("lines_read", sa.BigInteger(), nullable=False),
        sa.Column("pairs_added", sa.BigInteger(), nullable=False),
        sa.Column("pairs_removed", sa.BigInteger(), nullable=False),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("seq_base", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
        sa.Index("ix_jobs_member_id", "member_id", "id"),
        sa.Index("ix_jobs_member_modified", "member_id", "last_modified"),
        sa.Index("ix_jobs_phase", "phase", "id"),
    )
    sa.Table(
        "leases",
        meta,
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    sa.Table(
        "members",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    sa.Table(
        "passive_claims",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("identity", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=256), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("job_db_id", sa.BigInteger(), nullable=True),
        sa.Column("work_key", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("dest_key", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identity"),
        sa.Index("ix_passive_claims_member", "member_id"),
        sa.Index("ix_passive_claims_state", "state"),
    )
    sa.Table(
        "rate_counters",
        meta,
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("window_end", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    sa.Table(
        "region_writes",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("region", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("batch", sa.LargeBinary(), nullable=True),
        sa.Column("segment_id", sa.Integer(), nullable=True),
        sa.Column("delete_seq", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_try", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_region_writes_due", "state", "next_try"),
        sa.Index("ix_region_writes_job", "job_id", "region", unique=True),
    )
    sa.Table(
        "reports",
        meta,
        sa.Column("report_id", sa.String(length=32), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("report_type", sa.String(length=40), nullable=False),
        sa.Column("json_request", sa.Text(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("start_day", sa.Integer(), nullable=False),
        sa.Column("end_day", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("execution_status", sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint("report_id"),
    )
    sa.Table(
        "rt_idempotency_keys",
        meta,
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("member_id", "idempotency_key"),
    )
    sa.Table(
        "segment_id_counter",
        meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    sa.Table(
        "segment_load_sources",
        meta,
        sa.Column("source", sa.String(length=120), nullable=False),
        sa.Column("counted_on", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )
    sa.Table(
        "segment_loads",
        meta,
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("loads", sa.BigInteger(), nullable=False),
        sa.Column("removals", sa.BigInteger(), nullable=False),
        sa.Column("uniques", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("segment_id", "day"),
    )
    sa.Table(
        "segments",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=True),
        sa.Column("code_key", sa.String(length=50), nullable=True),
        sa.Column("short_name", sa.String(length=255), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("expire_minutes", sa.Integer(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ux_segments_member_code", "member_id", "code_key", unique=True),
    )
    sa.Table(
        "seq_counters",
        meta,
        sa.Column("name", sa.String(length=20), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    sa.Table(
        "webhook_deliveries",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("first_attempt_on", sa.BigInteger(), nullable=True),
        sa.Column("last_attempt_on", sa.BigInteger(), nullable=True),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_on", sa.BigInteger(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=80), nullable=True),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id"),
        sa.Index("ix_webhook_deliveries_member_state", "member_id", "state", "id"),
        sa.Index("ix_webhook_deliveries_state_next", "state", "next_attempt_ms"),
    )
    sa.Table(
        "users",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("user_type", sa.String(length=20), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    sa.Table(
        "logins",
        meta,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_logins_user_at", "user_id", "at"),
    )
    sa.Table(
        "tokens",
        meta,
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
        sa.Index("ix_tokens_expires_at", "expires_at"),
    )
    return meta


def upgrade() -> None:
    bind = op.get_bind()
    meta = _baseline()
    present = set(sa.inspect(bind).get_table_names())
    meta.create_all(bind, checkfirst=True)
    for table in meta.sorted_tables:
        if table.name not in present:
            continue  # just created whole
        inspector = sa.inspect(bind)
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in columns and column.nullable:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: restore a backup instead")
