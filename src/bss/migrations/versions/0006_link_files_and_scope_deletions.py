"""Identity graph: jobs.file_type (a link file's job) and region_writes.links_scope (a deleted
member's links owed to the other store regions).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 02:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database whose revision table was lost and that has them already keeps them.
    inspector = sa.inspect(op.get_bind())
    if "file_type" not in {c["name"] for c in inspector.get_columns("jobs")}:
        with op.batch_alter_table("jobs", schema=None) as batch_op:
            batch_op.add_column(sa.Column("file_type", sa.String(length=10), nullable=True))
    if "links_scope" not in {c["name"] for c in inspector.get_columns("region_writes")}:
        with op.batch_alter_table("region_writes", schema=None) as batch_op:
            batch_op.add_column(sa.Column("links_scope", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("region_writes", schema=None) as batch_op:
        batch_op.drop_column("links_scope")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("file_type")
