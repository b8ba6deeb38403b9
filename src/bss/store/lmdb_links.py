"""Links in the embedded store: one named database of the LMDB environment.

``links``: scope (8 bytes big-endian) + kind byte + user key + NUL + kind byte + other user's
key -> (seq, asserted_at, expires_at, removed). A link is kept under both of its ends, so one
ID's links in one scope are one key range: `top_links` is a cursor seek and a short walk per
(ID, scope). Every link and tombstone is kept until it expires (no link a read could use is
ever dropped); `purge` reclaims the lapsed ones and `delete_scope` a deleted member's range.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import lmdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from bss.store.base import LINK_SCHEMA, Link, Membership
from bss.store.sorted_runs import MERGE_ROWS, SortedRuns

_LINK = struct.Struct("<qqqB")
_SCOPE = struct.Struct(">q")
_unpack = _LINK.unpack
_seq_of = operator.itemgetter(3)  # Link.seq
#: Builds a Link without the Python-level __new__ of a NamedTuple: one per link read.
_new_link = tuple.__new__
#: Scopes whose emptiness is remembered (beyond it the memory starts again).
_SCOPES_REMEMBERED = 1024
#: Keys walked per read transaction when purging.
_WALK_CHUNK = 20_000


#: A stored row's value as a numpy record: `_LINK`'s layout, packed.
_VALUE = np.dtype([("seq", "<i8"), ("asserted", "<i8"), ("expires", "<i8"), ("removed", "u1")])


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    """Each item's `width` bytes (a contiguous numpy array) as a binary array."""
    buffer = pa.py_buffer(np.ascontiguousarray(values).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, buffer]).cast(
        pa.binary()
    )


def link_rows(batch: pa.Table) -> pa.Table:
    """The stored rows of a batch (both ends of every link) as a table of `key`, `value`
    and `seq`, in key order, each key once with its highest seq (the first of the batch's
    rows on a tie)."""
    batch = batch.select(LINK_SCHEMA.names).cast(LINK_SCHEMA).combine_chunks()
    n = batch.num_rows
    if not n:
        return _ROWS.empty_table()
    col = {name: batch[name].chunk(0) for name in LINK_SCHEMA.names}
    scope = _fixed(np.asarray(col["scope"], dtype=">i8"), 8)
    value = np.empty(n, dtype=_VALUE)
    value["seq"], value["asserted"] = np.asarray(col["seq"]), np.asarray(col["asserted_at"])
    value["expires"] = np.asarray(col["expires_at"])
    value["removed"] = np.asarray(col["removed"], dtype=np.uint8)
    a_kind = _fixed(np.asarray(col["a_kind"], dtype=np.uint8), 1)
    b_kind = _fixed(np.asarray(col["b_kind"], dtype=np.uint8), 1)
    a_key, b_key = col["a_key"].cast(pa.binary()), col["b_key"].cast(pa.binary())
    nul = pa.scalar(b"\x00", pa.binary())
    empty = pa.scalar(b"", pa.binary())
    ends = pl.DataFrame(
        {
            "key": pa.chunked_array(
                [
                    pc.binary_join_element_wise(scope, a_kind, a_key, nul, b_kind, b_key, empty),
                    pc.binary_join_element_wise(scope, b_kind, b_key, nul, a_kind, a_key, empty),
                ]
            ),
            "value": pa.chunked_array([_fixed(value, _VALUE.itemsize)] * 2),
            "seq": np.tile(value["seq"], 2),
            # Row i's ends come 2i and 2i + 1: ties go to the batch's first row.
            "order": np.concatenate([np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)]),
        }
    )
    return _highest_seq_per_key(ends, ["key", "seq", "order"])


#: The columns of `link_rows`.
_ROWS = pa.schema([("key", pa.binary()), ("value", pa.binary()), ("seq", pa.int64())])


def _highest_seq_per_key(rows: pl.DataFrame, order: list[str]) -> pa.Table:
    """Each key once, with its row of highest seq (ties by the rest of `order`), by key."""
    descending = [False, True] + [False] * (len(order) - 2)
    return (
        rows.sort(order, descending=descending)
        .unique("key", keep="first", maintain_order=True)
        .select("key", "value", "seq")
        .to_arrow()
        .cast(_ROWS)
    )


def _read_links(
    cursor: lmdb.Cursor[bytes],
    heads: list[tuple[int, bytes]],
    users: Sequence[tuple[int, str]],
    now: int,
    limit: int,
) -> list[list[Link]]:
    """Each user's live links in the scopes `heads` (scope, its key prefix; by scope),
    ranked, at most `limit`. The hot path of every expansion, one loop for all the users:
    one seek per (user, scope), each row decoded once. The rows come by scope, then by the
    other end (its kind byte, then its key's UTF-8 bytes, which order as the key's
    characters do), so a stable sort by seq, highest first, ranks them by `link_order`
    without a Python call per link."""
    out: list[list[Link]] = []
    set_range, append = cursor.set_range, out.append
    for kind, key in users:
        found: list[Link] = []
        end = b"%c%b\x00" % (kind, key.encode())
        width = len(end) + 8
        for scope, head in heads:
            prefix = head + end
            if not set_range(prefix):
                continue
            for stored_key, value in cursor:
                if stored_key[:width] != prefix:
                    break
                seq, asserted, expires, removed = _unpack(value)
                if not removed and asserted <= now < expires:
                    other = stored_key[width + 1 :].decode()
                    link = (stored_key[width], other, scope, seq, asserted, expires)
                    found.append(_new_link(Link, link))
        if len(found) > 1:
            found.sort(key=_seq_of, reverse=True)
            del found[limit:]
        append(found)
    return out


#: Reads the memberships of users through a cursor of the members database.
ReadUsers = Callable[[lmdb.Cursor, Sequence[tuple[int, str]], int], list[list[Membership]]]


class SnapshotReads:
    """`top_links` and `users_segments` over one read transaction, begun on entering and
    ended on leaving (LmdbLinks.reading): an expansion's hops and its memberships see one
    snapshot and pay for one transaction and two cursors."""

    def __init__(self, links: LmdbLinks, members: lmdb._Database, read_users: ReadUsers) -> None:
        self._links, self._members_db, self._read_users = links, members, read_users
        #: scopes -> those of them that hold links, for this snapshot.
        self._heads: dict[tuple[int, ...], list[tuple[int, bytes]]] = {}

    def __enter__(self) -> SnapshotReads:
        self._txn = self._links.env.begin(buffers=False)
        self._cursor = self._txn.cursor(db=self._links.db)
        self._members = self._txn.cursor(db=self._members_db)
        return self

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        cursor = self._cursor
        heads = self._heads.get(tuple(scopes))
        if heads is None:
            heads = self._heads[tuple(scopes)] = self._links.heads(self._txn, cursor, scopes)
        return _read_links(cursor, heads, users, now, limit)

    def users_segments(self, users: Sequence[tuple[int, str]], now: int) -> list[list[Membership]]:
        return self._read_users(self._members, users, now)


class LmdbLinks:
    def __init__(self, env: lmdb.Environment) -> None:
        self.env = self._env = env
        self.db = self._db = env.open_db(b"links")
        #: scope key prefix -> (transaction id, whether the scope holds links then).
        self._scopes_seen: dict[bytes, tuple[int, bool]] = {}

    def apply(self, batch: pa.Table) -> None:
        rows = link_rows(batch)
        if rows.num_rows:
            self._write(rows["key"].to_pylist(), rows["value"].to_pylist())

    def apply_many(self, batches: Iterable[pa.Table], runs_root: Path) -> None:
        """A job's batches, held back as sorted runs (bss.store.sorted_runs) and written in
        key order once `batches` is exhausted, a key range per write transaction: each
        page of the tree is written about once per job, where writing batch by batch in
        file order rewrote pages all over the tree for every batch."""
        runs = SortedRuns(runs_root)
        try:
            for batch in batches:
                runs.add(link_rows(batch))
            for part in runs.merged(MERGE_ROWS):
                # A key in several runs: the highest seq wins (seqs of a job are distinct).
                rows = _highest_seq_per_key(pl.from_arrow(part), ["key", "seq"])  # type: ignore[arg-type]
                self._write(rows["key"].to_pylist(), rows["value"].to_pylist())
        finally:
            runs.close()

    def _write(self, keys: list[bytes], values: list[bytes]) -> None:
        """Rows sorted by key, each key once, under the seq rule, in one transaction."""
        with self._env.begin(write=True, db=self._db) as txn:
            cursor = txn.cursor()
            # Keys all beyond the stored ones meet none: MDB_APPEND, no search, full pages.
            append = not cursor.last() or cursor.key() < keys[0]
            stored = [] if append else cursor.getmulti(keys)
            rows = zip(keys, values, strict=True)
            if stored:  # the seq rule: a stored row with a seq as high stays
                new = dict(zip(keys, values, strict=True))
                kept = {key for key, old in stored if _unpack(old)[0] >= _unpack(new[key])[0]}
                rows = ((key, value) for key, value in rows if key not in kept)  # type: ignore[assignment]
            cursor.putmulti(rows, append=append)

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        with self._env.begin(db=self._db, buffers=False) as txn:
            cursor = txn.cursor()
            heads = self.heads(txn, cursor, scopes)
            return _read_links(cursor, heads, users, now, limit)

    def reading(self, members: lmdb._Database, read_users: ReadUsers) -> SnapshotReads:
        """Links and memberships (the `members` database, read by `read_users`) of one read
        transaction, as a context manager."""
        return SnapshotReads(self, members, read_users)

    def heads(
        self, txn: lmdb.Transaction, cursor: lmdb.Cursor, scopes: Sequence[int]
    ) -> list[tuple[int, bytes]]:
        """(scope, its key prefix) of the `scopes` that hold links, by scope (the order
        `_read_links` ranks ties in)."""
        return [
            (s, head) for s in sorted(scopes) if self._holds(txn, cursor, head := _SCOPE.pack(s))
        ]

    def _holds(self, txn: lmdb.Transaction, cursor: lmdb.Cursor, head: bytes) -> bool:
        """Whether any link is stored under the scope `head`, as of `txn`'s snapshot: most
        reads follow a scope (the shared one) that holds none, and a seek per ID into it
        would cost as much as the reads that find links. Remembered per snapshot: a write
        commits a new transaction id."""
        snapshot = txn.id()
        held = self._scopes_seen.get(head)
        if held is not None and held[0] == snapshot:
            return held[1]
        found = cursor.set_range(head) and cursor.key()[:8] == head
        if len(self._scopes_seen) > _SCOPES_REMEMBERED:
            self._scopes_seen.clear()
        self._scopes_seen[head] = (snapshot, found)
        return found

    def delete_scope(self, scope: int) -> None:
        prefix = _SCOPE.pack(scope)
        more = True
        while more:
            with self._env.begin(write=True, db=self._db) as txn:
                cursor = txn.cursor()
                more = cursor.set_range(prefix) and cursor.key()[:8] == prefix
                done = 0
                while more and done < _WALK_CHUNK:
                    more = cursor.delete() and cursor.key()[:8] == prefix
                    done += 1

    def purge(self, now: int) -> int:
        """Drop lapsed links and tombstones; how many stored rows went."""
        dropped = 0
        resume: bytes | None = b""
        while resume is not None:
            with self._env.begin(db=self._db) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(resume):
                    break
                items = []
                for item in cursor.iternext():
                    items.append(item)
                    if len(items) > _WALK_CHUNK:
                        break
            resume = items.pop()[0] if len(items) > _WALK_CHUNK else None
            lapsed = [k for k, v in items if _LINK.unpack(v)[2] <= now]
            if lapsed:
                with self._env.begin(write=True, db=self._db) as txn:
                    for key in lapsed:
                        value = txn.get(key)
                        if value is not None and _LINK.unpack(value)[2] <= now:
                            txn.delete(key)
                            dropped += 1
        return dropped
