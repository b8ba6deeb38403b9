"""Opt-outs: optout_suppressions.id_tag, the keyed tag file jobs prefilter with
(bss.lifecycle.tags). Rows kept before it have none: their scopes are checked by HMAC alone.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 06:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database whose revision table was lost and that has it already keeps it.
    inspector = sa.inspect(op.get_bind())
    if "id_tag" not in {c["name"] for c in inspector.get_columns("optout_suppressions")}:
        with op.batch_alter_table("optout_suppressions", schema=None) as batch_op:
            batch_op.add_column(sa.Column("id_tag", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("optout_suppressions", schema=None) as batch_op:
        batch_op.drop_column("id_tag")
