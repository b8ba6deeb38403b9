"""ID sync: id_sync_members (per member: mapUID enabled, its signing secret).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "id_sync_members" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database whose revision table was lost keeps the table it has
    op.create_table(
        "id_sync_members",
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=True),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("member_id"),
    )


def downgrade() -> None:
    op.drop_table("id_sync_members")
