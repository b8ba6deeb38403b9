"""jobs.error_code: the file codes EMPTY_FILE and NOT_A_SEGMENT_FILE of jobs already kept are
rewritten as empty_file and not_a_segment_file, the one spelling the service now emits, so a
client or the dashboard reading the job history meets one spelling only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 05:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RENAMED = {"EMPTY_FILE": "empty_file", "NOT_A_SEGMENT_FILE": "not_a_segment_file"}


def _rename(pairs: dict[str, str]) -> None:
    statement = sa.text("UPDATE jobs SET error_code = :new WHERE error_code = :old")
    for old, new in pairs.items():
        op.get_bind().execute(statement, {"old": old, "new": new})


def upgrade() -> None:
    _rename(RENAMED)


def downgrade() -> None:
    _rename({new: old for old, new in RENAMED.items()})
