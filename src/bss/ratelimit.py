"""Rate counters shared by every process of a deployment: request limits, login throttles.

A process counting alone lets N processes allow N times the limit, so the counts live in
the relational database every process already shares (SQLite on one machine, PostgreSQL
across machines): one upsert per counted event (or per reservation of several, for API
requests: ReservedBudget), no read-then-write window.

Windows are fixed and start at a key's first hit (not at the wall clock's minute), so a
burst is never let through twice by a window boundary falling inside it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import BigInteger, Column, Engine, Integer, String, Table, delete

from bss import clock
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
    return clock.now_ms()


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
        hits, window_end, now = self.count(key, window_seconds, cost)
        return Verdict(hits, limit, _retry_after(window_end, now))

    def count(self, key: str, window_seconds: int, cost: int = 1) -> tuple[int, int, int]:
        """Count `cost` hits: (hits in the window, its end in UNIX ms, now in UNIX ms)."""
        now = _now_ms()
        params = {
            "key": key,
            "end": now + window_seconds * 1000,
            "cost": cost,
            "first": max(cost, 0),  # a refund into a fresh window counts nothing
            "now": now,
        }
        # On the request path (ReservedBudget): on the driver directly, and a count lost in a
        # crash is fine.
        (row,) = run_sql(self.db, _HIT, params, write=True, durable=False)
        return row["hits"], row["window_end"], now

    def purge(self) -> int:
        with write_tx(self.db) as conn:
            return conn.execute(
                delete(rate_counters).where(rate_counters.c.window_end <= _now_ms())
            ).rowcount


@dataclass(slots=True)
class _Grant:
    #: hits this process may still let through (reserved, not yet used); -1: the key is over
    #: its limit until the window ends
    left: int
    #: UNIX ms at which the window the hits were counted in ends (as stored in the database)
    window_end: int
    #: the size of this key's next reservation
    size: int


class ReservedBudget:
    """Request counting shared by every process that writes to the shared counter once per
    reservation of hits instead of once per request, the limit still holding across
    processes.

    A process reserves `n` hits of a key's window in the database (the same one-statement
    upsert as a single hit, counting `n`) and lets that many requests through without
    writing again, until the window the hits were counted in ends. Every request let through
    was thus counted in the database first, in its window: all processes together never let
    more than `limit` through in a window. A key's first reservation is 1 hit; each next one
    doubles while the key stays busy, up to MAX_RESERVATION, and is never more than 1/16 of
    the window's budget still free (1 hit near the limit, as before): a quiet key, or one
    near its limit, costs one write per request. A busy key's next reservation is made
    when half of the last one is used (take() says when), so that requests need not wait
    for it. The price: hits one process reserved and has not used yet are not available to
    another process until the window ends (a member spread over several processes can be
    refused by one while another still holds some of its hits: what is left of its last
    reservations, about 1/16 of what was free then, never more than 1.5 x MAX_RESERVATION
    per process and key), and hits reserved by a process that stops stay counted until the
    window ends. MAX_RESERVATION only matters for limits above 16 x 1024 a window: below, the
    1/16 rule is the tighter one (at most 62 hits at the default 1000 a minute). At 250
    requests a second for one member, reservations of 64 were seen to run out before the
    next one was written (SQLite's writer lock, GIL hand-offs under load): requests waited.

    Once the database says a key is over its limit, the process refuses that key without
    writing until the window ends (nothing more can be let through in that window)."""

    MAX_RESERVATION = 1024

    def __init__(self, limiter: DatabaseRateLimiter) -> None:
        self.limiter = limiter
        self._grants: dict[tuple[str, int, int], _Grant] = {}
        self._lock = threading.Lock()

    def take(self, key: str, limit: int, window_seconds: int) -> tuple[Verdict | None, bool]:
        """Use one reserved hit (no I/O: fine on the event loop). Returns the verdict, or
        None when this process holds no hit of the key's current window (then reserve());
        and whether the next reservation is due (reserve(use=False), not waited for)."""
        now = _now_ms()
        with self._lock:
            grant = self._grants.get((key, limit, window_seconds))
            if grant is None or grant.window_end <= now or grant.left == 0:
                return None, False
            if grant.left < 0:
                return Verdict(limit + 1, limit, _retry_after(grant.window_end, now)), False
            grant.left -= 1
            verdict = Verdict(limit - grant.left, limit, _retry_after(grant.window_end, now))
            return verdict, grant.size > 1 and grant.left * 2 <= grant.size

    def reserve(
        self, key: str, limit: int, window_seconds: int, *, use: bool = True
    ) -> Verdict | None:
        """Reserve hits of the key's window in the database (blocking I/O) and use one of
        them for this request (its verdict); `use=False` only adds them to the ones held."""
        ident = (key, limit, window_seconds)
        with self._lock:
            known = self._grants.get(ident)
            size = 1 if known is None else known.size
        hits, window_end, now = self.limiter.count(key, window_seconds, size)
        # before this reservation the window held hits - size: the limit leaves `granted`
        granted = max(0, min(size, limit - (hits - size)))
        retry_after = _retry_after(window_end, now)
        with self._lock:
            if len(self._grants) > 10_000:
                for old in [k for k, g in self._grants.items() if g.window_end <= now]:
                    del self._grants[old]
            if granted == 0:
                self._grants[ident] = _Grant(-1, window_end, 1)
                return Verdict(hits, limit, retry_after) if use else None
            free = limit - hits  # still free in the window, for every process
            next_size = max(1, min(2 * size, self.MAX_RESERVATION, free // 16))
            current = self._grants.get(ident)
            held = (
                current.left
                if current is not None and current.window_end == window_end and current.left > 0
                else 0
            )  # hits of the same window reserved before (or meanwhile) and not used yet
            self._grants[ident] = _Grant(held + granted - int(use), window_end, next_size)
        return Verdict(hits - granted + 1, limit, retry_after) if use else None
