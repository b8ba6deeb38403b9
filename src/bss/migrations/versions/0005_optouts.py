"""Opt-outs (bss.lifecycle.optout): their requests, the suppression list, the service's own
secrets, and the jobs counter num_opted_out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:55:02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database whose revision table was lost and that has them already keeps them.
    inspector = sa.inspect(op.get_bind())
    if "optout_requests" in inspector.get_table_names():
        return
    op.create_table(
        "optout_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("requested_on", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ids", sa.Integer(), nullable=False),
        sa.Column("memberships_removed", sa.Integer(), nullable=False),
        sa.Column("links_removed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("optout_requests", schema=None) as batch_op:
        batch_op.create_index("ix_optout_requests_member", ["member_id", "id"], unique=False)

    op.create_table(
        "optout_suppressions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.Integer(), nullable=False),
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("optout_seq", sa.BigInteger(), nullable=False),
        sa.Column("withdrawn_seq", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("optout_suppressions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_optout_suppressions_scope_hash", ["scope", "id_hash"], unique=False
        )

    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("num_opted_out", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("num_opted_out")

    op.drop_table("service_secrets")
    with op.batch_alter_table("optout_suppressions", schema=None) as batch_op:
        batch_op.drop_index("ix_optout_suppressions_scope_hash")

    op.drop_table("optout_suppressions")
    with op.batch_alter_table("optout_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_optout_requests_member")

    op.drop_table("optout_requests")
