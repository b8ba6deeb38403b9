"""The embedded membership store: one LMDB environment under the data dir.

LMDB is a B+tree in a memory-mapped file: a lookup is a few page reads from the page cache
(no copy, no server), readers never block and are never blocked, and any number of processes
of one machine open the same environment, writers taking turns on a lock inside the file.
docs/store.md has the measurements that chose it.

Named databases of the environment:

- ``members``: kind byte + user key + NUL + segment id (8 bytes big-endian) -> the winning
  entry (seq, timestamp, expires_at, value, removed). One user's entries are one key range,
  so a lookup is one cursor seek and a short walk.
- ``by_segment``: segment id + kind byte + user key -> empty: the per-segment index that
  `segment_members` and `delete_segment` walk instead of the whole store.
- ``count_base`` (segment id -> count) and ``count_events`` (second + segment id -> delta):
  exact member counts without a scan. A live membership adds +1 at the second it starts and
  -1 at the second it expires. Events up to the present are folded into the base as writes
  apply (and by `purge_expired`), so a count is the base plus the few events due since: exact
  to the second at any `now` from the last fold on (an earlier `now` is answered as of it).
- ``deleted``: segment id -> the seq its deletion was given; writes below it are dropped.
- ``links``: the identity graph's links under both ends (bss.store.lmdb_links).
- ``meta``: the second counts are folded through, and how many entries segment deletions
  dropped since the last purge (a purge reports them).

Writes are vectorised: a batch is keyed and sorted with Arrow, its stored entries are read in
one `getmulti` pass, winners are decided in numpy, and only winners are written, in one
write transaction, so the seq rule holds across processes without a read-modify-write per
pair. A job (`apply_many`) is written in key order: its entries by key range of `members`,
then its index keys by key range of `by_segment` (docs/store.md says why and what it costs).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import operator
import struct
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, cast

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bss.errors import StoreUnavailable
from bss.read_ahead import read_ahead
from bss.store.base import Floors, Link, Membership, no_floors
from bss.store.lmdb_links import LmdbLinks, SnapshotReads
from bss.store.lmdb_parts import (
    ENTRY,
    NULL_VALUE,
    EntryPart,
    IndexPart,
    count_events,
    index_run,
    keyed_batch,
    sum_by,
)
from bss.store.sorted_runs import (
    MERGE_ROWS,
    KeysOutside,
    SortedRuns,
    WrittenKeys,
    remove_abandoned,
)

_ENTRY_STRUCT = struct.Struct("<qqqqB")
_unpack_entry = _ENTRY_STRUCT.unpack
_value_of = operator.itemgetter(1)
#: Builds a Membership without the Python-level __new__ of a NamedTuple: one per entry read.
_new_membership = tuple.__new__
_from_bytes = int.from_bytes
_I64 = struct.Struct("<q")
_SEG = struct.Struct(">q")
_FOLDED = b"folded_through"
_DROPPED = b"dropped_by_deletions"
#: Counts lagging the clock by more than this are folded forward by the reader.
_FOLD_LAG_SECONDS = 60
#: Keys read and written per transaction when walking a segment or the whole store.
_WALK_CHUNK = 20_000
#: Readers across the threads and processes sharing the environment.
MAX_READERS = 2048

_Part = TypeVar("_Part", EntryPart, IndexPart)


def _user_prefix(user_kind: int, user_key: str) -> bytes:
    return bytes((user_kind,)) + user_key.encode() + b"\x00"


def _membership(key: bytes, value: bytes) -> Membership:
    _seq, timestamp, expires_at, val, _removed = _unpack_entry(value)
    return Membership(
        _from_bytes(key[-8:], "big"), None if val == NULL_VALUE else val, timestamp, expires_at
    )


def _live(value: bytes, now: int, floor: int = 0) -> bool:
    seq, timestamp, expires_at, _val, removed = _unpack_entry(value)
    return not removed and timestamp <= now < expires_at and seq >= floor


def _write_ranges(
    parts: Iterator[_Part],
    write: Callable[[_Part], None],
    progress: Callable[[float], None] | None,
    start: float,
    share: float,
    rows: int,
) -> None:
    """Write key ranges one by one while a thread prepares the next. Progress goes from
    `start` to `start + share` as the parts' rows of the runs reach `rows`."""
    ahead = read_ahead(parts)
    done = 0
    with contextlib.closing(ahead):
        for part in ahead:
            write(part)
            done += part.rows_merged
            if progress is not None:
                progress(min(1.0, start + share * done / max(rows, 1)))


class StoreFileDamaged(StoreUnavailable):
    """The store's file is missing, cut short or unreadable: opening it would crash or lose data."""


def _check_file_whole(env: lmdb.Environment, data: Path) -> None:
    """Refuse a data.mdb shorter than the pages its header says it has.

    The pages are memory-mapped: touching one past the end of a truncated file kills the
    process with SIGBUS, before any exception or log line. The header (read with pread, not
    through the map) gives the last page in use; the file must reach its end.
    """
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = data.stat().st_size
    if size < need:
        env.close()
        raise StoreFileDamaged(
            f"the membership store file {data} is cut short ({size} bytes; its pages need "
            f"{need}): restore it from a backup, or move the directory away to start empty"
        )


class LmdbStore:
    def __init__(
        self,
        path: str | Path,
        map_size: int = 1 << 40,
        *,
        held_data: Callable[[], bool] | None = None,
    ) -> None:
        """Open (or create) the environment at `path`.

        `held_data`: asked only when there is no data.mdb (or an empty one); True (the job
        database says completed jobs wrote memberships) refuses to create an empty store in
        its place, which would silently answer every lookup with nothing.
        """
        path = Path(path)
        data = path / "data.mdb"
        fresh = not data.exists() or data.stat().st_size == 0
        if fresh and held_data is not None and held_data():
            raise StoreFileDamaged(
                f"the membership store file {data} is missing or empty, but the job database "
                "lists completed jobs that wrote to it: restore it from a backup, or set "
                "BSS_STORE_ALLOW_EMPTY=true to start with an empty store"
            )
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # map_size only reserves address space; the file grows as pages are written. The
        # files hold members' data: owner-only.
        try:
            self._env = lmdb.open(
                str(path),
                mode=0o600,
                map_size=map_size,
                max_dbs=16,
                max_readers=MAX_READERS,
                readahead=False,
                lock=True,
            )
        except lmdb.Error as exc:
            raise StoreFileDamaged(
                f"the membership store file {data} cannot be opened ({exc}): restore it from "
                "a backup, or move the directory away to start empty"
            ) from None
        _check_file_whole(self._env, data)
        self._members = self._env.open_db(b"members")
        self._by_segment = self._env.open_db(b"by_segment")
        self._count_base = self._env.open_db(b"count_base")
        self._count_events = self._env.open_db(b"count_events")
        self._deleted = self._env.open_db(b"deleted")
        self._meta = self._env.open_db(b"meta")
        self._links = LmdbLinks(self._env)
        self._runs_root = path / "runs"
        remove_abandoned(self._runs_root)
        self.floors: Floors = no_floors

    # -- writes ------------------------------------------------------------------------------

    def apply(self, batch: pa.Table) -> None:
        if batch.num_rows:
            self._apply_sorted(EntryPart(keyed_batch(batch)))

    def apply_many(
        self,
        batches: Iterable[pa.Table],
        progress: Callable[[float], None] | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        """A job's batches: each is sorted by member key and kept as a run as it comes (the
        first in memory, the rest on disk). Then the entries are written in member key order,
        a narrow key range per transaction, each range also kept as a run of its index keys;
        then the index keys in index key order, so that each page of either tree is written
        about once per job. A thread prepares the next range (merge, sort, index run) while
        this one writes the last: the index runs are made there, off the busy cores of the
        parse, where the single writer leaves a core part idle.

        The index keys follow the entries: a job stopped in between leaves entries its
        segments' indexes do not list yet, which the job's replay (any job is run again
        until it completes) adds, as it adds all of a job's index keys that are missing.
        A segment deleted in between takes the entries already written with it when their
        index keys come (`_apply_index`). `written` (a replace job's) keeps the index keys
        as they are written, for `drop_below`."""
        runs, index_runs = SortedRuns(self._runs_root), SortedRuns(self._runs_root)

        def entry_parts() -> Iterator[EntryPart]:
            # Each key range, once sorted, gives its index run too: sorting by segment
            # (stable) puts member-key-ordered rows in index key order.
            for table in runs.merged(MERGE_ROWS):
                part = EntryPart.merged(table)
                index_runs.add(index_run(part.table))
                yield part

        try:
            for batch in batches:
                if batch.num_rows:
                    runs.add(keyed_batch(batch))
            _write_ranges(entry_parts(), self._apply_sorted, progress, 0.0, 0.5, runs.rows)
            runs.close()
            _write_ranges(
                map(IndexPart, index_runs.merged(MERGE_ROWS)),
                functools.partial(self._apply_index, written=written),
                progress,
                0.5,
                0.5,
                index_runs.rows,
            )
        finally:
            runs.close()
            index_runs.close()

    def written_keys(self) -> WrittenKeys:
        """A keeper of a job's written index keys (`apply_many`, `drop_below`); close it."""
        return WrittenKeys(self._runs_root)

    def _apply_sorted(self, part: EntryPart) -> None:
        if part.size == 0:
            return
        with self._env.begin(write=True) as txn:
            # Events of the past go straight into the base counts from here on.
            self._fold(txn, int(time.time()))
            hidden = self._deleted_rows(txn, part.table)
            if hidden is not None:
                part = EntryPart(
                    part.table.filter(pa.array(~hidden)), indexed=part.index_keys is not None
                )
            if part.size:
                self._merge(txn, part)

    def _deleted_rows(self, txn: lmdb.Transaction, batch: pa.Table) -> np.ndarray | None:
        """Where rows fall below their segment's deletion (None when no row does)."""
        deleted = {_SEG.unpack(k)[0]: _I64.unpack(v)[0] for k, v in txn.cursor(db=self._deleted)}
        if not deleted:
            return None
        segs = np.fromiter(deleted, dtype=np.int64, count=len(deleted))
        floors = np.fromiter(deleted.values(), dtype=np.int64, count=len(deleted))
        order = np.argsort(segs)
        segs, floors = segs[order], floors[order]
        segment = batch["segment_id"].to_numpy()
        at = np.clip(np.searchsorted(segs, segment), 0, len(segs) - 1)
        hidden = (segs[at] == segment) & (batch["seq"].to_numpy() < floors[at])
        return hidden if hidden.any() else None

    def _merge(self, txn: lmdb.Transaction, part: EntryPart) -> None:
        """Write the rows where they beat the stored entry: one getmulti pass, winners
        decided in numpy, one putmulti."""
        new, segment, key_list = part.entries, part.segment, part.key_list
        members = txn.cursor(db=self._members)
        # Keys all beyond the stored ones (a first load, a new range of users) can meet no
        # stored entry, and go in with MDB_APPEND: no search, and full pages where a
        # split in the middle leaves two half-full ones.
        append = not members.last() or bytes(members.key()) < key_list[0]
        found = [] if append else members.getmulti(key_list)
        if found:
            exists = pc.is_in(
                part.keys, value_set=pa.array([k for k, _ in found], pa.binary())
            ).to_numpy(zero_copy_only=False)
            old = np.frombuffer(b"".join([v for _, v in found]), dtype=ENTRY)
            beaten = new["seq"][exists] > old["seq"]
            wins = ~exists
            wins[exists] = beaten
            replaced, replaced_segment = old[beaten], segment[exists][beaten]
        else:
            exists = np.zeros(part.size, dtype=bool)
            wins = np.ones(part.size, dtype=bool)
            replaced, replaced_segment = np.zeros(0, dtype=ENTRY), segment[:0]
        if not wins.any():
            return
        everything_wins = bool(wins.all())
        winners = new if everything_wins else new[wins]
        if everything_wins and not len(replaced):
            self._add_events(txn, *part.events)
        else:
            self._count(
                txn,
                np.concatenate([segment if everything_wins else segment[wins], replaced_segment]),
                np.concatenate([winners, replaced]),
                np.concatenate(
                    [np.ones(len(winners), np.int64), -np.ones(len(replaced), np.int64)]
                ),
            )
        # One bytes object per entry straight from numpy (a void item is its raw bytes).
        values = winners.view(f"V{ENTRY.itemsize}").tolist()
        win_keys = key_list if everything_wins else itertools.compress(key_list, wins)
        members.putmulti(zip(win_keys, values, strict=True), append=append)
        if part.index_keys is None or exists.all():
            return
        index_keys: Iterable[bytes] = part.index_keys
        if exists.any():  # only new (user, segment) pairs enter the index
            index_keys = itertools.compress(index_keys, ~exists[part.index_order])
        txn.cursor(db=self._by_segment).putmulti(
            zip(index_keys, itertools.repeat(b""), strict=False)
        )

    def _apply_index(self, part: IndexPart, written: WrittenKeys | None = None) -> None:
        """Add the index keys of a key range of a job's entries (those present already are
        left as they are); `written` keeps them."""
        with self._env.begin(write=True) as txn:
            hidden = self._deleted_rows(txn, part.table)
            if hidden is not None:
                self._drop_deleted(txn, part.table.filter(pa.array(hidden)))
                part = IndexPart(part.table.filter(pa.array(~hidden)))
            if not part.size:
                return
            index = txn.cursor(db=self._by_segment)
            append = not index.last() or bytes(index.key()) < part.key_list[0]
            index.putmulti(
                zip(part.key_list, itertools.repeat(b"")), overwrite=False, append=append
            )
        if written is not None:
            written.add(part.table["segment_id"].to_numpy(), part.keys)

    def _drop_deleted(self, txn: lmdb.Transaction, rows: pa.Table) -> None:
        """Drop the entries of index rows whose segment was deleted after the entries were
        written and before their index keys were: what the deletion would have dropped."""
        floors = {_SEG.unpack(k)[0]: _I64.unpack(v)[0] for k, v in txn.cursor(db=self._deleted)}
        members = txn.cursor(db=self._members)
        segments = rows["segment_id"].to_numpy()
        keys = rows["key"].to_pylist()
        for segment in np.unique(segments).tolist():
            at = np.flatnonzero(segments == segment).tolist()
            self._drop_below(txn, members, segment, [keys[i] for i in at], floors[segment])

    def _count(
        self, txn: lmdb.Transaction, segment: np.ndarray, entries: np.ndarray, sign: np.ndarray
    ) -> None:
        """Add (sign=+1) or take back (-1) the count events of entries of these segments."""
        self._add_events(txn, *count_events(segment, entries, sign))

    def _add_events(self, txn: lmdb.Transaction, events: np.ndarray, sums: np.ndarray) -> None:
        """Add count events (`count_events`): those folded already into the base counts."""
        if not len(events):
            return
        seconds = events >> 32
        into_base = seconds <= self._folded_through(txn)
        if into_base.any():
            uniq, totals = sum_by(events[into_base] & 0xFFFFFFFF, sums[into_base])
            self._add_many(txn, self._count_base, uniq.astype(">i8"), totals)
        pending = ~into_base
        if pending.any():
            event_keys = np.empty(int(pending.sum()), dtype=[("second", ">i8"), ("seg", ">i8")])
            event_keys["second"] = seconds[pending]
            event_keys["seg"] = events[pending] & 0xFFFFFFFF
            self._add_many(txn, self._count_events, event_keys, sums[pending])

    def _add_many(
        self, txn: lmdb.Transaction, db: lmdb._Database, keys: np.ndarray, deltas: np.ndarray
    ) -> None:
        """Add deltas to the int64 counters at `keys` (fixed-width big-endian rows, sorted and
        unique); a counter reaching 0 is removed."""
        width = keys.dtype.itemsize
        key_list = keys.view(f"V{width}").tolist()
        cursor = txn.cursor(db=db)
        found = cursor.getmulti(key_list)
        totals = deltas.astype(np.int64)
        existed = np.zeros(len(keys), dtype=bool)
        if found:
            # Fixed-width bytes compare like the keys themselves: find the stored ones.
            at = np.searchsorted(
                keys.view(f"S{width}"), np.frombuffer(b"".join([k for k, _ in found]), f"S{width}")
            )
            totals[at] += np.frombuffer(b"".join([v for _, v in found]), "<i8")
            existed[at] = True
        changed = deltas != 0
        for i in np.flatnonzero(changed & existed & (totals == 0)).tolist():
            txn.delete(key_list[i], db=db)
        put = changed & (totals != 0)
        cursor.putmulti(
            zip(
                itertools.compress(key_list, put),
                totals[put].astype("<i8").view("V8").tolist(),
                strict=True,
            )
        )

    def _add(self, txn: lmdb.Transaction, db: lmdb._Database, key: bytes, delta: int) -> None:
        if delta == 0:
            return
        raw = txn.get(key, db=db)
        total = (_I64.unpack(raw)[0] if raw else 0) + delta
        if total:
            txn.put(key, _I64.pack(total), db=db)
        else:
            txn.delete(key, db=db)

    def _folded_through(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_FOLDED, db=self._meta)
        return _I64.unpack(raw)[0] if raw else -1

    def delete_segment(self, segment_id: int, seq: int) -> None:
        with self._env.begin(write=True) as txn:
            self._delete_below(txn, segment_id, seq)

    def drop_below(
        self,
        segment_ids: Sequence[int],
        seq: int,
        now: int,
        decide: Callable[[dict[int, int]], bool],
        written: WrittenKeys | None = None,
    ) -> bool:
        """`delete_segment(s, seq)` of each segment and `count_below(s, seq, now)` of what
        it drops, in one walk and one write transaction: `decide(counts)` runs before the
        commit and says whether to keep the deletions (True) or change nothing (False).
        Readers see the segments whole before the commit and purged after it, never half
        purged; no write lands between the count and the deletions.

        `written`: the index keys of the job whose seq base is `seq` (`apply_many`). Its
        entries hold a seq at or above `seq` whatever came after (a later write has a higher
        seq), so the walk reads the entries of the others only."""
        txn = self._env.begin(write=True)
        try:
            floors = self.floors()
            counts = {
                seg: self._delete_below(
                    txn,
                    seg,
                    seq,
                    now,
                    floors.get(seg, 0),
                    None if written is None else KeysOutside(written.of(seg)),
                )
                for seg in segment_ids
            }
            keep = decide(counts)
        except BaseException:
            txn.abort()
            raise
        if keep:
            txn.commit()
        else:
            txn.abort()
        return keep

    def _delete_below(
        self,
        txn: lmdb.Transaction,
        segment_id: int,
        seq: int,
        now: int = 0,
        floor: int = 0,
        outside: KeysOutside | None = None,
    ) -> int:
        """Mark the segment deleted at `seq` and drop its entries below; return how many of
        them were live at `now` and not below `floor` (count_below's figure). Only index
        keys that `outside` lets through are looked at (all without it)."""
        prefix = _SEG.pack(segment_id)
        raw = txn.get(prefix, db=self._deleted)
        if raw is None or _I64.unpack(raw)[0] < seq:
            txn.put(prefix, _I64.pack(seq), db=self._deleted)
        end = _SEG.pack(segment_id + 1)
        index = txn.cursor(db=self._by_segment)
        members = txn.cursor(db=self._members)
        live = 0
        resume = prefix
        while index.set_range(resume):
            # A chunk of keys read in C; those past the segment cut off by bisection.
            # bytes, not buffers: the transaction was begun without buffers=True.
            batch = cast(
                list[bytes], list(itertools.islice(index.iternext(values=False), _WALK_CHUNK))
            )
            cut = bisect.bisect_left(batch, end)
            keys = batch[:cut] if outside is None or not cut else outside(batch[:cut])
            if keys:
                live += self._drop_below(txn, members, segment_id, keys, seq, now, floor)
            if cut < _WALK_CHUNK:
                break
            # The smallest key after the chunk's last: the cursor moved as keys were deleted.
            resume = batch[-1] + b"\x00"
        return live

    def _drop_below(
        self,
        txn: lmdb.Transaction,
        members: lmdb.Cursor,
        segment_id: int,
        index_keys: list[bytes],
        seq: int,
        now: int = 0,
        floor: int = 0,
    ) -> int:
        """Remove the entries (and their index keys and counts) older than a deletion;
        return how many of them were live at `now` and not below `floor`."""
        # An index key is the segment then the user; the entry's key the user, a zero
        # byte, the segment: one segment's suffix serves every key.
        suffix = b"\x00" + _SEG.pack(segment_id)
        main_keys = [k[8:] + suffix for k in index_keys]
        found = members.getmulti(main_keys)
        if not found:
            return 0
        seqs = np.frombuffer(b"".join(map(_value_of, found)), dtype=ENTRY)["seq"]
        below = np.flatnonzero(seqs < seq).tolist()
        if not below:
            return 0
        entries = np.frombuffer(b"".join([found[i][1] for i in below]), dtype=ENTRY)
        if len(found) < len(main_keys):  # an entry missing: the keys of those found
            main_keys = [bytes(key) for key, _ in found]
            index_keys = [key[-8:] + key[:-9] for key in main_keys]
        self._add(txn, self._meta, _DROPPED, len(below))
        self._count(
            txn, np.full(len(below), segment_id, np.int64), entries, -np.ones(len(below), np.int64)
        )
        delete = txn.delete
        for i in below:
            delete(main_keys[i], db=self._members)
            delete(index_keys[i], db=self._by_segment)
        return int(
            np.count_nonzero(
                (entries["seq"] >= floor)
                & (entries["removed"] == 0)
                & (entries["timestamp"] <= now)
                & (entries["expires_at"] > now)
            )
        )

    def remove_memberships(
        self,
        users: Sequence[tuple[int, str]],
        seq: int,
        *,
        now: int,
        expires_at: int,
        owned: Container[int] | None,
        before_commit: Callable[[list[tuple[int, str, int]]], None],
    ) -> list[tuple[int, str, int]]:
        """A removal at `seq` (kept until `expires_at`) of every live membership of `users`
        (in the `owned` segments; None: all) as `users_segments` reads them, written in the
        transaction that reads them: one pass over the users' entries where a lookup then
        `apply` of the removals would read them twice. Returns (user kind, user key,
        segment) of each; `before_commit` hears them before the transaction commits (an
        exception there leaves the store as it was)."""
        floors = self.floors()
        rows: list[tuple[int, str, int]] = []
        keys: list[bytes] = []
        olds: list[bytes] = []
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._members)
            for kind, key in users:
                prefix = _user_prefix(kind, key)
                if not cursor.set_range(prefix):
                    continue
                width = len(prefix)
                for stored, value in cursor:
                    if stored[:width] != prefix:
                        break
                    entry_seq, timestamp, expires, _val, removed = _unpack_entry(value)
                    segment = _from_bytes(stored[-8:], "big")
                    if removed or not timestamp <= now < expires or entry_seq >= seq:
                        continue
                    if entry_seq < floors.get(segment, 0) or (
                        owned is not None and segment not in owned
                    ):
                        continue
                    rows.append((kind, key, segment))
                    keys.append(bytes(stored))
                    olds.append(bytes(value))
            if keys:
                self._write_removals(txn, keys, olds, [r[2] for r in rows], seq, now, expires_at)
            before_commit(rows)
        return rows

    def _write_removals(
        self,
        txn: lmdb.Transaction,
        keys: list[bytes],
        olds: list[bytes],
        segments: list[int],
        seq: int,
        now: int,
        expires_at: int,
    ) -> None:
        """Replace live entries by removals: their counts go, a removal counts nothing."""
        old = np.frombuffer(b"".join(olds), dtype=ENTRY)
        self._count(txn, np.array(segments, np.int64), old, -np.ones(len(keys), np.int64))
        removal = np.zeros(len(keys), dtype=ENTRY)
        removal["seq"], removal["timestamp"], removal["expires_at"] = seq, now, expires_at
        removal["value"], removal["removed"] = NULL_VALUE, 1
        values = removal.view(f"V{ENTRY.itemsize}").tolist()
        txn.cursor(db=self._members).putmulti(zip(keys, values, strict=True))

    def purge_expired(self, now: int) -> int:
        """Memberships dropped are counted; lapsed links and tombstones go too, uncounted."""
        self._links.purge(now)
        with self._env.begin(write=True) as txn:
            self._fold(txn, now)
            raw = txn.get(_DROPPED, db=self._meta)
            dropped = _I64.unpack(raw)[0] if raw else 0
            txn.delete(_DROPPED, db=self._meta)
        resume: bytes | None = b""
        while resume is not None:
            started = time.perf_counter()
            # The scan only reads (no writer waits on it) and runs in C: one chunk of entries,
            # their expiries checked in numpy.
            with self._env.begin(db=self._members) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(resume):
                    break
                items = list(itertools.islice(cursor.iternext(), _WALK_CHUNK + 1))
            resume = items.pop()[0] if len(items) > _WALK_CHUNK else None
            entries = np.frombuffer(b"".join(map(_value_of, items)), dtype=ENTRY)
            expired = np.flatnonzero(entries["expires_at"] <= now).tolist()
            if expired:
                dropped += self._drop_expired([items[i][0] for i in expired], now)
            # A background sweep: the process's other threads (lookups) get the GIL at least
            # as long as the sweep takes, however big the store.
            time.sleep(time.perf_counter() - started)
        return dropped

    def _drop_expired(self, keys: list[bytes], now: int) -> int:
        with self._env.begin(write=True) as txn:
            gone = 0
            for key, value in txn.cursor(db=self._members).getmulti(keys):
                if _unpack_entry(value)[2] <= now:  # checked again: a job may have written since
                    txn.delete(key, db=self._members)
                    txn.delete(key[-8:] + key[:-9], db=self._by_segment)
                    gone += 1
        return gone

    def _fold(self, txn: lmdb.Transaction[bytes], through: int) -> None:
        """Move the count events due by `through` into the base counts."""
        if through <= self._folded_through(txn):
            return
        cursor = txn.cursor(db=self._count_events)
        sums: dict[bytes, int] = {}
        folded: list[bytes] = []
        more = cursor.first()
        while more:
            key = cursor.key()
            if _SEG.unpack_from(key)[0] > through:
                break
            sums[key[8:]] = sums.get(key[8:], 0) + _I64.unpack(cursor.value())[0]
            folded.append(key)
            more = cursor.next()
        for key in folded:
            txn.delete(key, db=self._count_events)
        for seg, delta in sums.items():
            self._add(txn, self._count_base, seg, delta)
        txn.put(_FOLDED, _I64.pack(through), db=self._meta)

    # -- reads -------------------------------------------------------------------------------

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        floors = self.floors()
        with self._env.begin(db=self._members, buffers=False) as txn:
            return self._read_user(txn.cursor(), user_kind, user_key, now, floors)

    def users_segments(self, users: Sequence[tuple[int, str]], now: int) -> list[list[Membership]]:
        floors = self.floors()
        with self._env.begin(db=self._members) as txn:
            return self._read_users(txn.cursor(), users, now, floors)

    @classmethod
    def _read_users(
        cls,
        cursor: lmdb.Cursor,
        users: Sequence[tuple[int, str]],
        now: int,
        floors: Mapping[int, int],
    ) -> list[list[Membership]]:
        read = cls._read_user
        return [read(cursor, kind, key, now, floors) for kind, key in users]

    @staticmethod
    def _read_user(
        cursor: lmdb.Cursor, kind: int, key: str, now: int, floors: Mapping[int, int]
    ) -> list[Membership]:
        # The hot path of every lookup: one seek, then the user's entries, each decoded once
        # with bound functions (no attribute lookups, no intermediate objects, no Python-level
        # NamedTuple __new__). Most IDs an expansion reaches hold no entries: the key under the
        # cursor tells so without starting an iteration.
        found: list[Membership] = []
        prefix = b"%c%b\x00" % (kind, key.encode())  # _user_prefix, without its call
        width = len(prefix)
        if not cursor.set_range(prefix) or cursor.key()[:width] != prefix:
            return found
        for stored_key, value in cursor:
            if stored_key[:width] != prefix:
                break
            seq, timestamp, expires_at, val, removed = _unpack_entry(value)
            if not removed and timestamp <= now < expires_at:
                segment = _from_bytes(stored_key[-8:], "big")
                if floors and seq < floors.get(segment, 0):
                    continue
                found.append(
                    _new_membership(
                        Membership,
                        (segment, None if val == NULL_VALUE else val, timestamp, expires_at),
                    )
                )
        return found

    def segment_member_counts(self, now: int) -> dict[int, int]:
        with self._env.begin() as txn:
            lagging = now - self._folded_through(txn) > _FOLD_LAG_SECONDS
        if lagging and now <= time.time():
            # No write for a while: fold once, so readers do not each walk the same events.
            with self._env.begin(write=True) as txn:
                self._fold(txn, now)
        with self._env.begin() as txn:
            counts = {
                _SEG.unpack(k)[0]: _I64.unpack(v)[0] for k, v in txn.cursor(db=self._count_base)
            }
            # Events folded already are in the base; a `now` before the fold is answered as of it.
            for key, value in txn.cursor(db=self._count_events):
                if _SEG.unpack_from(key)[0] > now:
                    break
                seg = _SEG.unpack_from(key, 8)[0]
                counts[seg] = counts.get(seg, 0) + _I64.unpack(value)[0]
        return {seg: n for seg, n in sorted(counts.items()) if n > 0}

    def segment_members(self, segment_id: int, now: int) -> Iterator[tuple[int, str, Membership]]:
        floor = self.floors().get(segment_id, 0)
        for key, value in self._segment_entries(segment_id):
            if _live(value, now, floor):
                yield key[0], key[1:-9].decode(), _membership(key, value)

    def count_below(self, segment_id: int, seq: int, now: int) -> int:
        below = 0
        floor = self.floors().get(segment_id, 0)
        for chunk in self._segment_chunks(segment_id):
            # A chunk's entries checked at once in numpy, not one by one.
            entries = np.frombuffer(b"".join(map(_value_of, chunk)), dtype=ENTRY)
            below += int(
                np.count_nonzero(
                    (entries["seq"] < seq)
                    & (entries["seq"] >= floor)
                    & (entries["removed"] == 0)
                    & (entries["timestamp"] <= now)
                    & (entries["expires_at"] > now)
                )
            )
        return below

    def _segment_entries(self, segment_id: int) -> Iterator[tuple[bytes, bytes]]:
        """(members key, entry) of every entry the segment's index lists."""
        for chunk in self._segment_chunks(segment_id):
            yield from chunk

    def _segment_chunks(self, segment_id: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """The segment's (members key, entry) pairs, a chunk per read transaction."""
        prefix = _SEG.pack(segment_id)
        resume: bytes | None = prefix
        while resume is not None:
            # One short read transaction per chunk: a slow client must not pin old pages.
            with self._env.begin() as txn:
                index = txn.cursor(db=self._by_segment)
                keys: list[bytes] = []
                more = index.set_range(resume)
                while more and len(keys) < _WALK_CHUNK:
                    key = index.key()
                    if not key.startswith(prefix):
                        more = False
                        break
                    keys.append(key)
                    more = index.next()
                resume = index.key() if more and index.key().startswith(prefix) else None
                main_keys = [k[8:] + b"\x00" + k[:8] for k in keys]
                found = txn.cursor(db=self._members).getmulti(main_keys)
            yield found

    # -- links (bss.store.lmdb_links) -----------------------------------------------------------

    def apply_links(self, batch: pa.Table) -> None:
        self._links.apply(batch)

    def apply_links_many(self, batches: Iterable[pa.Table]) -> None:
        self._links.apply_many(batches, self._runs_root)

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        return self._links.top_links(users, scopes, now, limit)

    def snapshot_reads(self) -> contextlib.AbstractContextManager[SnapshotReads]:
        """`top_links` and `users_segments` in one read transaction (bss.identity.graph: an
        expansion's hops and memberships)."""
        floors = self.floors()  # before the snapshot, as users_segments reads them

        def read_users(
            cursor: lmdb.Cursor, users: Sequence[tuple[int, str]], now: int
        ) -> list[list[Membership]]:
            return self._read_users(cursor, users, now, floors)

        return self._links.reading(self._members, read_users)

    def delete_scope_links(self, scope: int) -> None:
        self._links.delete_scope(scope)

    def close(self) -> None:
        self._env.close()
