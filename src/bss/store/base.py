"""The membership store interface: user -> segment memberships with expirations.

Small and batch-oriented on purpose: the embedded engine and the distributed one (Redis
Cluster) each take whole Arrow batches. Every row carries a `seq`; for one (user, segment)
the row with the highest seq wins. That makes replaying an interrupted job idempotent on any
engine: a replay writes the same rows with the same seq, and can never undo a later job's
writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

import pyarrow as pa

from bss.store.sorted_runs import WrittenKeys

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

#: Every write carries a seq from one global 64-bit counter kept in the database (see
#: bss.store.seqs): a job reserves JOB_SEQ_SPAN seqs at its first apply, records the base with
#: the job, and gives pair i of its file seq base + i; a replay reuses the recorded base. A
#: real-time post reserves exactly as many seqs as it has pairs. The later write wins by the
#: time the service first applied it, and 2**63 seqs last far beyond any deployment.
#: Data written before this layout used job_no * 2**40 + i; those seqs stay valid as they are
#: and the counter starts above them.
JOB_SEQ_SPAN = 1 << 32

#: The scope of links every member's reads follow (only admins write them); any other scope
#: is the member id whose reads alone follow the link.
SHARED_SCOPE = 0

#: Columns of a batch given to `MembershipStore.apply_links`: one link assertion or removal
#: a row, between user A and user B (either order: a link has no direction).
LINK_SCHEMA = pa.schema(
    [
        ("scope", pa.int64()),  # the member id, or SHARED_SCOPE
        ("a_kind", pa.uint8()),
        ("a_key", pa.string()),
        ("b_kind", pa.uint8()),
        ("b_key", pa.string()),
        ("asserted_at", pa.int64()),  # UNIX seconds: the job's recorded time, the post's time
        # UNIX seconds: asserted_at + BSS_LINK_TTL_DAYS, fixed when first applied. A removal
        # stays as a tombstone until then, so that no older assertion brings the link back.
        ("expires_at", pa.int64()),
        ("removed", pa.bool_()),
        ("seq", pa.int64()),
    ]
)


#: Read floors: segment id -> the seq below which the segment's entries are hidden from every
#: read (a replace's floor kept in the database, bss.lifecycle.floors). A provider is asked
#: once per read call.
Floors = Callable[[], Mapping[int, int]]


def no_floors() -> Mapping[int, int]:
    return {}


class Membership(NamedTuple):
    """One live membership. A named tuple: lookups build millions of these, and a tuple is
    built several times faster than a frozen dataclass."""

    segment_id: int
    value: int | None
    timestamp: int
    expires_at: int


class Link(NamedTuple):
    """One live link as seen from one of its ends: the other end, and the link's facts."""

    kind: int
    key: str
    scope: int
    seq: int
    asserted_at: int
    expires_at: int


def link_order(link: Link) -> tuple[int, int, int, str]:
    """How an ID's links are ranked: the most recently asserted (highest seq) first; two
    links of one seq (one assertion in two scopes cannot happen, but a total order costs
    nothing) by scope, then the other end."""
    return (-link.seq, link.scope, link.kind, link.key)


class MembershipStore(Protocol):
    """One small batch interface, the same semantics on every engine.

    For one (user, segment) the entry with the highest seq wins; an entry with a seq not
    higher than the stored one changes nothing, so applying a batch twice (a replayed job) or
    out of order never undoes a later write. Removals are kept as tombstones until their
    `expires_at` (now + 180 days) for the same reason. Expiry and future start times are
    applied at read time against `now`, and so are the read floors: every read (lookups,
    `segment_members`, `count_below`) hides a segment's entries below the floor `floors()`
    gives it, before `delete_segment` drops them (the counts drop then).
    """

    floors: Floors

    def apply(self, batch: pa.Table) -> None:
        """Write a batch (APPLY_SCHEMA) under the seq rule, atomically per (user, segment).

        Visible to readers (and reflected in the member counts) once this returns.
        """

    def apply_many(
        self,
        batches: Iterable[pa.Table],
        progress: Callable[[float], None] | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        """Apply a job's batches, as `apply` would one by one; all are visible once this
        returns, some may be before. An engine may hold them back to write them in a better
        order (the embedded one writes a job in key order) once `batches` is exhausted;
        `progress` then hears the fraction of that writing done. An exception raised by
        `progress` stops the writing (what is written stays written). `written`: a replace
        job's keeper of the keys it writes, which an engine with `written_keys` fills for
        its `drop_below` (others ignore it)."""

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        """The user's live memberships (not removed, not expired, started by `now`), by id."""

    def users_segments(self, users: Sequence[tuple[int, str]], now: int) -> list[list[Membership]]:
        """`user_segments` for many users in one call, in the order given."""

    def segment_member_counts(self, now: int) -> dict[int, int]:
        """Live members per segment id, exact to the minute, kept as writes apply: no scan.

        Segments without members are absent.
        """

    def segment_members(self, segment_id: int, now: int) -> Iterator[tuple[int, str, Membership]]:
        """Stream (user_kind, user_key, membership) of the segment's live members.

        Reads the segment's own entries only, never the whole store.
        """

    def delete_segment(self, segment_id: int, seq: int) -> None:
        """Hide at once every entry of the segment with a seq below `seq` (a seq reserved
        when the segment was deleted), and drop them from the counts; the bytes may be
        reclaimed later by `purge_expired`. Writes with a higher seq (a segment created again
        under the same explicit id) are unaffected."""

    def count_below(self, segment_id: int, seq: int, now: int) -> int:
        """How many of the segment's live members are held by an entry with a seq below
        `seq`: those a deletion (or a replace's floor) at `seq` would hide. Walks the
        segment's own entries, never the whole store."""

    def purge_expired(self, now: int) -> int:
        """Reclaim expired entries, lapsed tombstones and deleted segments' entries; return
        how many entries were dropped."""

    def apply_links(self, batch: pa.Table) -> None:
        """Write link assertions and removals (LINK_SCHEMA) under the seq rule, per (scope,
        unordered pair of users): the row with the highest seq wins, a removal stays as a
        tombstone until its `expires_at`. Visible to readers once this returns."""

    def apply_links_many(self, batches: Iterable[pa.Table]) -> None:
        """Apply a link job's batches, as `apply_links` would one by one; all are visible
        once this returns, some may be before (an engine may hold them back to write them
        in a better order, as `apply_many` does)."""

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        """For each user (in the order given), its live links (not removed, asserted by
        `now`, not expired) in any of `scopes`, ranked by `link_order`, at most `limit`.

        One call is a bounded number of round trips on a distributed engine, however many
        users it names."""

    def delete_scope_links(self, scope: int) -> None:
        """Drop every link of one scope (a deleted member's), tombstones included."""

    def close(self) -> None: ...
