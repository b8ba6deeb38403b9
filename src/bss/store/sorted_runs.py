"""Sorted runs on disk and their merge: how a whole job reaches a B-tree in key order.

A store writing a job batch by batch in file order lands on random keys: every batch dirties
pages all over the tree, so a job rewrites the tree about once per batch. Sorting the job as
a whole first makes each batch a narrow key range that follows the last one, so each page is
written about once per job (measured in docs/store.md). The job's batches are each sorted
(and de-duplicated by key) by the caller and kept here as runs: the first in memory, all of
them as Arrow IPC files once there are two, so memory stays bounded by one batch whatever
the job's size. `merged()` then walks all runs at once and yields consecutive key ranges.

`WrittenKeys` keeps the index keys a replace job wrote the same way (on disk, in key order),
and `KeysOutside` sieves a segment's index keys against them: the replace's walk then reads
the entries of only the keys the job did not write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Rows per write transaction when a job's sorted runs are merged and written (memberships,
#: links): a key range narrow enough that its transaction dirties few pages, wide enough
#: that commits stay few.
MERGE_ROWS = 1 << 18


class SortedRuns:
    """Tables sorted by a unique binary `key` column, merged back in key order.

    The files live in a private folder under `root`, named after the process, so that a
    folder left by a process that died (kill -9) can be told from one still in use.
    """

    def __init__(self, root: Path, key: str = "key") -> None:
        self._root = root
        self._key = key
        self._folder: Path | None = None
        self._first: pa.Table | None = None
        self._files: list[Path] = []
        #: Rows kept in all runs.
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        """Keep one run: `table` sorted by `key`, each key once."""
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        if self._first is None and not self._files:
            self._first = table
            return
        if self._first is not None:
            self._spill(self._first)
            self._first = None
        self._spill(table)

    def _spill(self, table: pa.Table) -> None:
        if self._folder is None:
            self._folder = _private_folder(self._root)
        path = self._folder / f"{len(self._files)}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        self._files.append(path)

    def merged(self, rows: int) -> Iterator[pa.Table]:
        """Every run's rows as consecutive tables of about `rows` rows (see `_bound`), each
        covering a key range above the previous one's. A key present in several runs comes in one table
        (once per run), so the caller decides between them there; the rows of a table are
        in no particular order."""
        if self._first is not None:
            for start in range(0, self._first.num_rows, rows):
                yield self._first.slice(start, rows)
            return
        # Memory-mapped: the runs' pages are the page cache's, not this process's heap.
        runs = [pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in self._files]
        # Each file holds one record batch: its one chunk, not a copy (combine_chunks copies).
        keys = [run.column(self._key).chunk(0) for run in runs]
        at = [0] * len(runs)
        while True:
            live = [i for i, run in enumerate(runs) if at[i] < run.num_rows]
            if not live:
                return
            windows = {i: keys[i].slice(at[i], rows) for i in live}
            bound = _bound(windows.values(), rows)
            parts = []
            for i, window in windows.items():
                taken = _count_at_most(window, bound)
                if taken:
                    parts.append(runs[i].slice(at[i], taken))
                    at[i] += taken
            yield pa.concat_tables(parts)

    def close(self) -> None:
        self._first = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._files = []


def _private_folder(root: Path) -> Path:
    """A new folder under `root` named after this process (see `remove_abandoned`)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=str(root)))


_KEYS = pa.schema([("key", pa.binary())])


class WrittenKeys:
    """The index keys a job wrote, kept by segment on disk as the job writes them (in key
    order: a segment's keys together, segments one after another) and read back in that
    order: what a replace's walk of a segment skips without reading the entries
    (bss.store.keyvalue.LmdbStore.drop_below). A file per segment in a private folder like
    the runs'; memory: one batch."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._folder: Path | None = None
        self._files: dict[int, list[Path]] = {}
        self._segment: int | None = None
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add(self, segments: np.ndarray, keys: pa.Array) -> None:
        """Keep written index keys: sorted, with each key's segment."""
        starts = [0, *(np.flatnonzero(np.diff(segments)) + 1).tolist()]
        for start, end in zip(starts, [*starts[1:], len(keys)], strict=True):
            batch = pa.record_batch([keys.slice(start, end - start)], schema=_KEYS)
            self._writer_of(int(segments[start])).write_batch(batch)

    def _writer_of(self, segment: int) -> pa.ipc.RecordBatchStreamWriter:
        if segment != self._segment or self._writer is None:
            self._end_file()
            if self._folder is None:
                self._folder = _private_folder(self._root)
            files = self._files.setdefault(segment, [])
            path = self._folder / f"{segment}.{len(files)}.arrow"
            files.append(path)
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, _KEYS)
            self._segment = segment
        return self._writer

    def _end_file(self) -> None:
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.close()
        self._writer = self._sink = None

    def of(self, segment: int) -> Iterator[pa.Array]:
        """The kept keys of `segment`, in the order they came, a batch at a time."""
        self._end_file()
        for path in self._files.get(segment, ()):
            with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
                for batch in reader:
                    yield batch.column(0)

    def __enter__(self) -> WrittenKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._end_file()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._files = {}


class KeysOutside:
    """Sieves sorted chunks of keys, taken in key order, against one segment's kept keys
    (`WrittenKeys.of`), also in key order: a merge of the two, one chunk at a time."""

    def __init__(self, kept: Iterator[pa.Array]) -> None:
        self._kept = kept
        self._window: pa.Array | None = None

    def __call__(self, keys: list[bytes]) -> list[bytes]:
        """The keys of a sorted chunk (above every earlier chunk's) that were not kept."""
        last, taken = keys[-1], []
        while True:
            if self._window is None or not len(self._window):
                self._window = next(self._kept, None)
                if self._window is None:
                    break
            count = _count_at_most(self._window, last)
            taken.append(self._window.slice(0, count))
            self._window = self._window.slice(count)
            if len(self._window):
                break
        written = pa.concat_arrays(taken) if taken else pa.array([], pa.binary())
        if not len(written):
            return keys
        chunk = pa.array(keys, pa.binary())
        return pc.filter(chunk, pc.invert(pc.is_in(chunk, value_set=written))).to_pylist()


def _bound(windows: Iterable[pa.Array], rows: int) -> bytes:
    """A key that about `rows` keys of the windows (each the next `rows` keys of a run) lie
    at or below, and none beyond a window: the next part is every run's keys up to it.

    Every `gap`-th key of each window is a sample standing for `gap` keys; the bound is the
    sample that many samples in. However the runs' key ranges overlap (one sorted file makes
    disjoint runs, a random one interleaved runs), a part has about `rows` rows: at most
    `rows` plus one `gap` per run.
    """
    windows = list(windows)
    gap = max(1, rows // (4 * len(windows)))
    samples = pa.concat_arrays(
        [w.take(pa.array(range(min(gap, len(w)) - 1, len(w), gap))) for w in windows]
    )
    wanted = max(1, rows // gap)
    if len(samples) <= wanted:  # the windows hold about `rows` keys at most: all of them
        bound = max(w[-1].as_py() for w in windows)
    else:
        bound = samples[pc.sort_indices(samples)[wanted - 1].as_py()].as_py()
    # A full window's last key caps it: a run's keys up to the bound all lie in its window.
    return min([bound, *(w[-1].as_py() for w in windows if len(w) == rows)])


def _count_at_most(window: pa.Array, bound: bytes) -> int:
    """How many keys of the sorted window are at most `bound`: a binary search."""
    low, high = 0, len(window)
    while low < high:
        middle = (low + high) // 2
        if window[middle].as_py() <= bound:
            low = middle + 1
        else:
            high = middle
    return low


def remove_abandoned(root: Path) -> None:
    """Remove run folders of processes that no longer exist (a job killed mid-way)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        pid_text = folder.name.partition("-")[0]
        if not (pid_text.isascii() and pid_text.isdigit()) or _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
