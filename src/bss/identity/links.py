"""Link batches (LINK_SCHEMA) as the ways in build them, and link removal for opt-outs."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from bss.store.base import LINK_SCHEMA, MembershipStore

User = tuple[int, str]
DAY_SECONDS = 86_400
#: Links of one ID a removal takes: all of them (the store keeps every live link).
_ALL = 1 << 31


def link_batch(
    scope: int,
    links: Sequence[tuple[User, User, bool]],
    *,
    asserted_at: int,
    ttl_days: int,
    first_seq: int,
) -> pa.Table:
    """A batch of (a, b, removed) in one scope, asserted at `asserted_at` (expiring
    `ttl_days` later, removals too: a tombstone lives as long as the assertion it beats),
    link i given seq `first_seq + i`."""
    expires = asserted_at + ttl_days * DAY_SECONDS
    n = len(links)
    return pa.table(
        {
            "scope": pa.array([scope] * n, pa.int64()),
            "a_kind": pa.array([a[0] for a, _, _ in links], pa.uint8()),
            "a_key": pa.array([a[1] for a, _, _ in links], pa.string()),
            "b_kind": pa.array([b[0] for _, b, _ in links], pa.uint8()),
            "b_key": pa.array([b[1] for _, b, _ in links], pa.string()),
            "asserted_at": pa.array([asserted_at] * n, pa.int64()),
            "expires_at": pa.array([expires] * n, pa.int64()),
            "removed": pa.array([r for _, _, r in links], pa.bool_()),
            "seq": pa.array(range(first_seq, first_seq + n), pa.int64()),
        },
        schema=LINK_SCHEMA,
    )


def remove_links_of(
    store: MembershipStore,
    users: Sequence[User],
    scope: int,
    *,
    seq: int,
    now: int,
    ttl_days: int,
) -> pa.Table:
    """Remove every live link of `users` in `scope` (an opted-out person's links): one
    tombstone per link, all at `seq` (reserved by the caller, above every write it must
    beat), kept `ttl_days`. Applied to `store`; the batch is returned so that the caller
    can owe it to the other store regions (bss.store.regions)."""
    found = store.top_links(users, [scope], now, _ALL)
    pairs: dict[tuple[User, User], None] = {}
    for user, links in zip(users, found, strict=True):
        for link in links:
            other = (link.kind, link.key)
            pairs[(user, other) if user <= other else (other, user)] = None
    batch = link_batch(
        scope, [(a, b, True) for a, b in pairs], asserted_at=now, ttl_days=ttl_days, first_seq=seq
    )
    # One seq for every tombstone: they are distinct links, each beaten by nothing older.
    batch = batch.set_column(
        LINK_SCHEMA.get_field_index("seq"), "seq", pa.array([seq] * len(pairs), pa.int64())
    )
    store.apply_links(batch)
    return batch
