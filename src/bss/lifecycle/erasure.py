"""Erasure of a member (DELETE /member): everything it had goes, an audit record stays.

In the database, in one transaction: its users (and their sessions), segments, config, jobs
(and what regions were owed of them), load figures, report requests, real-time idempotency
answers, webhook deliveries and passive-upload claims; an audit row (`member_erasures`)
records that it happened. Then, in the membership store: every segment of the member gets a
deletion marker at a seq reserved after that transaction, in the local region at once and in
every other region through the region catch-up (bss.store.regions), so no entry written
before is readable again and a segment later created under a freed id, or by the member
created again with the same id, starts empty; its links (the identity graph's member scope)
go in every region the same way. Then the kept files and error reports go.

The seq is reserved after the rows are gone on purpose: a job can only write after it
renews its lease on its row with the seq base it reserved, so every write of the member's
jobs carries a seq below the markers. The store work and the files are finished by the next
DELETE /member of the same id if this one is interrupted (the audit row says what is left).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update

from bss.accounts.models import logins, members, tokens, users
from bss.accounts.service import forget_principals
from bss.db import inserted_id, now_s, write_tx
from bss.errors import NotFound
from bss.files import FileStore
from bss.jobs.models import jobs
from bss.lifecycle.models import member_erasures
from bss.passive.models import passive_claims
from bss.realtime.models import rt_idempotency_keys
from bss.reports.models import reports, segment_load_sources, segment_loads
from bss.segments.models import batch_segment_configs, segments
from bss.store import MembershipStore, regions, seqs
from bss.webhooks.models import webhook_deliveries

log = logging.getLogger("bss.lifecycle")


def erase_member(
    db: Engine,
    member_id: int,
    store: MembershipStore,
    other_regions: Sequence[str],
    files: FileStore,
    *,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Erase the member; return its audit record. A member that no longer exists but whose
    erasure was interrupted is finished; otherwise a member that does not exist is NOTFOUND."""
    with write_tx(db) as conn:
        erasure_pk = _erase_rows(conn, member_id, requested_by)
        if erasure_pk is None:
            erasure_pk = conn.execute(
                select(member_erasures.c.id).where(
                    member_erasures.c.member_id == member_id,
                    member_erasures.c.completed_on.is_(None),
                )
            ).scalar()
    if erasure_pk is None:
        raise NotFound(f"member {member_id} not found")
    forget_principals()
    _finish(db, erasure_pk, store, other_regions, files)
    return erasure_out(_row(db, erasure_pk))


def _erase_rows(conn: Connection, member_id: int, requested_by: str | None) -> int | None:
    """Delete the member's rows; its audit row's id (None when the member does not exist)."""
    if conn.execute(select(members.c.id).where(members.c.id == member_id)).first() is None:
        return None
    segment_ids = list(
        conn.execute(select(segments.c.id).where(segments.c.member_id == member_id)).scalars()
    )
    job_rows = conn.execute(
        select(jobs.c.id, jobs.c.file_path, jobs.c.report_path, jobs.c.file_deleted).where(
            jobs.c.member_id == member_id
        )
    ).all()
    job_pks = [r.id for r in job_rows]
    kept = [r.file_path for r in job_rows if r.file_path and not r.file_deleted]
    kept += [r.report_path for r in job_rows if r.report_path]
    user_ids = select(users.c.id).where(users.c.member_id == member_id)
    conn.execute(delete(tokens).where(tokens.c.user_id.in_(user_ids)))
    conn.execute(delete(logins).where(logins.c.user_id.in_(user_ids)))
    conn.execute(delete(users).where(users.c.member_id == member_id))
    conn.execute(delete(segments).where(segments.c.member_id == member_id))
    conn.execute(
        delete(batch_segment_configs).where(batch_segment_configs.c.member_id == member_id)
    )
    if segment_ids:
        conn.execute(delete(segment_loads).where(segment_loads.c.segment_id.in_(segment_ids)))
    if job_pks:
        sources = [f"job:{pk}" for pk in job_pks]
        conn.execute(delete(segment_load_sources).where(segment_load_sources.c.source.in_(sources)))
        regions.forget_jobs(conn, job_pks)
        conn.execute(delete(jobs).where(jobs.c.id.in_(job_pks)))
    conn.execute(
        delete(segment_load_sources).where(segment_load_sources.c.source.like(f"rt:{member_id}:%"))
    )
    conn.execute(delete(reports).where(reports.c.member_id == member_id))
    conn.execute(delete(rt_idempotency_keys).where(rt_idempotency_keys.c.member_id == member_id))
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.member_id == member_id))
    conn.execute(delete(passive_claims).where(passive_claims.c.member_id == member_id))
    conn.execute(delete(members).where(members.c.id == member_id))
    return inserted_id(
        conn.execute(
            member_erasures.insert().values(
                member_id=member_id,
                requested_on=now_s(),
                requested_by=requested_by,
                segment_ids=json.dumps(segment_ids),
                files=json.dumps(kept),
                jobs_erased=len(job_pks),
            )
        )
    )


def _finish(
    db: Engine,
    erasure_pk: int,
    store: MembershipStore,
    other_regions: Sequence[str],
    files: FileStore,
) -> None:
    """The store markers (every region) and the files: idempotent, resumable."""
    row = _row(db, erasure_pk)
    segment_ids = json.loads(row["segment_ids"])
    seq = row["store_seq"]
    if seq is None:
        seq = seqs.reserve(db, 1)
        with write_tx(db) as conn:
            # The member's links go with its first segment's deletion (alone without one).
            links_scope = row["member_id"]
            for segment_id in segment_ids:
                regions.record_segment_deletion(
                    conn, segment_id, seq, other_regions, links_scope=links_scope
                )
                links_scope = None
            if links_scope is not None:
                regions.record_scope_links_deletion(conn, links_scope, other_regions)
            conn.execute(
                update(member_erasures)
                .where(member_erasures.c.id == erasure_pk)
                .values(store_seq=seq)
            )
    for segment_id in segment_ids:
        store.delete_segment(segment_id, seq)
    # The member's own links (the identity graph's member scope): here, and owed to every
    # other region with the same erasure.
    store.delete_scope_links(row["member_id"])
    for ref in json.loads(row["files"]):
        files.delete(ref)
    with write_tx(db) as conn:
        conn.execute(
            update(member_erasures)
            .where(member_erasures.c.id == erasure_pk)
            .values(completed_on=now_s(), files="[]")
        )
    log.info(
        "member erased",
        extra={"member_id": row["member_id"], "segments": len(segment_ids), "seq": seq},
    )


def _row(db: Engine, erasure_pk: int) -> Any:
    with db.connect() as conn:
        return (
            conn.execute(select(member_erasures).where(member_erasures.c.id == erasure_pk))
            .mappings()
            .one()
        )


def erasure_out(row: Any) -> dict[str, Any]:
    return {
        "member_id": row["member_id"],
        "requested_on": row["requested_on"],
        "requested_by": row["requested_by"],
        "segments_erased": len(json.loads(row["segment_ids"])),
        "jobs_erased": row["jobs_erased"],
        "completed_on": row["completed_on"],
    }


def list_erasures(db: Engine, member_id: int | None = None) -> list[dict[str, Any]]:
    q = select(member_erasures).order_by(member_erasures.c.id)
    if member_id is not None:
        q = q.where(member_erasures.c.member_id == member_id)
    with db.connect() as conn:
        return [erasure_out(r) for r in conn.execute(q).mappings()]
