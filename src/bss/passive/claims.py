"""Database operations on `passive_claims`, a leased queue (bss.queue) of file versions.

A claim is made by the INSERT of its unique identity; from then on it is a row of the
leased queue: its owner renews the lease, every write is guarded on the owner, and a claim
whose lease ran out (its scanner died) or was let go is claimed again by another scanner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from bss.db import inserted_id
from bss.passive.models import CLAIMED, JOB_CREATED, MOVED, passive_claims
from bss.queue import LeasedQueue, QueueTable

T = passive_claims


def utcnow() -> datetime:
    """Naive UTC (what the DateTime columns hold on every dialect)."""
    return datetime.now(UTC).replace(tzinfo=None)


def lease_end(at: float) -> datetime:
    """UNIX seconds as `lease_until` holds them (naive UTC)."""
    return datetime.fromtimestamp(at, UTC).replace(tzinfo=None)


#: Claims not moved yet are work: their owner holds them, or anyone may take them over.
_OPEN = T.c.state.in_((CLAIMED, JOB_CREATED))

CLAIM_QUEUE = QueueTable(
    table=T,
    holder=T.c.owner,
    until=T.c.lease_until,
    ready=lambda _now: _OPEN,
    order=(T.c.id,),
    owned=_OPEN,
    to_db_time=lease_end,
)


def claim_identity(backend: str, location: str, key: str, fingerprint: str) -> str:
    raw = "\x00".join((backend, location, key, fingerprint)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()


class ClaimStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, identity: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(T).where(T.c.identity == identity)).mappings().first()
        return dict(row) if row else None

    def by_id(self, claim_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(T).where(T.c.id == claim_id)).mappings().first()
        return dict(row) if row else None

    def insert(
        self,
        *,
        identity: str,
        backend: str,
        location: str,
        member_id: int,
        source_key: str,
        fingerprint: str,
        size: int,
        owner: str,
        lease_seconds: float,
        work_key: str,
    ) -> dict[str, Any] | None:
        """Claim a file version; None if someone else already has (or had) it."""
        now = utcnow()
        values = dict(
            identity=identity,
            backend=backend,
            location=location,
            member_id=member_id,
            source_key=source_key,
            fingerprint=fingerprint,
            size=size,
            state=CLAIMED,
            owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
            work_key=work_key,
            created_at=now,
            updated_at=now,
        )
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(T).values(**values))
                values["id"] = inserted_id(result)
        except IntegrityError:
            return None
        return {c.name: values.get(c.name) for c in T.columns}

    def _queue(self, lease_seconds: float) -> LeasedQueue:
        return LeasedQueue(self.engine, CLAIM_QUEUE, lease_seconds)

    def take_over_next(
        self, location: str, owner: str, lease_seconds: float, skip: Collection[int] = ()
    ) -> dict[str, Any] | None:
        """Take the oldest abandoned claim at `location` (its lease ran out or was let go)
        that is not in `skip`; None when there is none."""
        where = and_(T.c.location == location, T.c.id.not_in(list(skip)))
        return self._queue(lease_seconds).claim(owner, where=where, updated_at=utcnow())

    def renew(self, claim_ids: list[int], owner: str, lease_seconds: float) -> set[int]:
        """Extend our leases; returns the ids we still own."""
        return self._queue(lease_seconds).renew_many(claim_ids, owner, updated_at=utcnow())

    def set_job(self, claim_id: int, owner: str, job_id: str, job_db_id: int | None) -> bool:
        values = dict(state=JOB_CREATED, job_id=job_id, job_db_id=job_db_id, updated_at=utcnow())
        return self._queue(0).write(claim_id, owner, values, where=T.c.state == CLAIMED)

    def set_outcome(
        self, claim_id: int, owner: str, outcome: str, dest_key: str, error: str | None
    ) -> bool:
        """Record where the file goes (once; a later taker reuses the same destination)."""
        values = dict(outcome=outcome, dest_key=dest_key, error=error, updated_at=utcnow())
        return self._queue(0).write(claim_id, owner, values, where=T.c.dest_key.is_(None))

    def set_moved(self, claim_id: int, owner: str, error: str | None = None) -> bool:
        values: dict[str, Any] = {"state": MOVED, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error
        return self._queue(0).finish(claim_id, owner, values)

    def release(self, claim_id: int, owner: str) -> bool:
        """Drop a claim that never got a job (the file vanished or changed before we took it)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(T).where(T.c.id == claim_id, T.c.owner == owner, T.c.state == CLAIMED)
            )
            return result.rowcount == 1

    def purge_moved(self, older_than_seconds: float) -> int:
        """Forget finished claims (kept as long as job history, for tracing)."""
        cutoff = utcnow() - timedelta(seconds=older_than_seconds)
        with self.engine.begin() as conn:
            return conn.execute(
                delete(T).where(T.c.state == MOVED, T.c.updated_at < cutoff)
            ).rowcount

    def let_go(self, claim_ids: list[int], owner: str) -> int:
        """End our leases now (clean shutdown): the next scanner resumes them at once."""
        queue = self._queue(0)
        return sum(queue.release(claim_id, owner, updated_at=utcnow()) for claim_id in claim_ids)
