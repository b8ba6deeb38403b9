"""Database operations on `passive_claims` (every write is a compare-and-set on the owner)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bss.db import inserted_id
from bss.passive.models import CLAIMED, JOB_CREATED, MOVED, passive_claims

T = passive_claims


def utcnow() -> datetime:
    """Naive UTC (what the DateTime columns hold on every dialect)."""
    return datetime.now(UTC).replace(tzinfo=None)


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

    def pending(self, location: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(T)
                .where(T.c.location == location, T.c.state.in_((CLAIMED, JOB_CREATED)))
                .order_by(T.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def take_over(self, row: dict[str, Any], owner: str, lease_seconds: float) -> bool:
        """Take an abandoned claim (lease expired), atomically; False if someone beat us."""
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(T)
                .where(
                    T.c.id == row["id"],
                    T.c.state == row["state"],
                    or_(T.c.lease_until.is_(None), T.c.lease_until < now),
                    # the owner we saw: guards against two takers racing
                    T.c.owner == row["owner"] if row["owner"] is not None else T.c.owner.is_(None),
                )
                .values(
                    owner=owner,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    def renew(self, claim_ids: list[int], owner: str, lease_seconds: float) -> set[int]:
        """Extend our leases; returns the ids we still own."""
        if not claim_ids:
            return set()
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                update(T)
                .where(T.c.id.in_(claim_ids), T.c.owner == owner, T.c.state != MOVED)
                .values(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
            )
            rows = conn.execute(
                select(T.c.id).where(T.c.id.in_(claim_ids), T.c.owner == owner)
            ).scalars()
            return set(rows)

    def _owned(self, claim_id: int, owner: str):  # noqa: ANN202 - a where clause
        return and_(T.c.id == claim_id, T.c.owner == owner)

    def set_job(self, claim_id: int, owner: str, job_id: str, job_db_id: int | None) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(T)
                .where(self._owned(claim_id, owner), T.c.state == CLAIMED)
                .values(state=JOB_CREATED, job_id=job_id, job_db_id=job_db_id, updated_at=utcnow())
            )
            return result.rowcount == 1

    def set_outcome(
        self, claim_id: int, owner: str, outcome: str, dest_key: str, error: str | None
    ) -> bool:
        """Record where the file goes (once; a later taker reuses the same destination)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(T)
                .where(self._owned(claim_id, owner), T.c.dest_key.is_(None))
                .values(outcome=outcome, dest_key=dest_key, error=error, updated_at=utcnow())
            )
            return result.rowcount == 1

    def set_moved(self, claim_id: int, owner: str, error: str | None = None) -> bool:
        values: dict[str, Any] = {"state": MOVED, "lease_until": None, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error
        with self.engine.begin() as conn:
            result = conn.execute(update(T).where(self._owned(claim_id, owner)).values(**values))
            return result.rowcount == 1

    def release(self, claim_id: int, owner: str) -> bool:
        """Drop a claim that never got a job (the file vanished or changed before we took it)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(T).where(self._owned(claim_id, owner), T.c.state == CLAIMED)
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
        if not claim_ids:
            return 0
        now = utcnow()
        with self.engine.begin() as conn:
            return conn.execute(
                update(T)
                .where(T.c.id.in_(claim_ids), T.c.owner == owner, T.c.state != MOVED)
                .values(lease_until=now - timedelta(seconds=1), updated_at=now)
            ).rowcount
