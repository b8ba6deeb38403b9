"""Sorted runs (bss.store.sorted_runs): a job's batches kept sorted on disk and merged back
in key order, the way the embedded store writes a whole job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bss.store.lmdb_parts import sorted_unique, stable_segment_order
from bss.store.sorted_runs import KeysOutside, SortedRuns, WrittenKeys, remove_abandoned


def run_table(keys: list[bytes], tag: int) -> pa.Table:
    keys = sorted(set(keys))
    return pa.table({"tag": [tag] * len(keys), "key": pa.array(keys, pa.binary())})


runs_strategy = st.lists(
    st.lists(st.binary(min_size=0, max_size=4), max_size=30), min_size=1, max_size=6
)


@given(runs=runs_strategy, rows=st.integers(1, 12))
@settings(max_examples=150, deadline=None)
def test_merge_gives_every_row_once_in_rising_key_ranges(
    tmp_path_factory: pytest.TempPathFactory, runs: list[list[bytes]], rows: int
) -> None:
    root = tmp_path_factory.mktemp("runs")
    sorted_runs = SortedRuns(root)
    expected = []
    for tag, keys in enumerate(runs):
        table = run_table(keys, tag)
        sorted_runs.add(table)
        expected += [(tag, k) for k in table["key"].to_pylist()]
    parts = [p.to_pylist() for p in sorted_runs.merged(rows)]
    got = [(r["tag"], r["key"]) for part in parts for r in part]
    assert sorted(got) == sorted(expected)
    # Each part covers keys above every key of the parts before it: a key held by several
    # runs arrives in one part.
    for before, after in zip(parts, parts[1:], strict=False):
        assert max(r["key"] for r in before) < min(r["key"] for r in after)
    # A part is about `rows` long: at most `rows` plus a sampling gap per run.
    gap = max(1, rows // (4 * len(runs)))
    assert all(len(part) <= rows + gap * len(runs) for part in parts)
    sorted_runs.close()
    assert list(root.iterdir()) == []


def test_parts_are_full_whether_runs_overlap_or_not(tmp_path: Path) -> None:
    """A file sorted by user makes runs with disjoint key ranges, a random one interleaved
    runs: either way a part has about `rows` rows, not a run's share of them (which made
    a transaction, with its sync, per few rows on a sorted file)."""
    for layout in ("disjoint", "interleaved"):
        runs = SortedRuns(tmp_path / layout)
        for r in range(20):
            if layout == "disjoint":
                keys = [b"%02d%04d" % (r, i) for i in range(500)]
            else:
                keys = [b"%04d%02d" % (i, r) for i in range(500)]
            runs.add(run_table(keys, r))
        sizes = [p.num_rows for p in runs.merged(1000)]
        runs.close()
        assert sum(sizes) == 10_000
        gap = 1000 // (4 * 20)
        assert all(1000 - gap <= n <= 1000 + 20 * gap for n in sizes[:-1]), (layout, sizes)


def test_one_run_stays_in_memory_and_two_go_to_disk(tmp_path: Path) -> None:
    runs = SortedRuns(tmp_path)
    runs.add(run_table([b"b", b"a"], 0))
    assert list(tmp_path.iterdir()) == []
    runs.add(run_table([b"c"], 1))
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith(f"{os.getpid()}-")
    assert sorted(p.name for p in folder.iterdir()) == ["0.arrow", "1.arrow"]
    assert [r["key"] for p in runs.merged(10) for r in p.to_pylist()] == [b"a", b"b", b"c"]
    runs.close()
    assert list(tmp_path.iterdir()) == []


def test_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    (tmp_path / f"{dead.stdout.strip()}-abc").mkdir()
    (tmp_path / f"{dead.stdout.strip()}-abc" / "0.arrow").write_bytes(b"x")
    (tmp_path / f"{os.getpid()}-def").mkdir()
    remove_abandoned(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{os.getpid()}-def"]


@given(st.lists(st.integers(min_value=1, max_value=2**31 - 1), max_size=300))
def test_the_stable_segment_order_of_segment_ids_is_numpys(segments: list[int]) -> None:
    segment = np.array(segments, dtype=np.int64)
    assert stable_segment_order(segment).tolist() == np.argsort(segment, kind="stable").tolist()


@given(
    st.lists(st.tuples(st.binary(max_size=2), st.integers(min_value=0, max_value=5)), max_size=60)
)
def test_sorted_unique_keeps_each_key_once_with_its_highest_seq(
    rows: list[tuple[bytes, int]],
) -> None:
    """Keys from a tiny alphabet repeat often, with seqs that tie: the row kept for a key is
    its highest seq, the earliest row among equal ones."""
    keys = pa.array([k for k, _ in rows], pa.binary())
    seq = pa.array([s for _, s in rows], pa.int64())
    best: dict[bytes, int] = {}
    for i, (key, s) in enumerate(rows):
        if key not in best or s > rows[best[key]][1]:
            best[key] = i
    order, sorted_keys = sorted_unique(keys, seq)
    assert sorted_keys.to_pylist() == sorted(best)
    assert order.tolist() == [best[k] for k in sorted(best)]


@given(
    keys=st.lists(
        st.tuples(
            st.integers(1, 4), st.binary(min_size=0, max_size=3), st.booleans(), st.booleans()
        ),
        max_size=60,
        unique_by=lambda t: (t[0], t[1]),
    ),
    batch=st.integers(1, 7),
    chunk=st.integers(1, 9),
)
@settings(max_examples=150, deadline=None)
def test_keys_outside_what_a_job_wrote_are_exactly_the_others(
    tmp_path_factory: pytest.TempPathFactory,
    keys: list[tuple[int, bytes, bool, bool]],
    batch: int,
    chunk: int,
) -> None:
    """A job's written keys, kept by segment in batches of any size, sieve sorted chunks of
    any size of a segment's keys: what comes through is exactly the keys it did not write,
    also where some written keys are gone by then (a later deletion)."""
    rows = sorted((seg.to_bytes(8, "big") + key, seg, kept, gone) for seg, key, kept, gone in keys)
    written = [(key, seg) for key, seg, kept, _ in rows if kept]
    with WrittenKeys(tmp_path_factory.mktemp("written")) as keeper:
        for start in range(0, len(written), batch):
            part = written[start : start + batch]
            keeper.add(np.array([s for _, s in part]), pa.array([k for k, _ in part], pa.binary()))
        for seg in range(1, 5):
            sieve = KeysOutside(keeper.of(seg))
            of_seg = [key for key, s, _, gone in rows if s == seg and not gone]
            through = []
            for start in range(0, len(of_seg), chunk):
                through += sieve(of_seg[start : start + chunk])
            assert through == [
                key for key, s, kept, gone in rows if s == seg and not kept and not gone
            ]
    assert not list(tmp_path_factory.getbasetemp().glob("written*/*/*"))
