"""Replace floors kept with the segments (bss.lifecycle.floors): segment_floors.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database whose revision table was lost and that has it already keeps it.
    if "segment_floors" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "segment_floors",
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "region"),
    )


def downgrade() -> None:
    op.drop_table("segment_floors")
