"""A store that keeps nothing: `bss validate` without --apply checks a file and writes nowhere."""

from __future__ import annotations

import pyarrow as pa

from bss.store.base import Membership


class DryRunStore:
    def __init__(self) -> None:
        self.rows_seen = 0

    def apply(self, batch: pa.Table) -> None:
        self.rows_seen += batch.num_rows

    def discard_job(self, job_no: int) -> None:
        return None

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        return []

    def segment_member_counts(self, now: int) -> dict[int, int]:
        return {}

    def purge_expired(self, now: int) -> int:
        return 0

    def close(self) -> None:
        return None
