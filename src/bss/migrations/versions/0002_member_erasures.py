"""member_erasures: the audit record of member erasures (DELETE /member).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 02:26:59
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The table came to main (296fcb3) while init_db still created missing tables: a database
    # made in between has it already.
    if "member_erasures" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "member_erasures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("requested_on", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("segment_ids", sa.Text(), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("jobs_erased", sa.Integer(), nullable=False),
        sa.Column("store_seq", sa.BigInteger(), nullable=True),
        sa.Column("completed_on", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("member_erasures", schema=None) as batch_op:
        batch_op.create_index("ix_member_erasures_member", ["member_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("member_erasures", schema=None) as batch_op:
        batch_op.drop_index("ix_member_erasures_member")
    op.drop_table("member_erasures")
