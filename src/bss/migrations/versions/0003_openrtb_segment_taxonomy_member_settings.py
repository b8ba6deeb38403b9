"""openrtb: segments' taxonomy_id and taxonomy_node, and members' OpenRTB answer settings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 02:41:32
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each step is skipped where it is done already: a database whose revision table was
    # lost (tests/test_migrations.py drops it from one made at the head) is stamped at the
    # baseline and brought up again.
    inspector = sa.inspect(op.get_bind())
    if "openrtb_member_settings" not in inspector.get_table_names():
        _create_settings()
    present = {c["name"] for c in inspector.get_columns("segments")}
    with op.batch_alter_table("segments", schema=None) as batch_op:
        if "taxonomy_id" not in present:
            batch_op.add_column(sa.Column("taxonomy_id", sa.Integer(), nullable=True))
        if "taxonomy_node" not in present:
            batch_op.add_column(sa.Column("taxonomy_node", sa.String(length=100), nullable=True))


def _create_settings() -> None:
    op.create_table(
        "openrtb_member_settings",
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("user_id_is_external", sa.Boolean(), nullable=False),
        sa.Column("segment_id_field", sa.String(length=10), nullable=False),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("member_id"),
    )


def downgrade() -> None:
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.drop_column("taxonomy_node")
        batch_op.drop_column("taxonomy_id")
    op.drop_table("openrtb_member_settings")
