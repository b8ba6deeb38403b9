"""Sorted runs on disk and their merge: how a whole job reaches a B-tree in key order.

A store writing a job batch by batch in file order lands on random keys: every batch dirties
pages all over the tree, so a job rewrites the tree about once per batch. Sorting the job as
a whole first makes each batch a narrow key range that follows the last one, so each page is
written about once per job (measured in docs/store.md). The job's batches are each sorted
(and de-duplicated by key) by the caller and kept here as runs: the first in memory, all of
them as Arrow IPC files once there are two, so memory stays bounded by one batch whatever
the job's size. `merged()` then walks all runs at once and yields consecutive key ranges.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

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
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._root))
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
