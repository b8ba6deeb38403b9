"""A store that keeps nothing: `bss validate` without --apply checks a file and writes nowhere."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from bss.store.base import Link, Membership, no_floors
from bss.store.sorted_runs import WrittenKeys


class DryRunStore:
    def __init__(self) -> None:
        self.rows_seen = 0
        self.floors = no_floors

    def apply(self, batch: pa.Table) -> None:
        self.rows_seen += batch.num_rows

    def apply_many(
        self,
        batches: Iterable[pa.Table],
        progress: Callable[[float], None] | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        for batch in batches:
            self.apply(batch)

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        return []

    def users_segments(self, users: Sequence[tuple[int, str]], now: int) -> list[list[Membership]]:
        return [[] for _ in users]

    def segment_member_counts(self, now: int) -> dict[int, int]:
        return {}

    def segment_members(self, segment_id: int, now: int) -> Iterator[tuple[int, str, Membership]]:
        return iter(())

    def delete_segment(self, segment_id: int, seq: int) -> None:
        return None

    def count_below(self, segment_id: int, seq: int, now: int) -> int:
        return 0

    def purge_expired(self, now: int) -> int:
        return 0

    def apply_links(self, batch: pa.Table) -> None:
        self.rows_seen += batch.num_rows

    def apply_links_many(self, batches: Iterable[pa.Table]) -> None:
        for batch in batches:
            self.apply_links(batch)

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        return [[] for _ in users]

    def delete_scope_links(self, scope: int) -> None:
        return None

    def close(self) -> None:
        return None
