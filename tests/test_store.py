"""The membership store contract on every engine (LMDB, one Redis, a Redis Cluster): highest
seq wins, expiry, exact counts, segment members, segment deletion, purge; LMDB restart and
the URL setting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from cluster_util import (  # noqa: F401 - fixtures
    Stores,
    opened,
    redis_cluster_fixture,
    redis_single_fixture,
    stores_fixture,
)

from bss.errors import StoreUrlError
from bss.formats.records import UserKind
from bss.store import open_store
from bss.store.base import APPLY_SCHEMA, MembershipStore
from bss.store.keyvalue import LmdbStore

NOW = 1_800_000_000  # ahead of the clock: counts fold up to the present as writes apply
DAY = 86_400
ANID, DEVICE = int(UserKind.ANID), int(UserKind.DEVICE)


def batch(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {name: list(col) for name, col in zip(APPLY_SCHEMA.names, cols, strict=True)},
        schema=APPLY_SCHEMA,
    )


def row(
    key: str,
    seg: int,
    *,
    seq: int,
    removed: bool = False,
    exp: int = NOW + DAY,
    ts: int = NOW,
    value=None,
    kind: int = ANID,
):
    return (kind, key, seg, value, ts, exp, removed, seq)


@pytest.fixture
def store(stores: Stores) -> Iterator[MembershipStore]:
    """A fresh store of each engine (LMDB, one Redis, a Redis Cluster) in turn."""
    with opened(stores) as s:
        yield s


def segs(store: MembershipStore, key: str, now: int = NOW, kind: int = ANID) -> list[int]:
    return [m.segment_id for m in store.user_segments(kind, key, now)]


def test_highest_seq_wins_whatever_the_write_order(store: MembershipStore) -> None:
    store.apply(batch([row("1", 10, seq=5, value=7), row("1", 11, seq=6)]))
    store.apply(batch([row("1", 10, seq=3, value=99)]))  # an older write arriving late
    got = store.user_segments(ANID, "1", NOW)
    assert [(m.segment_id, m.value) for m in got] == [(10, 7), (11, None)]
    store.apply(batch([row("1", 10, seq=9, removed=True)]))
    assert segs(store, "1") == [11]
    store.apply(batch([row("1", 10, seq=8, value=1)]))  # the tombstone holds it off
    assert segs(store, "1") == [11]
    assert store.user_segments(DEVICE, "1", NOW) == []
    assert store.segment_member_counts(NOW) == {11: 1}


def test_one_batch_with_repeats_keeps_the_highest_seq(store: MembershipStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=4, value=4),
                row("1", 10, seq=9, value=9),
                row("1", 10, seq=2, value=2),
            ]
        )
    )
    assert [m.value for m in store.user_segments(ANID, "1", NOW)] == [9]
    assert store.segment_member_counts(NOW) == {10: 1}


def test_replaying_a_batch_changes_nothing(store: MembershipStore) -> None:
    first = batch([row(str(u), 10 + u % 3, seq=100 + u, value=u) for u in range(50)])
    store.apply(first)
    store.apply(batch([row("7", 11, seq=1000, removed=True)]))  # a later job
    before = store.users_segments([(ANID, str(u)) for u in range(50)], NOW)
    counts = store.segment_member_counts(NOW)
    store.apply(first)
    assert store.users_segments([(ANID, str(u)) for u in range(50)], NOW) == before
    assert store.segment_member_counts(NOW) == counts
    assert counts == {10: 17, 11: 16, 12: 16}  # user 7 left 11


def test_user_keys_that_prefix_each_other_stay_apart(store: MembershipStore) -> None:
    store.apply(batch([row("12", 10, seq=1), row("123", 11, seq=2), row("1", 12, seq=3)]))
    assert segs(store, "12") == [10]
    assert segs(store, "123") == [11]
    assert segs(store, "1") == [12]


def test_expired_and_future_memberships_are_not_live(store: MembershipStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=1, exp=NOW - 1),
                row("1", 11, seq=2, ts=NOW + 600),
                row("1", 12, seq=3),
            ]
        )
    )
    assert segs(store, "1") == [12]
    assert segs(store, "1", NOW + 600) == [11, 12]
    assert segs(store, "1", NOW + DAY - 1) == [11, 12]
    assert segs(store, "1", NOW + DAY) == []


def test_batch_lookup_answers_in_the_order_given(store: MembershipStore) -> None:
    store.apply(batch([row("1", 10, seq=1), row("idfa:ab", 11, seq=2, kind=DEVICE)]))
    got = store.users_segments([(DEVICE, "idfa:ab"), (ANID, "404"), (ANID, "1")], NOW)
    assert [[m.segment_id for m in ms] for ms in got] == [[11], [], [10]]


def test_counts_are_exact_across_starts_expiries_and_removals(store: MembershipStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=1, exp=NOW + 600),
                row("2", 10, seq=2, ts=NOW + 300),
                row("3", 10, seq=3),
                row("4", 20, seq=4, exp=NOW + 60),
            ]
        )
    )
    assert store.segment_member_counts(NOW) == {10: 2, 20: 1}
    assert store.segment_member_counts(NOW + 60) == {10: 2}
    assert store.segment_member_counts(NOW + 300) == {10: 3}
    assert store.segment_member_counts(NOW + 600) == {10: 2}
    store.apply(batch([row("3", 10, seq=10, removed=True)]))
    assert store.segment_member_counts(NOW) == {10: 1, 20: 1}
    assert store.segment_member_counts(NOW + 600) == {10: 1}
    # An extension of a membership replaces its old expiry.
    store.apply(batch([row("1", 10, seq=11, exp=NOW + 1200)]))
    assert store.segment_member_counts(NOW + 600) == {10: 2}
    assert store.segment_member_counts(NOW + 1200) == {10: 1}
    # Folding the events into the base (the hourly purge) keeps every later answer.
    assert store.purge_expired(NOW + 300) == 1  # user 4's entry in 20 lapsed
    assert store.segment_member_counts(NOW + 300) == {10: 2}
    assert store.segment_member_counts(NOW + 1200) == {10: 1}
    store.apply(batch([row("5", 10, seq=12, ts=NOW, exp=NOW + 900)]))  # starts before the fold
    assert store.segment_member_counts(NOW + 600) == {10: 3}
    assert store.segment_member_counts(NOW + 900) == {10: 2}
    assert sorted(k for _, k, _ in store.segment_members(10, NOW + 600)) == ["1", "2", "5"]


def test_segment_members_streams_live_members_of_that_segment_only(store: MembershipStore) -> None:
    store.apply(
        batch(
            [row(str(u), 10, seq=u + 1, value=u) for u in range(30)]
            + [row("x", 11, seq=100), row("idfa:q", 10, seq=101, kind=DEVICE)]
            + [row("5", 10, seq=200, removed=True), row("6", 10, seq=201, exp=NOW - 5)]
        )
    )
    members = list(store.segment_members(10, NOW))
    keys = sorted((kind, key) for kind, key, _ in members)
    assert len(keys) == 29
    assert (DEVICE, "idfa:q") in keys and (ANID, "5") not in keys and (ANID, "6") not in keys
    assert all(m.segment_id == 10 for _, _, m in members)


def test_deleted_segment_takes_its_memberships_along(store: MembershipStore) -> None:
    store.apply(batch([row("5555", 7, seq=10), row("5555", 8, seq=11), row("1", 7, seq=12)]))
    store.delete_segment(7, seq=20)
    assert segs(store, "5555") == [8]
    assert store.segment_member_counts(NOW) == {8: 1}
    assert list(store.segment_members(7, NOW)) == []
    store.apply(batch([row("5555", 7, seq=15)]))  # a replay of an older job stays hidden
    assert segs(store, "5555") == [8]
    store.apply(batch([row("9", 7, seq=30)]))  # a segment given id 7 again
    assert segs(store, "9") == [7]
    assert segs(store, "5555") == [8]
    assert store.segment_member_counts(NOW) == {7: 1, 8: 1}


def test_purge_keeps_live_entries_and_tombstones(store: MembershipStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=1, exp=NOW - 10),
                row("2", 10, seq=2, removed=True, exp=NOW + 180 * DAY),
                row("3", 10, seq=3),
            ]
        )
    )
    assert store.purge_expired(NOW) == 1
    assert store.purge_expired(NOW) == 0
    store.apply(batch([row("2", 10, seq=1)]))  # the tombstone still holds off an older write
    assert segs(store, "2") == []
    assert segs(store, "3") == [10]


def test_a_reopened_store_has_everything(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "m.lmdb")
    s.apply(batch([row("1", 10, seq=1)]))
    s.close()
    s = LmdbStore(tmp_path / "m.lmdb")
    assert segs(s, "1") == [10]
    assert s.segment_member_counts(NOW) == {10: 1}
    s.close()


def test_a_segment_deleted_while_a_job_writes_loses_every_entry_of_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LMDB writes a job's entries, then their segment index keys: a deletion between the two
    still takes every entry the job wrote to the segment, as a deletion before or after."""
    monkeypatch.setattr("bss.store.keyvalue.MERGE_ROWS", 50)
    s = LmdbStore(tmp_path / "m.lmdb")
    users = [str(i) for i in range(1, 201)]
    batches = [
        batch([row(u, seg, seq=1 + n) for n, u in enumerate(part) for seg in (7, 8)])
        for part in (users[:100], users[100:])
    ]
    deleted: list[float] = []

    def delete_once_the_entries_are_written(fraction: float) -> None:
        if fraction >= 0.5 and not deleted:
            deleted.append(fraction)
            # Above every seq of the job, as a deletion during the job is.
            s.delete_segment(7, seq=1_000)

    s.apply_many(iter(batches), delete_once_the_entries_are_written)
    assert deleted == [0.5]
    assert s.users_segments([(ANID, u) for u in users], NOW) == [
        s.user_segments(ANID, u, NOW) for u in users
    ]
    assert {segs(s, u)[0] for u in users} == {8} and all(len(segs(s, u)) == 1 for u in users)
    assert list(s.segment_members(7, NOW)) == []
    assert sorted(key for _kind, key, _m in s.segment_members(8, NOW)) == sorted(users)
    assert s.segment_member_counts(NOW) == {8: 200}
    s.close()


def test_a_job_repeating_pairs_across_batches_reports_its_writing_up_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bss.store.keyvalue.MERGE_ROWS", 40)
    s = LmdbStore(tmp_path / "m.lmdb")
    users = [str(i) for i in range(1, 101)]
    # The same 100 pairs in both batches, the second with higher seqs.
    batches = [batch([row(u, 7, seq=base + n) for n, u in enumerate(users)]) for base in (1, 500)]
    progress: list[float] = []
    s.apply_many(iter(batches), progress.append)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert sorted(key for _kind, key, _m in s.segment_members(7, NOW)) == sorted(users)
    assert s.segment_member_counts(NOW) == {7: 100}
    s.close()


def test_store_url_scheme_is_checked(tmp_path: Path) -> None:
    with pytest.raises(StoreUrlError, match="unsupported membership store URL 'rocksdb:///x'"):
        open_store("rocksdb:///x")
    s = open_store(f"lmdb://{tmp_path / 'm.lmdb'}")
    s.close()
