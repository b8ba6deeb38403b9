"""Opt-out and suppression costs on a big embedded store, against baselines of the same run.

Builds one LMDB store of `--pairs` memberships (user u of 1 to 6 of the member's 2,000
segments), then measures in one process:

  (a) an opt-out of 1,000 of its users (bss.lifecycle.optout.opt_out: the lookup of their
      memberships, the removals, their links, the suppression rows and the audit row) next
      to the lookup of the same 1,000 users alone (POST /user-segments' store call), five
      rounds of fresh users; the issue's target is 100 ms an opt-out;
  (b) the ingest of a `--lines` legacy file (bench_ingest's) into a fresh store with an
      empty suppression list against the same with `--suppressed` IDs opted out in the
      member's scope (none of them in the file: the cost of looking, not of skipping),
      alternating, five rounds each (wall and CPU seconds: on a loaded machine the CPU
      seconds are the steadier figure); the target is at most 5% more.

    python benchmarks/bench_lifecycle.py --pairs 20000000 --lines 1000000

With --store-dir the built store is kept and reused by runs with the same --pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bench_ingest import MEMBER_ID, OUT, SEGMENTS, write_file
from sqlalchemy import insert

from bss.db import init_db, make_engine
from bss.formats.config import BatchSegmentConfig
from bss.formats.records import UserKind
from bss.ingest.engine import ingest_file
from bss.ingest.registry import SegmentRegistry
from bss.lifecycle.models import optout_requests, optout_suppressions
from bss.lifecycle.optout import MemberSuppression, SuppressionList, opt_out
from bss.segments.models import segments
from bss.settings import Settings
from bss.store import APPLY_SCHEMA, JOB_SEQ_SPAN, MembershipStore
from bss.store.keyvalue import LmdbStore

ANID = int(UserKind.ANID)
BATCH_USERS = 1_000_000


def _segments_of(users: np.ndarray, j: int) -> np.ndarray:
    """User u's j-th segment (distinct for j < 6)."""
    return (users * 7 + j * 13) % SEGMENTS + 1


def build_store(path: Path, pairs: int) -> int:
    """Fill the store; return its number of users (uids 1..n)."""
    n_users = int(pairs / 3.5)
    store = LmdbStore(path)
    now = int(time.time())

    def batches():
        for start in range(1, n_users + 1, BATCH_USERS):
            users = np.arange(start, min(start + BATCH_USERS, n_users + 1), dtype=np.int64)
            counts = users % 6 + 1
            parts = [(users[counts > j], _segments_of(users[counts > j], j)) for j in range(6)]
            u = np.concatenate([p[0] for p in parts])
            s = np.concatenate([p[1] for p in parts])
            n = len(u)
            yield pa.table(
                {
                    "user_kind": pa.array(np.full(n, ANID, np.uint8)),
                    "user_key": pc.cast(pa.array(u), pa.string()),
                    "segment_id": pa.array(s),
                    "value": pa.nulls(n, pa.int64()),
                    "timestamp": pa.array(np.full(n, now - 60, np.int64)),
                    "expires_at": pa.array(np.full(n, now + 30 * 86_400, np.int64)),
                    "removed": pa.array(np.zeros(n, bool)),
                    "seq": pa.array(np.arange(n, dtype=np.int64) + JOB_SEQ_SPAN + start * 6),
                },
                schema=APPLY_SCHEMA,
            )

    store.apply_many(batches())
    store.close()
    return n_users


def _database(path: Path) -> tuple[object, Settings]:
    db = make_engine(f"sqlite:///{path}")
    init_db(db)
    now = int(time.time())
    with db.begin() as conn:
        conn.execute(
            insert(segments),
            [
                {
                    "id": i,
                    "member_id": MEMBER_ID,
                    "code": f"seg{i}",
                    "code_key": f"seg{i}",
                    "state": "active",
                    "created_on": now,
                    "last_modified": now,
                }
                for i in range(1, SEGMENTS + 1)
            ],
        )
    return db, Settings(optout_secret="bench-secret")


class _Stores:
    def __init__(self, store: MembershipStore) -> None:
        self.store = store
        self.remote_regions: list[str] = []

    def get(self, region: str | None = None) -> MembershipStore:
        return self.store


def bench_optout(store_path: Path, n_users: int, tmp: Path) -> None:
    db, settings = _database(tmp / "optout.db")
    store = LmdbStore(store_path)
    stores = _Stores(store)
    # Users of this run only: a kept store (--store-dir) has lost the memberships of the
    # users an earlier run opted out.
    rng = np.random.default_rng()
    picked = rng.choice(n_users, 5 * 1000, replace=False) + 1
    now = int(time.time())
    try:
        for round_no in range(5):
            users = [(ANID, str(u)) for u in picked[round_no * 1000 : (round_no + 1) * 1000]]
            started = time.perf_counter()
            found = store.users_segments(users, now)
            lookup_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            done = opt_out(
                db, settings, stores, member_id=MEMBER_ID, users=users, requested_by="bench"
            )
            optout_ms = (time.perf_counter() - started) * 1000
            assert done.memberships_removed == sum(len(f) for f in found)
            print(
                f"opt-out of 1,000 users: {optout_ms:6.1f} ms ({done.memberships_removed:,} "
                f"memberships removed)  lookup of the same users {lookup_ms:6.1f} ms  "
                f"ratio {optout_ms / lookup_ms:.1f}"
            )
    finally:
        store.close()


def _suppressed_db(path: Path, settings: Settings, count: int) -> object:
    db, _ = _database(path)
    hasher = SuppressionList(db, settings)  # type: ignore[arg-type]
    with db.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            insert(optout_requests).values(
                id=1,
                member_id=MEMBER_ID,
                kind="optout",
                requested_on=0,
                seq=1,
                ids=count,
                memberships_removed=0,
                links_removed=0,
            )
        )
        # uids above 2**63: never in the file (its uids are below).
        users = [(ANID, str(2**63 + i)) for i in range(count)]
        rows = [
            {
                "scope": MEMBER_ID,
                "id_hash": hasher.hash(*user),
                "optout_seq": 1,
                "withdrawn_seq": None,
                "request_id": 1,
                "id_tag": tag,
            }
            for user, tag in zip(users, hasher.tags(users), strict=True)
        ]
        for start in range(0, count, 50_000):
            conn.execute(insert(optout_suppressions), rows[start : start + 50_000])
    return db


def _ingest(path: Path, tmp: Path, suppression: SuppressionList) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one ingest."""
    registry = SegmentRegistry.from_records(
        {"id": i, "code": f"seg{i}", "member_id": MEMBER_ID} for i in range(1, SEGMENTS + 1)
    )
    with tempfile.TemporaryDirectory(dir=tmp) as where:
        store = LmdbStore(Path(where) / "m.lmdb")
        started, cpu = time.perf_counter(), time.process_time()
        result = ingest_file(
            path,
            member_id=MEMBER_ID,
            seq_base=2 * JOB_SEQ_SPAN,
            config=BatchSegmentConfig(),
            registry=registry,
            store=store,
            now=int(time.time()),
            max_decompressed_bytes=10 * 536_870_912,
            suppress=MemberSuppression(suppression, MEMBER_ID),
        )
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        store.close()
    assert result.error_code is None and result.num_opted_out == 0
    return elapsed, cpu


def bench_suppression(lines: int, suppressed: int, tmp: Path, rounds: int) -> None:
    path = OUT / f"legacy-{lines}.txt"
    if not path.exists():
        write_file(path, lines)
    settings = Settings(optout_secret="bench-secret")
    empty_db, _ = _database(tmp / "empty.db")
    empty = SuppressionList(empty_db, settings)  # type: ignore[arg-type]
    full = SuppressionList(_suppressed_db(tmp / "full.db", settings, suppressed), settings)  # type: ignore[arg-type]
    # Read once before the rounds, as a worker holds it between opt-outs.
    full.active_for(MEMBER_ID)
    plain: list[tuple[float, float]] = []
    checked: list[tuple[float, float]] = []
    for _ in range(rounds):
        plain.append(_ingest(path, tmp, empty))
        checked.append(_ingest(path, tmp, full))
        print(
            f"ingest of {lines:,} lines: empty list {plain[-1][0]:6.2f} s (CPU "
            f"{plain[-1][1]:6.2f} s)  with {suppressed:,} suppressed IDs {checked[-1][0]:6.2f} s "
            f"(CPU {checked[-1][1]:6.2f} s)  ratio {checked[-1][0] / plain[-1][0]:.3f} "
            f"(CPU {checked[-1][1] / plain[-1][1]:.3f})",
            flush=True,
        )
    for what, at in (("wall", 0), ("CPU", 1)):
        ratio = statistics.median(c[at] for c in checked) / statistics.median(p[at] for p in plain)
        paired = statistics.median(c[at] / p[at] for c, p in zip(checked, plain, strict=True))
        print(
            f"suppression cost ({what}): ratio of the medians {ratio:.3f}, median of the "
            f"{rounds} rounds' ratios {paired:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--suppressed", type=int, default=100_000)
    parser.add_argument("--store-dir", type=Path)
    parser.add_argument("--skip-optout", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds of each side")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_optout:
            store_path = (args.store_dir or tmp) / f"optout-{args.pairs}.lmdb"
            n_users = int(args.pairs / 3.5)
            if not (store_path / "data.mdb").exists():
                started = time.perf_counter()
                n_users = build_store(store_path, args.pairs)
                print(
                    f"built a store of {args.pairs:,} pairs ({n_users:,} users) in "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            bench_optout(store_path, n_users, tmp)
        bench_suppression(args.lines, args.suppressed, tmp, args.rounds)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
