"""The membership store contract (bss.store.base), run against every engine: the embedded
LMDB store, one real redis-server, and a real Redis Cluster (3 masters + 3 replicas).

Each check compares the engine with `Model`, a plain-Python statement of the contract, so
every engine is held to exactly the same answers: the seq rule under replays and reordering,
tombstones, exact counts at any later time, segment members, segment deletion, purge.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cluster_util import (  # noqa: F401 - fixtures
    RedisServer,
    Stores,
    needs_redis,
    opened,
    redis_cluster_fixture,
    redis_single_fixture,
    stores_fixture,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bss.errors import StoreUnavailable
from bss.store import APPLY_SCHEMA, Membership, MembershipStore, open_store

NOW = 1_800_000_000


# --- the contract in plain Python ------------------------------------------------------------


@dataclass
class Row:
    user_kind: int
    user_key: str
    segment_id: int
    value: int | None
    timestamp: int
    expires_at: int
    removed: bool
    seq: int


class Model:
    def __init__(self) -> None:
        self.entries: dict[tuple[int, str, int], Row] = {}
        self.deleted: dict[int, int] = {}
        #: Entries a segment deletion hid: reclaimable at once, reported by the next purge.
        self.hidden_dropped = 0

    def _hidden(self, row: Row) -> bool:
        return row.seq < self.deleted.get(row.segment_id, -1)

    def apply(self, rows: list[Row]) -> None:
        for row in rows:
            key = (row.user_kind, row.user_key, row.segment_id)
            old = self.entries.get(key)
            if self._hidden(row) or (old is not None and old.seq >= row.seq):
                continue
            self.entries[key] = row

    def _live(self, now: int) -> Iterator[Row]:
        for row in self.entries.values():
            if not row.removed and row.timestamp <= now < row.expires_at and not self._hidden(row):
                yield row

    def user_segments(self, kind: int, key: str, now: int) -> list[Membership]:
        rows = [r for r in self._live(now) if (r.user_kind, r.user_key) == (kind, key)]
        return sorted((_m(r) for r in rows), key=lambda m: m.segment_id)

    def counts(self, now: int) -> dict[int, int]:
        out: dict[int, int] = {}
        for row in self._live(now):
            out[row.segment_id] = out.get(row.segment_id, 0) + 1
        return out

    def members(self, segment_id: int, now: int) -> set[tuple[int, str, Membership]]:
        return {
            (r.user_kind, r.user_key, _m(r)) for r in self._live(now) if r.segment_id == segment_id
        }

    def delete_segment(self, segment_id: int, seq: int) -> None:
        self.deleted[segment_id] = max(seq, self.deleted.get(segment_id, -1))
        hidden = [k for k, r in self.entries.items() if self._hidden(r)]
        for key in hidden:
            del self.entries[key]
        self.hidden_dropped += len(hidden)

    def purge(self, now: int) -> int:
        drop = [k for k, r in self.entries.items() if r.expires_at <= now]
        for key in drop:
            del self.entries[key]
        dropped, self.hidden_dropped = len(drop) + self.hidden_dropped, 0
        return dropped


def _m(row: Row) -> Membership:
    return Membership(row.segment_id, row.value, row.timestamp, row.expires_at)


def table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist([vars(r) for r in rows], schema=APPLY_SCHEMA)


def check_equal(
    store: MembershipStore, model: Model, users: list[tuple[int, str]], now: int
) -> None:
    assert store.segment_member_counts(now) == model.counts(now)
    assert store.users_segments(users, now) == [model.user_segments(k, u, now) for k, u in users]
    for kind, key in users[:3]:
        assert store.user_segments(kind, key, now) == model.user_segments(kind, key, now)
    for segment_id in model.counts(now):
        assert set(store.segment_members(segment_id, now)) == model.members(segment_id, now)


# --- examples --------------------------------------------------------------------------------


def test_seq_rule_replay_and_reorder(stores: Stores) -> None:
    """A later job wins whatever order the batches arrive in; replaying changes nothing."""
    early = [Row(0, "7652266028043224430", 5, None, NOW - 60, NOW + 3600, False, 100)]
    late = [Row(0, "7652266028043224430", 5, 7, NOW - 30, NOW + 7200, False, 200)]
    removal = [Row(0, "7652266028043224430", 5, None, NOW, NOW + 180 * 86400, True, 300)]
    with opened(stores) as store:
        store.apply(table(late))
        store.apply(table(early))  # an older job replayed after a newer one
        assert store.user_segments(0, "7652266028043224430", NOW) == [
            Membership(5, 7, NOW - 30, NOW + 7200)
        ]
        assert store.segment_member_counts(NOW) == {5: 1}
        store.apply(table(removal))
        store.apply(table(late))  # the tombstone keeps the pair removed
        store.apply(table(early))
        assert store.user_segments(0, "7652266028043224430", NOW) == []
        assert store.segment_member_counts(NOW) == {}
        assert list(store.segment_members(5, NOW)) == []


def test_counts_follow_expiry_and_future_start(stores: Stores) -> None:
    rows = [
        Row(0, "1", 1, None, NOW - 10, NOW + 60, False, 1),  # live now, gone at NOW+60
        Row(0, "2", 1, None, NOW + 30, NOW + 600, False, 2),  # starts at NOW+30
        Row(3, "idfa:ab-cd", 1, 4, NOW - 10, NOW + 600, False, 3),
        Row(0, "2", 2, None, NOW - 10, NOW - 5, False, 4),  # already expired
    ]
    model = Model()
    model.apply(rows)
    users = [(0, "1"), (0, "2"), (3, "idfa:ab-cd"), (0, "3")]
    with opened(stores) as store:
        store.apply(table(rows))
        for now in (NOW, NOW + 30, NOW + 59, NOW + 60, NOW + 599, NOW + 600):
            check_equal(store, model, users, now)
        assert store.purge_expired(NOW + 600) == model.purge(NOW + 600) == 4
        assert store.segment_member_counts(NOW + 600) == {}


def test_delete_segment_hides_older_entries_only(stores: Stores) -> None:
    before = [Row(0, str(u), 9, None, NOW - 10, NOW + 600, False, 10 + u) for u in range(1, 40)]
    after = [Row(0, "1", 9, 2, NOW - 10, NOW + 600, False, 1000)]  # re-created under the id
    model = Model()
    with opened(stores) as store:
        store.apply(table(before))
        model.apply(before)
        store.delete_segment(9, 500)
        model.delete_segment(9, 500)
        assert store.segment_member_counts(NOW) == {}
        store.apply(table(before))  # a replay of the old job stays hidden
        store.apply(table(after))
        model.apply(before + after)
        check_equal(store, model, [(0, "1"), (0, "2")], NOW)
        assert store.segment_member_counts(NOW) == {9: 1}
        assert store.purge_expired(NOW) == model.purge(NOW) == 39  # hidden at deletion


def test_batch_lookup_keeps_order_and_many_segments(stores: Stores) -> None:
    rows = [
        Row(0, str(u), s, s if s % 2 else None, NOW - 1, NOW + 600, False, u * 100 + s)
        for u in range(1, 200)
        for s in range(1, 1 + u % 7)
    ]
    model = Model()
    model.apply(rows)
    users = [(0, str(u)) for u in range(250, 0, -1)]
    with opened(stores) as store:
        store.apply(table(rows))
        check_equal(store, model, users, NOW)


# --- properties ------------------------------------------------------------------------------

USERS = [(0, "11"), (0, "12"), (3, "idfa:x"), (4, "5:ext"), (0, "13")]
keys = st.sampled_from(USERS)
rows_strategy = st.builds(
    lambda user, seg, value, start, life, removed, seq: Row(
        user[0], user[1], seg, value, NOW + start, NOW + start + life, removed, seq
    ),
    keys,
    st.integers(1, 4),
    st.none() | st.integers(0, 2**31 - 1),
    st.integers(-100, 100),
    st.integers(1, 300),
    st.booleans(),
    # Seqs far above 2**53: the servers must not compare them as doubles.
    st.integers(0, 50).map(lambda i: (1 << 60) + i * 3),
)
ops = st.lists(
    st.one_of(
        # Seqs are unique per write (a job gives each pair its own): no ties within a batch.
        st.tuples(
            st.just("apply"),
            st.lists(rows_strategy, min_size=1, max_size=12, unique_by=lambda r: r.seq),
            st.booleans(),  # as one job's stream (apply_many) rather than batch by batch
        ),
        st.tuples(st.just("delete"), st.integers(1, 4), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.integers(0, 120)),
        st.tuples(st.just("purge")),
    ),
    min_size=1,
    max_size=10,
)


@given(script=ops, shuffle=st.randoms(use_true_random=False))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_engine_matches_model(
    stores: Stores, script: list[Any], shuffle: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedded store merges a job's runs in ranges of this many rows: tiny here, so that
    # a few rows make several ranges and keys repeated across runs meet at range edges.
    monkeypatch.setattr("bss.store.keyvalue.MERGE_ROWS", 3)
    model = Model()
    now = NOW
    users = USERS
    with opened(stores) as store:
        for op in script:
            if op[0] == "apply":
                rows = list(op[1])
                shuffle.shuffle(rows)
                half = len(rows) // 2
                # Two batches in either order, then a replay.
                batches = [table(rows[half:]), table(rows[:half]), table(rows)]
                if op[2]:
                    store.apply_many(iter(batches))
                else:
                    for one in batches:
                        store.apply(one)
                model.apply(rows)
            elif op[0] == "delete":
                seq = (1 << 60) + op[2] * 3 + 1
                store.delete_segment(op[1], seq)
                model.delete_segment(op[1], seq)
            elif op[0] == "advance":
                now += op[1]
            else:
                assert store.purge_expired(now) == model.purge(now)
            check_equal(store, model, users, now)


def test_redis_batches_group_users_sharing_a_hash() -> None:
    """The Redis writer orders users by a 64-bit hash; users sharing one still get one run
    each, and each (user, segment) is sent once, with its highest seq."""
    from bss.store.redis_store import _by_user

    rows = [
        Row(0, user, seg, None, NOW, NOW + 60, False, seq)
        for user, seg, seq in [("a", 1, 5), ("b", 1, 6), ("a", 1, 7), ("a", 2, 1), ("b", 2, 2)]
    ]
    batch, buckets, starts = _by_user(table(rows), lambda kk: np.full(len(kk), 7, np.uint64))
    got = [tuple(r.values()) for r in batch.select(["kk", "segment_id", "seq"]).to_pylist()]
    assert got == [("0:a", 1, 7), ("0:a", 2, 1), ("0:b", 1, 6), ("0:b", 2, 2)]
    assert starts.tolist() == [0, 2]
    assert buckets.tolist() == [7] * 4


# --- faults ----------------------------------------------------------------------------------


@needs_redis
def test_unreachable_store_url_is_one_clear_error(tmp_path: Path) -> None:
    port = RedisServer(tmp_path).port  # free, nothing listening
    with pytest.raises(
        StoreUnavailable, match=f"cannot reach the Redis store at redis://127.0.0.1:{port}/0"
    ):
        open_store(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StoreUnavailable, match="cannot reach the Redis store"):
        open_store(f"redis+cluster://127.0.0.1:{port}")


@needs_redis
def test_server_gone_mid_batch_raises_and_replay_is_exact(tmp_path: Path) -> None:
    """The store raises (the job is retried); the replay yields exact counts."""
    server = RedisServer(tmp_path).start()
    rows = [Row(0, str(u), 1, None, NOW - 1, NOW + 600, False, u) for u in range(1, 2001)]
    store = open_store(f"redis://{server.addr}/0")
    store.retry_seconds = 0.5  # type: ignore[attr-defined]
    try:
        store.apply(table(rows[:1000]))
        server.kill9()
        with pytest.raises(StoreUnavailable):
            store.apply(table(rows[1000:]))
        server.start()  # same port, empty: the job's replay writes everything again
        store.apply(table(rows))
        store.apply(table(rows[:1000]))
        assert store.segment_member_counts(NOW) == {1: 2000}
    finally:
        store.close()
        server.stop()


@needs_redis
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_unreachable_store_fails_start_up_in_one_line(tmp_path: Path, command: list[str]) -> None:
    import os
    import subprocess

    from conftest import BSS

    port = RedisServer(tmp_path).port
    env = {**os.environ, "BSS_STORE_URL": f"redis+cluster://127.0.0.1:{port}"}
    done = subprocess.run(
        [str(BSS), *command, "--data-dir", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"bss: cannot reach the Redis store at redis+cluster://127.0.0.1:{port}"
    )


@needs_redis
def test_redis_reads_and_converts_layout_v1(tmp_path: Path) -> None:
    """Data written by the first Redis layout (bss_store_v1: a hash per user of text entries,
    a set per segment index, decimal markers) reads the same and converts as it is touched;
    the old library is replaced."""
    import redis

    from bss.store.redis_store import bucket_of

    server = RedisServer(tmp_path).start()
    client = redis.Redis(port=server.port)
    client.function_load(
        "#!lua name=bss_store_v1\n"
        "redis.register_function('bss_apply_users', function() return 0 end)\n"
        "redis.register_function('bss_counts', function() return {} end)"
    )
    rows = [
        Row(1, "alice", 5, None, NOW - 60, NOW + 600, False, 100),
        Row(1, "alice", 6, 42, NOW - 60, NOW + 60, False, 101),
        Row(1, "bob", 5, None, NOW - 60, NOW + 3600, False, 102),
        Row(2, "carol", 6, None, NOW + 30, NOW + 900, False, 104),  # starts later
        Row(2, "dave", 5, None, NOW - 60, NOW + 900, True, 105),  # a tombstone
    ]
    for r in rows:  # as bss_store_v1 stored them, the bucket clock at NOW
        b = bucket_of(r.user_kind, r.user_key)
        kk = f"{r.user_kind}:{r.user_key}"
        entry = f"{r.seq:019d}{int(r.removed)}{r.timestamp}:{r.expires_at}:{r.value or ''}"
        client.hset(f"bss:u{{{b}}}{kk}", str(r.segment_id), entry)
        client.sadd(f"bss:s{{{b}}}:{r.segment_id}", kk)
        event = min(r.timestamp, r.expires_at) if r.timestamp > NOW else r.expires_at
        client.zadd(f"bss:x{{{b}}}", {kk: event}, lt=True)
        client.zadd(f"bss:x{{{b}}}", {kk: event}, nx=True)
        if not r.removed and r.timestamp <= NOW < r.expires_at:
            client.hincrby(f"bss:c{{{b}}}", str(r.segment_id), 1)
        client.hset(f"bss:c{{{b}}}", "_t", NOW)
    bob = bucket_of(1, "bob")
    client.hset(f"bss:d{{{bob}}}", "7", f"{200:019d}")
    model = Model()
    model.apply(rows)
    model.delete_segment(7, 200)
    users = [(1, "alice"), (1, "bob"), (2, "carol"), (2, "dave")]
    store = open_store(f"redis://{server.addr}/0")
    try:
        check_equal(store, model, users, NOW)
        check_equal(store, model, users, NOW + 61)
        assert not client.keys("bss:u*") and not client.keys("bss:s*")
        later = [
            Row(1, "alice", 5, 9, NOW, NOW + 7200, False, 300),
            Row(1, "alice", 6, None, NOW, NOW + 7200, False, 50),  # older: rejected
            Row(1, "bob", 7, None, NOW, NOW + 7200, False, 150),  # below the marker
            Row(2, "erin", 5, None, NOW, NOW + 7200, False, 301),
        ]
        store.apply(table(later))
        model.apply(later)
        check_equal(store, model, [*users, (2, "erin")], NOW + 61)
        again = [Row(1, "bob", 7, None, NOW, NOW + 7200, False, 250)]  # above the marker
        store.apply(table(again))
        model.apply(again)
        check_equal(store, model, [*users, (2, "erin")], NOW + 61)
        store.delete_segment(5, 400)
        model.delete_segment(5, 400)
        check_equal(store, model, [*users, (2, "erin")], NOW + 61)
        assert store.purge_expired(NOW + 1000) == model.purge(NOW + 1000)
        check_equal(store, model, [*users, (2, "erin")], NOW + 1000)
    finally:
        store.close()
        server.stop()


@needs_redis
def test_redis_index_walks_span_steps_and_compactions(tmp_path: Path) -> None:
    """A segment's index in one bucket longer than one step (1000 entries): members stream
    whole, a deletion walks it in steps, and a walk that a compaction (a purge) interrupts
    starts that bucket over without missing a member present throughout."""
    from bss.store.redis_store import bucket_of

    keys: list[str] = []
    i = 0
    while len(keys) < 2500:  # users of bucket 0 only
        if bucket_of(0, str(i)) == 0:
            keys.append(str(i))
        i += 1
    short = [Row(0, k, 3, None, NOW - 10, NOW + 60, False, 10) for k in keys[:500]]
    long = [Row(0, k, 3, None, NOW - 10, NOW + 3600, False, 11) for k in keys[500:]]
    model = Model()
    server = RedisServer(tmp_path).start()
    store = open_store(f"redis://{server.addr}/0")
    try:
        store.apply(table(short + long))
        model.apply(short + long)
        walk = store.segment_members(3, NOW)
        seen = [next(walk) for _ in range(600)]  # into the second step
        assert store.purge_expired(NOW + 60) == model.purge(NOW + 60) == 500  # compacts
        seen += list(walk)
        assert {k for _, k, _ in seen} >= {r.user_key for r in long}
        check_equal(store, model, [(0, k) for k in keys[:5] + keys[-5:]], NOW + 60)
        store.delete_segment(3, 100)
        model.delete_segment(3, 100)
        again = [Row(0, k, 3, 1, NOW, NOW + 3600, False, 200) for k in keys[::7]]
        store.apply(table(again))
        model.apply(again)
        check_equal(store, model, [(0, k) for k in keys[:20]], NOW + 60)
        assert len(list(store.segment_members(3, NOW + 60))) == len(again)
        assert store.purge_expired(NOW + 60) == model.purge(NOW + 60) == 2000
    finally:
        store.close()
        server.stop()
