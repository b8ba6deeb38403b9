"""The embedded membership store: one DuckDB file, append-only, highest seq wins.

Appending an Arrow batch is columnar and takes about a second for millions of pairs, where
keyed upserts take tens; reads resolve the winner per (user, segment) with arg_max, and
`purge_expired` compacts the table so it stays about the size of the live set.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa

from bss.store.base import APPLY_SCHEMA, JOB_SEQ_SPAN, Membership, job_seq_range

_DDL = """
CREATE TABLE IF NOT EXISTS memberships (
    user_kind UTINYINT NOT NULL,
    user_key VARCHAR NOT NULL,
    segment_id BIGINT NOT NULL,
    value BIGINT,
    timestamp BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    removed BOOLEAN NOT NULL,
    seq BIGINT NOT NULL
)
"""

#: The winning row of every (user, segment): the one written last, by seq.
_LATEST = """
SELECT user_kind, user_key, segment_id,
       arg_max(value, seq) AS value, arg_max(timestamp, seq) AS timestamp,
       arg_max(expires_at, seq) AS expires_at, arg_max(removed, seq) AS removed,
       max(seq) AS seq
FROM memberships {where}
GROUP BY user_kind, user_key, segment_id
"""


class EmbeddedStore:
    def __init__(self, path: str | Path, memory_limit: str = "256MB") -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # DuckDB's buffer pool would otherwise grow toward 80% of RAM as the table grows.
        self._db = duckdb.connect(str(path), config={"memory_limit": memory_limit})
        self._db.execute(_DDL)
        # DuckDB connections are not shared across threads; writes are serialized here.
        self._write_lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self._db.cursor()

    def apply(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        batch = batch.select(APPLY_SCHEMA.names).cast(APPLY_SCHEMA)
        with self._write_lock:
            cur = self._cursor()
            try:
                cur.register("batch_rows", batch)
                cur.execute("INSERT INTO memberships SELECT * FROM batch_rows")
            finally:
                cur.close()

    def discard_job(self, job_no: int) -> None:
        low, high = job_seq_range(job_no)
        with self._write_lock:
            self._db.execute("DELETE FROM memberships WHERE seq >= ? AND seq < ?", [low, high])

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        cur = self._cursor()
        try:
            rows = cur.execute(
                _LATEST.format(where="WHERE user_kind = ? AND user_key = ?")
                + " HAVING NOT arg_max(removed, seq) AND arg_max(expires_at, seq) > ?"
                " AND arg_max(timestamp, seq) <= ? ORDER BY segment_id",
                [user_kind, user_key, now, now],
            ).fetchall()
        finally:
            cur.close()
        return [Membership(r[2], r[3], r[4], r[5]) for r in rows]

    def segment_member_counts(self, now: int) -> dict[int, int]:
        cur = self._cursor()
        try:
            rows = cur.execute(
                f"SELECT segment_id, count(*) FROM ({_LATEST.format(where='')}) "
                "WHERE NOT removed AND expires_at > ? AND timestamp <= ? GROUP BY segment_id",
                [now, now],
            ).fetchall()
        finally:
            cur.close()
        return {int(seg): int(n) for seg, n in rows}

    def purge_expired(self, now: int) -> int:
        with self._write_lock:
            before = self._row_count()
            self._db.execute("BEGIN TRANSACTION")
            try:
                self._db.execute(
                    "CREATE TABLE memberships_compact AS SELECT user_kind, user_key, segment_id,"
                    " value, timestamp, expires_at, removed, seq FROM ("
                    + _LATEST.format(where="")
                    + ") WHERE expires_at > ? ORDER BY user_kind, user_key",
                    [now],
                )
                self._db.execute("DROP TABLE memberships")
                self._db.execute("ALTER TABLE memberships_compact RENAME TO memberships")
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
            return before - self._row_count()

    def _row_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM memberships").fetchone()
        return int(row[0]) if row else 0

    def last_job_no(self) -> int:
        """The highest job number with rows here (for local runs that have no job table)."""
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM memberships").fetchone()
        return int(row[0]) // JOB_SEQ_SPAN if row else 0

    def close(self) -> None:
        self._db.close()
