"""The embedded DuckDB membership store: latest write wins, expiry, purge, replay."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from bss.formats.records import UserKind
from bss.store.base import APPLY_SCHEMA, JOB_SEQ_SPAN
from bss.store.embedded import EmbeddedStore

NOW = 1_700_000_000
DAY = 86_400


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
):
    return (UserKind.ANID, key, seg, value, ts, exp, removed, seq)


@pytest.fixture
def store(tmp_path: Path):
    s = EmbeddedStore(tmp_path / "m.duckdb")
    yield s
    s.close()


def test_latest_seq_wins_whatever_the_write_order(store: EmbeddedStore) -> None:
    store.apply(batch([row("1", 10, seq=5, value=7), row("1", 11, seq=6)]))
    store.apply(batch([row("1", 10, seq=3, value=99)]))  # an older write arriving late
    got = store.user_segments(UserKind.ANID, "1", NOW)
    assert [(m.segment_id, m.value) for m in got] == [(10, 7), (11, None)]
    store.apply(batch([row("1", 10, seq=9, removed=True)]))
    assert [m.segment_id for m in store.user_segments(UserKind.ANID, "1", NOW)] == [11]
    assert store.user_segments(UserKind.DEVICE, "1", NOW) == []


def test_expired_and_future_memberships_are_not_live(store: EmbeddedStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=1, exp=NOW - 1),
                row("1", 11, seq=2, ts=NOW + 60),
                row("1", 12, seq=3),
                row("2", 12, seq=4),
            ]
        )
    )
    assert [m.segment_id for m in store.user_segments(UserKind.ANID, "1", NOW)] == [12]
    assert [m.segment_id for m in store.user_segments(UserKind.ANID, "1", NOW + 60)] == [11, 12]
    assert store.segment_member_counts(NOW) == {12: 2}


def test_purge_keeps_live_rows_and_tombstones(store: EmbeddedStore) -> None:
    store.apply(
        batch(
            [
                row("1", 10, seq=1, exp=NOW - 1),
                row("1", 11, seq=2),
                row("1", 11, seq=3, value=5),
                row("1", 12, seq=4, removed=True),
            ]
        )
    )
    assert store.purge_expired(NOW) == 2  # the expired row and the superseded one
    assert [(m.segment_id, m.value) for m in store.user_segments(UserKind.ANID, "1", NOW)] == [
        (11, 5)
    ]
    # The tombstone survives, so a replayed older add of (1, 12) stays removed.
    store.apply(batch([row("1", 12, seq=2)]))
    assert [m.segment_id for m in store.user_segments(UserKind.ANID, "1", NOW)] == [11]


def test_discard_job_forgets_only_that_jobs_rows(store: EmbeddedStore) -> None:
    store.apply(
        batch([row("1", 10, seq=1 * JOB_SEQ_SPAN + 1), row("1", 11, seq=2 * JOB_SEQ_SPAN + 1)])
    )
    assert store.last_job_no() == 2
    store.discard_job(2)
    assert [m.segment_id for m in store.user_segments(UserKind.ANID, "1", NOW)] == [10]
    assert store.last_job_no() == 1


def test_store_survives_reopen(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "m.duckdb")
    s.apply(batch([row("18446744073709551615", 10, seq=1)]))
    s.close()
    s = EmbeddedStore(tmp_path / "m.duckdb")
    assert [m.segment_id for m in s.user_segments(UserKind.ANID, "18446744073709551615", NOW)] == [
        10
    ]
    s.close()
