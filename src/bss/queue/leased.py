"""The leased queue: claim, renew, release, finish, for any table that holds work.

A row is free when no holder's lease covers it (`until` is NULL or past); a free row that
its queue calls ready (`ready`) can be claimed. The claim is one statement that cannot hand
a row to two holders: on PostgreSQL the candidate is picked with SELECT ... FOR UPDATE SKIP
LOCKED (concurrent claimers skip each other's rows instead of waiting for them), on SQLite
one guarded UPDATE ... RETURNING (SQLite has one writer at a time). Every later write is
guarded on the holder, so a holder whose lease lapsed and was taken over writes nothing.

`until` doubles as "not before": a release with a delay leaves no holder and an `until` in
the future, so the row is claimed again only once its backoff has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    or_,
    select,
    true,
    update,
)

from bss.db import is_sqlite, write_tx


def seconds(at: float) -> int:
    """UNIX seconds as the integer columns hold them."""
    return int(at)


@dataclass(frozen=True)
class QueueTable:
    """How one table holds its queue: which columns carry the lease, which rows are ready.

    `ready(now)` is the SQL condition of rows waiting for a holder (besides the lease being
    free; a subquery on the same table in it must be `.correlate(None)`); `owned` narrows what a holder may still write (e.g. a job still queued);
    `on_claim` are values every claim sets (e.g. a state); `to_db_time` turns UNIX seconds
    into what `until` holds."""

    table: Table
    holder: Column[Any]
    until: Column[Any]
    ready: Callable[[float], ColumnElement[bool]]
    order: Sequence[Column[Any]]
    #: Incremented by every claim (runs started), when the table has one.
    attempts: Column[Any] | None = None
    owned: ColumnElement[bool] | None = None
    on_claim: Mapping[str, Any] = field(default_factory=dict)
    to_db_time: Callable[[float], Any] = seconds

    @property
    def pk(self) -> Column[Any]:
        (column,) = self.table.primary_key.columns
        return column

    def free(self, now: float) -> ColumnElement[bool]:
        return or_(self.until.is_(None), self.until < self.to_db_time(now))


class LeasedQueue:
    """One queue of work rows in the shared database."""

    def __init__(self, db: Engine, spec: QueueTable, lease_seconds: float) -> None:
        self.db = db
        self.spec = spec
        self.lease_seconds = lease_seconds

    # --- claiming ------------------------------------------------------------------------

    def claim(
        self, holder: str, *, where: ColumnElement[bool] | None = None, **values: Any
    ) -> dict[str, Any] | None:
        """Take the first ready, free row (in `order`) under a lease; None when none is.
        `where` narrows the rows this claim may take (e.g. one place's); `values` are
        written with the claim (they may be SQL expressions)."""
        now = time.time()
        claim_values = {
            self.spec.holder.name: holder,
            self.spec.until.name: self.spec.to_db_time(now + self.lease_seconds),
            **self.spec.on_claim,
            **values,
        }
        if self.spec.attempts is not None:
            claim_values[self.spec.attempts.name] = self.spec.attempts + 1
        claimable = and_(
            self.spec.free(now), self.spec.ready(now), true() if where is None else where
        )
        with write_tx(self.db) as conn:
            if is_sqlite(self.db):
                return self._claim_sqlite(conn, claimable, claim_values)
            return self._claim_locked(conn, claimable, claim_values)

    def _claim_sqlite(
        self, conn: Connection, claimable: ColumnElement[bool], values: dict[str, Any]
    ) -> dict[str, Any] | None:
        # One guarded UPDATE ... RETURNING: no read-then-write window at all.
        t = self.spec.table
        first = (
            select(self.spec.pk)
            .where(claimable)
            .order_by(*self.spec.order)
            .limit(1)
            # Not correlated to the UPDATE's table: the candidate is picked from all rows.
            .correlate(None)
            .scalar_subquery()
        )
        row = (
            conn.execute(
                update(t).where(self.spec.pk == first, claimable).values(**values).returning(*t.c)
            )
            .mappings()
            .first()
        )
        return dict(row) if row is not None else None

    def _claim_locked(
        self, conn: Connection, claimable: ColumnElement[bool], values: dict[str, Any]
    ) -> dict[str, Any] | None:
        t = self.spec.table
        pk = conn.execute(
            select(self.spec.pk)
            .where(claimable)
            .order_by(*self.spec.order)
            .limit(1)
            .with_for_update(skip_locked=True, of=t)
        ).scalar()
        if pk is None:
            return None
        row = (
            conn.execute(update(t).where(self.spec.pk == pk).values(**values).returning(*t.c))
            .mappings()
            .first()
        )
        return dict(row) if row is not None else None

    # --- writes of the holder ------------------------------------------------------------

    def _owned_by(self, row_id: Any, holder: str) -> ColumnElement[bool]:
        return and_(
            self.spec.pk == row_id,
            self.spec.holder == holder,
            self.spec.owned if self.spec.owned is not None else true(),
        )

    def write(
        self,
        row_id: Any,
        holder: str,
        values: Mapping[str, Any],
        then: Callable[[Connection], None] | None = None,
        *,
        where: ColumnElement[bool] | None = None,
    ) -> bool:
        """Write to a row only while `holder` still holds it (and `where` holds); False
        otherwise. `then` runs in the same transaction when the write happened."""
        guard = self._owned_by(row_id, holder)
        if where is not None:
            guard = and_(guard, where)
        with write_tx(self.db) as conn:
            written = (
                conn.execute(update(self.spec.table).where(guard).values(**values)).rowcount == 1
            )
            if written and then is not None:
                then(conn)
            return written

    def renew(self, row_id: Any, holder: str, **values: Any) -> bool:
        """Extend the lease (and write `values`, e.g. progress); False when the row is no
        longer this holder's."""
        until = self.spec.to_db_time(time.time() + self.lease_seconds)
        return self.write(row_id, holder, {self.spec.until.name: until, **values})

    def renew_many(self, row_ids: Sequence[Any], holder: str, **values: Any) -> set[Any]:
        """Extend the leases of several rows (and write `values`); the ids still held."""
        if not row_ids:
            return set()
        until = self.spec.to_db_time(time.time() + self.lease_seconds)
        held = and_(
            self.spec.pk.in_(list(row_ids)),
            self.spec.holder == holder,
            self.spec.owned if self.spec.owned is not None else true(),
        )
        with write_tx(self.db) as conn:
            conn.execute(
                update(self.spec.table).where(held).values({self.spec.until.name: until, **values})
            )
            return set(conn.execute(select(self.spec.pk).where(held)).scalars())

    def release(
        self,
        row_id: Any,
        holder: str,
        delay: float = 0.0,
        *,
        then: Callable[[Connection], None] | None = None,
        **values: Any,
    ) -> bool:
        """Give the row back: no holder, claimable again after `delay` seconds. `then` runs
        in the same transaction when the row was still the holder's."""
        not_before = self.spec.to_db_time(time.time() + delay) if delay > 0 else None
        return self.write(
            row_id,
            holder,
            {self.spec.holder.name: None, self.spec.until.name: not_before, **values},
            then,
        )

    def finish(
        self,
        row_id: Any,
        holder: str,
        values: Mapping[str, Any],
        then: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Record the work's end (`values` move the row out of `ready`) while the holder
        still holds it; `then` runs in the same transaction. The holder stays named (who
        finished it); the lease ends."""
        return self.write(row_id, holder, {**values, self.spec.until.name: None}, then)
