"""Membership store candidates on one workload, each in a fresh process.

The workload follows the bench_ingest file (63-bit UIDs, 1 to 6 segments a line, 2,000
segments, mixed expirations with removals), applied in job-sized batches under the seq rule:

  1. job 1: every pair of N lines (about 3.5 N pairs);
  2. job 2, overlapping: a fifth of job 1's users again with new expirations, a twentieth
     removed from one segment, and a fifth as many new users;
  3. random single-user lookups (100k by default) and batch lookups of 1000 users (1k).

Prints pairs/s, lookups/s, lookup p50/p99, bytes on disk per live pair, peak RSS and the
anonymous (non-file) RSS at the end, and each figure's ratio to LMDB's in the same run.
Rates are given per wall second and per CPU second of the process: on a shared, loaded
machine the wall figures mostly measure the wait for a core.

    python benchmarks/bench_store.py --lines 10000000            # the issue's 35M pairs
    python benchmarks/bench_store.py --lines 200000 --engines lmdb,sqlite

Candidates: lmdb (the embedded store, bss.store.keyvalue), rocksdb (rocksdict, the `bench`
extra), sqlite (a WITHOUT ROWID table, upsert guarded by seq) and duckdb (the previous
append-only store; its lookups scan, so it gets 200 lookups and 5 batches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from bss.store.base import APPLY_SCHEMA, JOB_SEQ_SPAN

SEGMENTS = 2000
BATCH_LINES = 100_000  # about one 4 MiB engine chunk
NOW = int(time.time())
MAX_LIFE = 180 * 86400
ENGINES = ("lmdb", "rocksdb", "sqlite", "duckdb")


def _batch(rng: np.random.Generator, uids: np.ndarray, seq0: int, remove_share: float) -> pa.Table:
    counts = rng.integers(1, 7, len(uids))
    users = np.repeat(uids, counts)
    n = len(users)
    minutes = np.array([0, 1440, 10080, 43200])[rng.integers(0, 4, n)]
    removed = rng.random(n) < remove_share
    expires = np.where(
        removed | (minutes == 0), NOW + MAX_LIFE, NOW + np.minimum(minutes * 60, MAX_LIFE)
    )
    return pa.table(
        {
            "user_kind": np.ones(n, np.uint8),
            "user_key": pa.array(users.astype(str).tolist(), pa.string()),
            "segment_id": rng.integers(1, SEGMENTS + 1, n),
            "value": pa.nulls(n, pa.int64()),
            "timestamp": np.full(n, NOW, np.int64),
            "expires_at": expires.astype(np.int64),
            "removed": removed,
            "seq": np.arange(seq0, seq0 + n, dtype=np.int64),
        },
        schema=APPLY_SCHEMA,
    )


def jobs(lines: int) -> Iterator[tuple[str, pa.Table]]:
    """(job name, batch) in order: job 1, then the overlapping job 2."""
    rng = np.random.default_rng(7)
    uids = rng.integers(1, 2**63, lines, dtype=np.int64)
    seq = JOB_SEQ_SPAN
    for start in range(0, lines, BATCH_LINES):
        batch = _batch(rng, uids[start : start + BATCH_LINES], seq, 0.05)
        seq += batch.num_rows
        yield "job1", batch
    again = rng.choice(uids, lines // 5, replace=False)
    fresh = rng.integers(1, 2**63, lines // 25, dtype=np.int64)
    second = np.concatenate([again, fresh])
    rng.shuffle(second)
    seq = 2 * JOB_SEQ_SPAN
    for start in range(0, len(second), BATCH_LINES):
        batch = _batch(rng, second[start : start + BATCH_LINES], seq, 0.25)
        seq += batch.num_rows
        yield "job2", batch
    global LOOKUP_UIDS
    LOOKUP_UIDS = uids


LOOKUP_UIDS: np.ndarray = np.zeros(0, np.int64)


def lookup_uids(lines: int) -> np.ndarray:
    """Job 1's users, as `jobs(lines)` draws them first, without building the batches."""
    return np.random.default_rng(7).integers(1, 2**63, lines, dtype=np.int64)


# --- candidates ------------------------------------------------------------------------------


class Lmdb:
    def __init__(self, path: Path) -> None:
        from bss.store.keyvalue import LmdbStore

        self.store = LmdbStore(path / "lmdb")
        self.apply = self.store.apply
        self.user_segments = self.store.user_segments
        self.users_segments = self.store.users_segments


class Rocks:
    """The same keys and entries as the LMDB store; merge read with one multi-get."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict, ReadOptions

        self.db = Rdict(str(path / "rocks"), Options(raw_mode=True))
        self.read_options = ReadOptions()

    def apply(self, batch: pa.Table) -> None:
        from rocksdict import WriteBatch

        from bss.store.keyvalue import ENTRY, NULL_VALUE, member_keys

        keys = member_keys(
            batch["user_kind"].to_numpy(),
            batch["user_key"].combine_chunks(),
            batch["segment_id"].to_numpy(),
        ).to_pylist()
        new = np.empty(len(keys), ENTRY)
        for name in ("seq", "timestamp", "expires_at"):
            new[name] = batch[name].to_numpy()
        new["value"] = batch["value"].fill_null(NULL_VALUE).to_numpy()
        new["removed"] = batch["removed"].to_numpy(zero_copy_only=False)
        old = self.db.get(keys)
        wins = np.ones(len(keys), bool)
        have = [i for i, v in enumerate(old) if v is not None]
        if have:
            seqs = np.frombuffer(b"".join(old[i] for i in have), ENTRY)["seq"]
            wins[have] = new["seq"][have] > seqs
        raw = new.tobytes()
        size = ENTRY.itemsize
        wb = WriteBatch(raw_mode=True)
        for i in np.flatnonzero(wins).tolist():
            wb.put(keys[i], raw[i * size : (i + 1) * size])
        self.db.write(wb)

    def user_segments(self, kind: int, key: str, now: int) -> list:
        from bss.store.keyvalue import _live, _membership

        prefix = bytes((kind,)) + key.encode() + b"\x00"
        it = self.db.iter(self.read_options)
        it.seek(prefix)
        found = []
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            v = it.value()
            if _live(v, now):
                found.append(_membership(k, v))
            it.next()
        return found

    def users_segments(self, users: list[tuple[int, str]], now: int) -> list:
        return [self.user_segments(k, u, now) for k, u in users]


class Sqlite:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "m.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE m (user_kind INT, user_key TEXT, segment_id INT, value INT,"
            " timestamp INT, expires_at INT, removed INT, seq INT,"
            " PRIMARY KEY (user_kind, user_key, segment_id)) WITHOUT ROWID"
        )

    def apply(self, batch: pa.Table) -> None:
        batch = batch.sort_by([("user_key", "ascending"), ("segment_id", "ascending")])
        rows = zip(*(batch[c].to_pylist() for c in APPLY_SCHEMA.names), strict=True)
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO m VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
            " value=excluded.value, timestamp=excluded.timestamp,"
            " expires_at=excluded.expires_at, removed=excluded.removed, seq=excluded.seq"
            " WHERE excluded.seq > m.seq",
            rows,
        )
        self.db.execute("COMMIT")

    def user_segments(self, kind: int, key: str, now: int) -> list:
        return self.db.execute(
            "SELECT segment_id, value, timestamp, expires_at FROM m WHERE user_kind=? AND"
            " user_key=? AND NOT removed AND timestamp <= ? AND expires_at > ?",
            (kind, key, now, now),
        ).fetchall()

    def users_segments(self, users: list[tuple[int, str]], now: int) -> list:
        return [self.user_segments(k, u, now) for k, u in users]


class Duck:
    """The previous store: append-only, winners resolved at read time."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.db = duckdb.connect(str(path / "m.duckdb"), config={"memory_limit": "256MB"})
        self.db.execute(
            "CREATE TABLE memberships (user_kind UTINYINT, user_key VARCHAR, segment_id BIGINT,"
            " value BIGINT, timestamp BIGINT, expires_at BIGINT, removed BOOLEAN, seq BIGINT)"
        )

    def apply(self, batch: pa.Table) -> None:
        self.db.register("b", batch)
        self.db.execute("INSERT INTO memberships SELECT * FROM b")
        self.db.unregister("b")

    def user_segments(self, kind: int, key: str, now: int) -> list:
        return self.db.execute(
            "SELECT segment_id FROM memberships WHERE user_kind=? AND user_key=? GROUP BY"
            " segment_id HAVING NOT arg_max(removed, seq) AND arg_max(expires_at, seq) > ?",
            (kind, key, now),
        ).fetchall()

    def users_segments(self, users: list[tuple[int, str]], now: int) -> list:
        return [self.user_segments(k, u, now) for k, u in users]


CANDIDATES = {"lmdb": Lmdb, "rocksdb": Rocks, "sqlite": Sqlite, "duckdb": Duck}


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(engine: str, lines: int, lookups: int, batches: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BSS_BENCH_DIR")) as tmp:
        store = CANDIDATES[engine](Path(tmp))
        pairs = {"job1": 0, "job2": 0}
        took = {"job1": 0.0, "job2": 0.0}
        cpu = {"job1": 0.0, "job2": 0.0}
        for name, batch in jobs(lines):
            started, started_cpu = time.perf_counter(), time.process_time()
            store.apply(batch)
            took[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - started_cpu
            pairs[name] += batch.num_rows
        if engine == "duckdb":
            lookups, batches = min(lookups, 200), min(batches, 5)
        rng = np.random.default_rng(11)
        picks = LOOKUP_UIDS[rng.integers(0, len(LOOKUP_UIDS), lookups)].astype(str).tolist()
        times = np.empty(lookups)
        live = 0
        lookups_cpu = time.process_time()
        for i, key in enumerate(picks):
            started = time.perf_counter()
            live += len(store.user_segments(1, key, NOW))
            times[i] = time.perf_counter() - started
        lookups_cpu = time.process_time() - lookups_cpu
        batch_times = np.empty(batches)
        batches_cpu = time.process_time()
        for i in range(batches):
            users = [
                (1, u)
                for u in LOOKUP_UIDS[rng.integers(0, len(LOOKUP_UIDS), 1000)].astype(str).tolist()
            ]
            started = time.perf_counter()
            store.users_segments(users, NOW)
            batch_times[i] = time.perf_counter() - started
        batches_cpu = time.process_time() - batches_cpu
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        live_pairs = pairs["job1"] * 0.95  # estimate; the lmdb store reports exact counts
        if engine == "lmdb":
            live_pairs = sum(store.store.segment_member_counts(NOW).values())
    return {
        "job1_pairs_s": pairs["job1"] / took["job1"],
        "job2_pairs_s": pairs["job2"] / took["job2"],
        "job1_pairs_cpu_s": pairs["job1"] / cpu["job1"],
        "job2_pairs_cpu_s": pairs["job2"] / cpu["job2"],
        "pairs": pairs["job1"] + pairs["job2"],
        "lookups_s": lookups / times.sum(),
        "lookups_cpu_s": lookups / lookups_cpu,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "batch1000_p50_ms": float(np.percentile(batch_times, 50) * 1e3),
        "batch1000_p99_ms": float(np.percentile(batch_times, 99) * 1e3),
        "batch1000_cpu_ms": batches_cpu / batches * 1e3,
        "bytes_per_live_pair": disk / max(live_pairs, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_anon_end_mb": _rss_anon_mb(),
        "segments_per_lookup": live / max(lookups, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.lines, args.lookups, args.batches)))
        return
    results: dict[str, dict[str, float]] = {}
    for engine in args.engines.split(","):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                engine,
                "--lines",
                str(args.lines),
                "--lookups",
                str(args.lookups),
                "--batches",
                str(args.batches),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            print(f"{engine}: failed\n{out.stderr[-2000:]}")
            continue
        results[engine] = json.loads(out.stdout)
        print(engine, json.dumps(results[engine]), flush=True)
    base = results.get("lmdb")
    cols = [
        "job1_pairs_s",
        "job1_pairs_cpu_s",
        "job2_pairs_s",
        "job2_pairs_cpu_s",
        "lookups_s",
        "lookups_cpu_s",
        "p50_ms",
        "p99_ms",
        "batch1000_p50_ms",
        "batch1000_cpu_ms",
        "bytes_per_live_pair",
        "peak_rss_mb",
        "rss_anon_end_mb",
    ]
    print(f"\n{args.lines:,} lines; ratios are to lmdb in this run")
    print("| engine | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for engine, r in results.items():
        cells = []
        for c in cols:
            ratio = f" ({r[c] / base[c]:.2f}x)" if base and engine != "lmdb" and base[c] else ""
            cells.append(f"{r[c]:,.3g}{ratio}" if r[c] < 1000 else f"{r[c]:,.0f}{ratio}")
        print(f"| {engine} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
