"""The membership store interface: user -> segment memberships with expirations.

Small and batch-oriented on purpose: the embedded engine and a distributed one (Redis
Cluster, later) each take whole Arrow batches. Every row carries a `seq`; for one
(user, segment) the row with the highest seq wins. That makes replaying an interrupted
job idempotent on any engine: a replay writes the same rows with the same seq, and can
never undo a later job's writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

#: Columns of a batch given to `MembershipStore.apply`.
APPLY_SCHEMA = pa.schema(
    [
        ("user_kind", pa.uint8()),
        ("user_key", pa.string()),
        ("segment_id", pa.int64()),
        ("value", pa.int64()),  # null when the file gave none
        ("timestamp", pa.int64()),  # UNIX seconds the membership starts
        # UNIX seconds. A removal keeps its row (a tombstone, so that a replayed older job
        # cannot resurrect the pair) until this time too: now + the 180-day maximum.
        ("expires_at", pa.int64()),
        ("removed", pa.bool_()),
        ("seq", pa.int64()),
    ]
)

#: seq = job_no * JOB_SEQ_SPAN + index of the pair in its file.
JOB_SEQ_SPAN = 1 << 40


def job_seq_range(job_no: int) -> tuple[int, int]:
    """The half-open seq range a job's rows use."""
    return job_no * JOB_SEQ_SPAN, (job_no + 1) * JOB_SEQ_SPAN


@dataclass(frozen=True, slots=True)
class Membership:
    segment_id: int
    value: int | None
    timestamp: int
    expires_at: int


class MembershipStore(Protocol):
    def apply(self, batch: pa.Table) -> None:
        """Write a batch (APPLY_SCHEMA). Visible to readers once this returns."""

    def discard_job(self, job_no: int) -> None:
        """Forget rows an interrupted run of this job wrote, before it is run again.

        An engine whose writes are seq-guarded may do nothing here: the replay rewrites the
        same rows with the same seq.
        """

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        """The user's live memberships: not removed, not expired, started by `now`."""

    def segment_member_counts(self, now: int) -> dict[int, int]:
        """Live members per segment id (segments without members are absent)."""

    def purge_expired(self, now: int) -> int:
        """Drop superseded rows and pairs whose latest row has expired; return rows dropped."""

    def close(self) -> None: ...
