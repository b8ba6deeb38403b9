"""jobs: the queue's failure rules (failures, lost_leases, progress_mark), why a job waits
for the infrastructure (waiting_reason, waiting_since) and written_without_replica.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 02:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = (
    ("failures", sa.Integer()),
    ("lost_leases", sa.Integer()),
    ("progress_mark", sa.Integer()),
    ("waiting_reason", sa.Text()),
    ("waiting_since", sa.BigInteger()),
    ("written_without_replica", sa.Integer()),
)


def upgrade() -> None:
    # Nullable: a job queued before the upgrade reads NULL as 0 (none counted yet). A
    # database whose revision was lost but whose schema is newer has them already.
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    missing = [(name, kind) for name, kind in COLUMNS if name not in present]
    if not missing:
        return
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, kind in missing:
            batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, _kind in reversed(COLUMNS):
            batch_op.drop_column(name)
