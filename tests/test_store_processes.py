"""The embedded store shared by real processes of one machine, and the seqs they take."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bss.db import init_db, make_engine
from bss.formats.records import UserKind
from bss.store import JOB_SEQ_SPAN, open_store, seqs

NOW = 1_800_000_000
ANID = int(UserKind.ANID)

#: Applies batches of (user, segment) pairs: user u of job j joins segment 1 + u % 5, and
#: every 3rd user also leaves segment 1 + (u + 1) % 5. Both jobs write the same users, so
#: their batches interleave on the same keys; the higher seq (job 2's) must win everywhere.
WRITER = r"""
import sys
import pyarrow as pa
from bss.store import open_store
from bss.store.base import APPLY_SCHEMA

url, job, base, users, per_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = open_store(url)
seq = base
for start in range(0, users, per_batch):
    rows = []
    for u in range(start, min(users, start + per_batch)):
        rows.append((1, str(u), 1 + u % 5, job, 1_800_000_000 - 10, 1_800_000_000 + 3600 * job, False, seq))
        seq += 1
        if u % 3 == 0:
            rows.append((1, str(u), 1 + (u + 1) % 5, None, 1_800_000_000, 1_800_000_000 + 86400, True, seq))
            seq += 1
    cols = list(zip(*rows))
    store.apply(pa.table({n: list(c) for n, c in zip(APPLY_SCHEMA.names, cols)}, schema=APPLY_SCHEMA))
store.close()
"""


def test_two_processes_apply_concurrently_and_the_final_store_is_exact(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 'memberships.lmdb'}"
    users = 30_000
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                url,
                str(job),
                str(job * JOB_SEQ_SPAN),
                str(users),
                "997",
            ],
            stderr=subprocess.PIPE,
        )
        for job in (2, 1)  # the later job starts first: order of arrival must not matter
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    store = open_store(url)
    try:
        expected: dict[int, int] = {}
        for u in range(users):
            expected[1 + u % 5] = expected.get(1 + u % 5, 0) + 1
        for u in range(0, users, 3):
            other = 1 + (u + 1) % 5
            expected[other] -= 1 if (u + 1) % 5 != u % 5 else 0
        # Users who left a segment they were never in change nothing; count it the model way.
        model: dict[tuple[str, int], bool] = {}
        for u in range(users):
            model[(str(u), 1 + u % 5)] = True
            if u % 3 == 0:
                model[(str(u), 1 + (u + 1) % 5)] = False
        counts: dict[int, int] = {}
        for (_, seg), live in model.items():
            counts[seg] = counts.get(seg, 0) + live
        assert store.segment_member_counts(NOW) == counts
        # Job 2 (value 2, an hour longer) won every pair, whichever process wrote last.
        sample = [(ANID, str(u)) for u in range(0, users, 37)]
        for (_, key), found in zip(sample, store.users_segments(sample, NOW), strict=True):
            u = int(key)
            assert [(m.segment_id, m.value, m.expires_at) for m in found] == [
                (1 + u % 5, 2, NOW + 7200)
            ]
        assert store.segment_member_counts(NOW + 7200) == {}
    finally:
        store.close()


def test_seq_reservations_never_overlap(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    first = seqs.reserve(db, JOB_SEQ_SPAN)
    assert first == 1 << 40  # seqs.FIRST_SEQ
    second = seqs.reserve(db, 5)
    assert second == first + JOB_SEQ_SPAN
    assert seqs.reserve(db, 1) == second + 5
    db.dispose()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BSS_")}


def test_validate_apply_takes_its_seqs_from_the_data_dirs_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "f.txt").write_text("1,1:0\n")
    (tmp_path / "segments.json").write_text(json.dumps([{"id": 1, "member_id": 5}]))
    base = [
        sys.executable,
        "-m",
        "bss",
        "validate",
        str(tmp_path / "f.txt"),
        "--segments",
        str(tmp_path / "segments.json"),
        "--member-id",
        "5",
        "--apply",
        "--data-dir",
        str(data),
    ]
    for _ in range(2):
        subprocess.run(base, env=_env(), check=True, capture_output=True, timeout=120)
    db = make_engine(f"sqlite:///{data / 'bss.db'}")
    # Two runs reserved two job spans from the counter a server on this data dir uses.
    assert seqs.reserve(db, 1) == (1 << 40) + 2 * JOB_SEQ_SPAN
    db.dispose()
