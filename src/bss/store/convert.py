"""Conversion of the old store layout (one DuckDB file, append-only) into the LMDB store.

The winning row of every (user, segment) that has not expired is applied with its own seq
(the old job_no * 2**40 + index seqs stay valid), and the seq counter is moved above them.
The old file is left in place (renamed with a `.converted` suffix once the copy is complete),
so a conversion that dies halfway is simply run again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from sqlalchemy import Engine

from bss.store import seqs
from bss.store.base import APPLY_SCHEMA
from bss.store.keyvalue import LmdbStore

_WINNERS = """
SELECT user_kind, user_key, segment_id,
       arg_max(value, seq) AS value, arg_max(timestamp, seq) AS timestamp,
       arg_max(expires_at, seq) AS expires_at, arg_max(removed, seq) AS removed,
       max(seq) AS seq
FROM memberships
GROUP BY user_kind, user_key, segment_id
HAVING arg_max(expires_at, seq) > ?
"""


def convert_duckdb(old: Path, target: Path, db: Engine, now: int, batch_rows: int = 500_000) -> int:
    """Copy the live entries and tombstones of `old` into the LMDB store at `target`."""
    import duckdb

    con = duckdb.connect(str(old), read_only=True, config={"memory_limit": "512MB"})
    store = LmdbStore(target)
    copied, highest = 0, 0

    def batches() -> Iterator[pa.Table]:
        nonlocal copied, highest
        for record_batch in con.sql(_WINNERS, params=[now]).to_arrow_reader(batch_rows):
            batch = pa.Table.from_batches([record_batch]).cast(APPLY_SCHEMA)
            if batch.num_rows:
                copied += batch.num_rows
                highest = max(highest, int(batch["seq"].to_numpy().max()))
                yield batch

    try:
        store.apply_many(batches())  # written in key order, as a job is
    finally:
        store.close()
        con.close()
    seqs.ensure_above(db, highest)
    old.rename(old.with_name(old.name + ".converted"))
    return copied
