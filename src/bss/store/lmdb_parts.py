"""A job's batches made ready for the LMDB store's write transactions, outside them: member
keys, sorting and de-duplication, packed entries, per-segment index keys and summed count
events. All of it is columnar (Arrow, numpy, Polars); keyvalue.LmdbStore only writes.

A part is prepared on one thread while another writes the previous one, and py-lmdb's
putmulti gives up the GIL around each put. A preparing thread that holds the GIL for long
(making Python objects, as `to_pylist` does) stalls the writer at every put: measured, a
putmulti of 262k keys took about 3 times as long beside a thread making lists as beside one
sorting with Arrow, which lets the GIL go. So the preparation holds to Arrow, numpy and
Polars, and the Python objects the writer needs are made on the writer's thread."""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from bss.store.base import APPLY_SCHEMA

#: A stored entry, packed: 33 bytes.
ENTRY = np.dtype(
    [
        ("seq", "<i8"),
        ("timestamp", "<i8"),
        ("expires_at", "<i8"),
        ("value", "<i8"),
        ("removed", "u1"),
    ]
)
#: Stands for a null value (values are 32-bit, so this one never occurs).
NULL_VALUE = -(1 << 63)


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    """Raw bytes of a numpy array, `width` bytes per row, as an Arrow binary array."""
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(np.ascontiguousarray(values))]
    )
    return fixed.cast(pa.binary())


def member_keys(kind: np.ndarray, user_key: pa.Array, segment_id: np.ndarray) -> pa.Array:
    suffix = np.zeros(len(segment_id), dtype=[("nul", "u1"), ("seg", ">i8")])
    suffix["seg"] = segment_id
    return pc.binary_join_element_wise(
        _fixed(kind.astype(np.uint8), 1), user_key.cast(pa.binary()), _fixed(suffix, 9), b""
    )


def sorted_unique(keys: pa.Array, seq: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Row order that sorts `keys`, one row per key (the highest seq), and the keys so sorted."""
    order = pc.sort_indices(keys).to_numpy()
    keys = keys.take(order)
    if len(keys) < 2:
        return order, keys
    first = np.ones(len(keys), dtype=bool)
    first[1:] = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    if first.all():
        return order, keys
    keep = _highest_seq_of_each(first, seq.to_numpy()[order])
    return order[keep], keys.filter(pa.array(keep))


def _highest_seq_of_each(first: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Of each group of equal keys (sorted rows; `first` marks where a group starts), the
    row with the highest seq, the earliest among equal seqs. Only the rows of groups of two
    or more are sorted again: a key given twice is the rare case."""
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(first)))
    group = np.repeat(np.arange(len(starts)), sizes)
    repeated = np.flatnonzero((sizes > 1)[group])
    by_seq = repeated[np.lexsort((-seq[repeated], group[repeated]))]
    keep = first.copy()
    keep[repeated] = False
    winner = np.ones(len(by_seq), dtype=bool)
    winner[1:] = group[by_seq[1:]] != group[by_seq[:-1]]
    keep[by_seq[winner]] = True
    return keep


def unique_by_key(part: pa.Table) -> tuple[pa.Table, pa.Array]:
    """Rows of several keyed runs sorted again by `key`, one row per key (the highest seq),
    with the key column last; and the keys so sorted."""
    order, keys = sorted_unique(part["key"].combine_chunks(), part["seq"])
    # The keys come sorted already: only the other columns are taken.
    return part.drop_columns(["key"]).take(order).append_column("key", keys), keys


def keyed_batch(batch: pa.Table) -> pa.Table:
    """The batch with its member keys in a last column `key`, sorted by it, each key once
    (the highest seq). The key holds the user: the user columns are left out."""
    batch = batch.select(APPLY_SCHEMA.names).cast(APPLY_SCHEMA).combine_chunks()
    keys = member_keys(
        batch["user_kind"].to_numpy(), batch["user_key"], batch["segment_id"].to_numpy()
    )
    order, keys = sorted_unique(keys, batch["seq"])
    rest = batch.drop_columns(["user_kind", "user_key"])
    return rest.take(order).append_column("key", keys)


class _KeyedPart:
    """A part whose sorted, unique keys the writer needs as Python bytes."""

    keys: pa.Array

    @functools.cached_property
    def key_list(self) -> list[bytes]:
        """The keys as bytes, made on first use, on the writer's thread (see the module's docstring)."""
        return self.keys.to_pylist()


class EntryPart(_KeyedPart):
    """A keyed batch (sorted by its unique `key`) made ready to write: the packed entries,
    the keys as bytes and, when `indexed`, the per-segment index keys in their own sorted
    order. All of it is built outside the write transaction, most of it while the previous
    one writes."""

    def __init__(
        self, table: pa.Table, rows_merged: int | None = None, *, indexed: bool = True
    ) -> None:
        self.table = table
        self.size = table.num_rows
        #: Rows of the runs this part was merged from (a key repeated across runs is one).
        self.rows_merged = self.size if rows_merged is None else rows_merged
        self.keys = table["key"].combine_chunks()
        entries = np.empty(self.size, dtype=ENTRY)
        entries["seq"] = table["seq"].to_numpy()
        entries["timestamp"] = table["timestamp"].to_numpy()
        entries["expires_at"] = table["expires_at"].to_numpy()
        entries["value"] = table["value"].fill_null(NULL_VALUE).to_numpy()
        entries["removed"] = table["removed"].to_numpy()
        self.entries = entries
        self.segment = table["segment_id"].to_numpy()
        #: The count events of the part if every row wins (a first load, new users).
        self.events = count_events(self.segment, entries, np.ones(self.size, np.int64))
        self.index_keys: list[bytes] | None = None
        if indexed:
            self.index_order, index_keys = sorted_index_keys(table)
            self.index_keys = index_keys.to_pylist()

    @classmethod
    def merged(cls, part: pa.Table) -> EntryPart:
        """A part of several runs: sorted again, one row per key (the highest seq). Its index
        keys are written later, by key range of the index (`IndexPart`)."""
        table, _ = unique_by_key(part)
        return cls(table, part.num_rows, indexed=False)


def stable_segment_order(segment: np.ndarray) -> np.ndarray:
    """np.argsort(segment, kind="stable") for segment ids in [0, 2**32), about 8 times
    faster: numpy's stable sort of 16-bit integers is a radix sort, so two of them (low
    half, then high half, each stable) order the 32-bit ids."""
    low = (segment & 0xFFFF).astype(np.uint16)
    high = (segment >> 16).astype(np.uint16)
    by_low = np.argsort(low, kind="stable")
    return by_low[np.argsort(high[by_low], kind="stable")]


def sorted_index_keys(keyed: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """The row order that sorts a keyed batch by its per-segment index keys (segment + kind
    + user key, cut from the member key kind + user key + NUL + segment), and those keys so
    sorted. The member keys are sorted by user already, so a stable sort by segment sorts
    the index keys."""
    order = stable_segment_order(keyed["segment_id"].to_numpy())
    keys = keyed["key"].combine_chunks()
    index_keys = pc.binary_join_element_wise(
        pc.binary_slice(keys, -8), pc.binary_slice(keys, 0, -9), b""
    )
    return order, index_keys.take(order)


def index_run(keyed: pa.Table) -> pa.Table:
    """A keyed batch's index keys as a run: sorted, with each row's segment and seq."""
    order, index_keys = sorted_index_keys(keyed)
    return pa.table(
        {
            "segment_id": keyed["segment_id"].take(order),
            "seq": keyed["seq"].take(order),
            "key": index_keys,
        }
    )


class IndexPart(_KeyedPart):
    """A key range of a job's index keys, from all its runs: sorted, each key once."""

    def __init__(self, part: pa.Table) -> None:
        self.table, self.keys = unique_by_key(part)
        self.size = len(self.keys)
        #: Rows of the runs this part was merged from (a key repeated across runs is one).
        self.rows_merged = part.num_rows


def count_events(
    segment: np.ndarray, entries: np.ndarray, sign: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The count events of entries, summed: a live entry adds `sign` to its segment at the
    second it starts and takes it back at the second it expires. Returns the distinct
    (second, segment) pairs with a sum other than 0, as second << 32 | segment (both below
    2**31), sorted, and their sums."""
    start, end = entries["timestamp"], entries["expires_at"]
    live = (entries["removed"] == 0) & (end > start)
    # Entries that are not live count 0 rather than being left out: picking rows out of the
    # packed entries cost more than the whole sum.
    sign = np.where(live, sign, 0)
    seconds = np.concatenate([start, end])
    groups, sums = sum_by(
        (seconds << 32) | np.concatenate([segment, segment]), np.concatenate([sign, -sign])
    )
    counted = sums != 0
    return groups[counted], sums[counted]


#: Rows up to which `sum_by` sorts in numpy rather than hashing in polars.
_SMALL_SUM = 1 << 16


def sum_by(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct groups (sorted) and the sum of values of each: a hash aggregation, as a
    batch has few distinct groups among many rows. A small batch (a real-time post, an
    opt-out's removals) is summed in numpy: a polars frame costs milliseconds to set up,
    more than sorting a few thousand rows."""
    if len(groups) <= _SMALL_SUM:
        distinct, at = np.unique(groups, return_inverse=True)
        # float64 sums are exact below 2**53: the values are counts of rows.
        return distinct, np.bincount(at, weights=values, minlength=len(distinct)).astype(np.int64)
    sums = (
        pl.DataFrame({"group": groups, "value": values})
        .group_by("group")
        .agg(pl.col("value").sum())
        .sort("group")
    )
    return sums["group"].to_numpy(), sums["value"].to_numpy()
