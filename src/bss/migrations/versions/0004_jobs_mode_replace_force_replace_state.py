"""jobs: mode, replace_force, replace_state (replace-mode uploads, bss.lifecycle.replace).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 02:39:24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database whose revision table was lost and that has them already keeps them.
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    columns: list[sa.Column[Any]] = [
        sa.Column("mode", sa.String(length=10), nullable=True),
        sa.Column("replace_force", sa.Integer(), nullable=True),
        sa.Column("replace_state", sa.Text(), nullable=True),
    ]
    missing = [c for c in columns if c.name not in present]
    if not missing:
        return
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in missing:
            batch_op.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("replace_state")
        batch_op.drop_column("replace_force")
        batch_op.drop_column("mode")
