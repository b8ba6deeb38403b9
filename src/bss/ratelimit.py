"""Rate counters shared by every process of a deployment: request limits, login throttles.

A process counting alone lets N processes allow N times the limit, so the counts live in
the relational database every process already shares (SQLite on one machine, PostgreSQL
across machines): one upsert per counted event, no read-then-write window.

Windows are fixed and start at a key's first hit (not at the wall clock's minute), so a
burst is never let through twice by a window boundary falling inside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import BigInteger, Column, Engine, Integer, String, Table, delete

from bss.db import metadata, run_sql, write_tx

rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", String(300), primary_key=True),
    #: UNIX milliseconds at which the key's current window ends (and its count restarts).
    Column("window_end", BigInteger, nullable=False),
    Column("hits", Integer, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    #: Hits in the key's current window, this one included.
    hits: int
    limit: int
    #: Whole seconds until the window ends (at least 1).
    retry_after: int

    @property
    def allowed(self) -> bool:
        return self.hits <= self.limit


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Verdict:
        """Count `cost` hits on `key` (a negative cost refunds) and say whether the window's
        count stays within `limit`."""

    def purge(self) -> int:
        """Forget keys whose window has ended; return how many."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _retry_after(window_end_ms: int, now_ms: int) -> int:
    return max(1, -(-(window_end_ms - now_ms) // 1000))


#: One statement for SQLite 3.35+ and PostgreSQL: count, or restart a lapsed window.
_HIT = (
    "INSERT INTO rate_counters (key, window_end, hits) VALUES (:key, :end, :first) "
    "ON CONFLICT (key) DO UPDATE SET "
    "hits = CASE WHEN rate_counters.window_end <= :now THEN :first "
    "ELSE rate_counters.hits + :cost END, "
    "window_end = CASE WHEN rate_counters.window_end <= :now THEN :end "
    "ELSE rate_counters.window_end END "
    "RETURNING hits, window_end"
)


class DatabaseRateLimiter:
    """`RateLimiter` on the relational database (SQLite 3.35+ or PostgreSQL)."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Verdict:
        now = _now_ms()
        params = {
            "key": key,
            "end": now + window_seconds * 1000,
            "cost": cost,
            "first": max(cost, 0),  # a refund into a fresh window counts nothing
            "now": now,
        }
        # Once per request: on the driver directly, and a count lost in a crash is fine.
        (row,) = run_sql(self.db, _HIT, params, write=True, durable=False)
        return Verdict(row["hits"], limit, _retry_after(row["window_end"], now))

    def purge(self) -> int:
        with write_tx(self.db) as conn:
            return conn.execute(
                delete(rate_counters).where(rate_counters.c.window_end <= _now_ms())
            ).rowcount
