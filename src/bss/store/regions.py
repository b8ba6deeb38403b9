"""Store regions: what each region other than the local one still has to receive.

With BSS_STORE_REGIONS every write to the memberships reaches every region. A job completes
when the local region has it; for each other region a `region_writes` row records the
replay still owed (a job's file, applied again with the job's seq base), a real-time
post's batch (kept as it was applied, seqs and all) or a segment deletion (its seq), and a catch-up loop (bss.jobs.regions) works the rows off: they are
a leased queue (bss.queue) like jobs, retried with backoff while a region is down. Under the seq rule a
replay with the same seqs writes exactly the memberships the local region has, in any order
and as often as it takes.

`job_replays` keeps what a replay must repeat exactly besides the file and the seqs: the
time the job was applied as of, the member's config and the segment registry of that run
(so that segments or a config changed since change nothing). It is dropped once every
region has the job.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from pyarrow import ipc
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)

from bss.db import metadata, now_s, write_tx
from bss.queue import LeasedQueue, QueueTable, backoff
from bss.store.base import LINK_SCHEMA, MembershipStore

#: A row waits for its first attempt (or was given back by a process that stopped).
PENDING = "pending"
#: A process holds the row's lease and is applying it.
APPLYING = "applying"
APPLIED = "applied"
#: The last attempt failed (region down, ...): retried after a backoff.
ERROR = "error"
#: Cannot ever be applied (the kept file is gone): not retried.
FAILED = "failed"
#: First wait after a failed attempt; it doubles up to BSS_REGION_RETRY_MAX_SECONDS.
FIRST_RETRY_SECONDS = 5.0

region_writes = Table(
    "region_writes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("region", String(40), nullable=False),
    #: A job (jobs.id) to replay from its kept file, or ...
    Column("job_id", Integer, nullable=True),
    #: ... a real-time post's batch (Arrow IPC stream, APPLY_SCHEMA, or LINK_SCHEMA for a
    #: link post), applied as it is, or ...
    Column("batch", LargeBinary, nullable=True),
    #: ... a segment deletion: the segment and the seq it was deleted at.
    Column("segment_id", Integer, nullable=True),
    Column("delete_seq", BigInteger, nullable=True),
    #: ... and/or a deleted member's links: every link of this scope goes.
    Column("links_scope", BigInteger, nullable=True),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    #: UNIX seconds: not tried again before this.
    Column("next_try", BigInteger, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("claimed_until", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_region_writes_job", "job_id", "region", unique=True),
    Index("ix_region_writes_due", "state", "next_try"),
)

job_replays = Table(
    "job_replays",
    metadata,
    Column("job_id", Integer, primary_key=True),
    #: The `now` the job's memberships were computed as of (starts, expiries).
    Column("applied_as_of", BigInteger, nullable=False),
    Column("config_json", Text, nullable=False),
    #: zlib-compressed JSON list of the segment registry's records at the job's run.
    Column("registry", LargeBinary, nullable=False),
)


def record_job(
    conn: Connection,
    job_pk: int,
    regions: Sequence[str],
    *,
    applied_as_of: int,
    config_json: str,
    registry_records: Iterable[dict[str, Any]],
    owed: bool,
) -> None:
    """In the transaction that finishes a job: owe it to every other region (`owed` False
    when the job applied nothing: those regions have all of it already)."""
    if not regions:
        return
    _owe(conn, regions, PENDING if owed else APPLIED, job_id=job_pk)
    if owed:
        blob = zlib.compress(json.dumps(list(registry_records)).encode())
        conn.execute(
            insert(job_replays).values(
                job_id=job_pk,
                applied_as_of=applied_as_of,
                config_json=config_json,
                registry=blob,
            )
        )


def record_segment_deletion(
    conn: Connection,
    segment_id: int,
    seq: int,
    regions: Sequence[str],
    *,
    links_scope: int | None = None,
) -> None:
    """Owe a segment deletion (at `seq`) to every other region; with `links_scope`, the
    deletion of that scope's links too (a deleted member's segment and links)."""
    if regions:
        _owe(conn, regions, PENDING, segment_id=segment_id, delete_seq=seq, links_scope=links_scope)


def record_scope_links_deletion(conn: Connection, scope: int, regions: Sequence[str]) -> None:
    """Owe the deletion of every link of a scope (a deleted member's) to every other region."""
    if regions:
        _owe(conn, regions, PENDING, links_scope=scope)


def record_batch(conn: Connection, batch: pa.Table, regions: Sequence[str]) -> None:
    """Owe a batch a real-time post applied locally (APPLY_SCHEMA, with its seqs; or
    LINK_SCHEMA, a link post's) to every other region."""
    if not regions:
        return
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema) as writer:
        writer.write_table(batch)
    _owe(conn, regions, PENDING, batch=sink.getvalue().to_pybytes())


def _owe(conn: Connection, regions: Sequence[str], state: str, **write: Any) -> None:
    """One region_writes row per region for the same write (a job, a deletion or a batch)."""
    now = now_s()
    conn.execute(
        insert(region_writes),
        [
            {
                "region": region,
                **write,
                "state": state,
                "attempts": 0,
                "next_try": now,
                "updated_at": now,
            }
            for region in regions
        ],
    )


def read_batch(blob: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(blob)).read_all()


def apply_batch(store: MembershipStore, batch: pa.Table) -> None:
    """Apply a recorded batch: memberships (APPLY_SCHEMA) or links (LINK_SCHEMA, a
    real-time link post's, told apart by its columns)."""
    if batch.schema.names == LINK_SCHEMA.names:
        store.apply_links(batch)
    else:
        store.apply(batch)


def replay_inputs(db: Engine, job_pk: int) -> tuple[int, str, list[dict[str, Any]]] | None:
    """(applied_as_of, config JSON, registry records) of a job owed to a region."""
    with db.connect() as conn:
        row = conn.execute(select(job_replays).where(job_replays.c.job_id == job_pk)).first()
    if row is None:
        return None
    return row.applied_as_of, row.config_json, json.loads(zlib.decompress(row.registry))


def _due(now: float) -> Any:
    """Waiting, or failed and past its backoff (a row still `applying` whose lease is free
    lost its holder: the queue takes it over)."""
    waiting = and_(
        region_writes.c.state.in_((PENDING, ERROR)), region_writes.c.next_try <= int(now)
    )
    return or_(waiting, region_writes.c.state == APPLYING)


REGION_QUEUE = QueueTable(
    table=region_writes,
    holder=region_writes.c.claimed_by,
    until=region_writes.c.claimed_until,
    ready=_due,
    order=(region_writes.c.id,),
    attempts=region_writes.c.attempts,
    owned=region_writes.c.state == APPLYING,
    on_claim={"state": APPLYING},
)


def queue(db: Engine, lease_seconds: float) -> LeasedQueue:
    return LeasedQueue(db, REGION_QUEUE, lease_seconds)


def claim_due(db: Engine, holder: str, lease_seconds: float) -> dict[str, Any] | None:
    """Take the oldest due row under a lease (never two processes on one row)."""
    return queue(db, lease_seconds).claim(holder, updated_at=now_s())


def renew(db: Engine, row_id: int, holder: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the row is no longer this holder's."""
    return queue(db, lease_seconds).renew(row_id, holder)


def mark_applied(db: Engine, row: dict[str, Any], holder: str) -> bool:
    """The region has it; a job's replay inputs go once every region has the job."""
    job_pk = row["job_id"]

    def drop_inputs(conn: Connection) -> None:
        if job_pk is None:
            return
        owed = conn.execute(
            select(region_writes.c.id).where(
                region_writes.c.job_id == job_pk, region_writes.c.state != APPLIED
            )
        ).first()
        if owed is None:
            conn.execute(delete(job_replays).where(job_replays.c.job_id == job_pk))

    values = {
        "state": APPLIED,
        "error": None,
        "batch": None,  # its bytes are not needed any more
        "updated_at": now_s(),
    }
    return queue(db, 0).finish(row["id"], holder, values, drop_inputs)


def mark_failed(
    db: Engine,
    row: dict[str, Any],
    holder: str,
    error: str,
    *,
    retry_max_seconds: float,
    final: bool = False,
    region_waits: bool = True,
) -> None:
    """The attempt failed: retried after a backoff that doubles per attempt (or never, when
    `final`). With `region_waits` (the region is down: the infrastructure's failure) the
    region's other waiting rows wait as long: a region that is down is tried once per
    backoff, not once per row (each try can take a store's whole retry time)."""
    now = now_s()
    wait = backoff(max(1, row["attempts"]), first=FIRST_RETRY_SECONDS, cap=retry_max_seconds)
    next_try = now + int(wait + 0.999)
    values: dict[str, Any] = {
        "state": FAILED if final else ERROR,
        "error": error[:2000],
        "next_try": next_try,
        "updated_at": now,
    }
    if final:
        queue(db, 0).finish(row["id"], holder, values)
        return

    def region_waits_too(conn: Connection) -> None:
        conn.execute(
            update(region_writes)
            .where(
                region_writes.c.region == row["region"],
                region_writes.c.state.in_((PENDING, ERROR)),
                region_writes.c.next_try < next_try,
            )
            .values(next_try=next_try)
        )

    queue(db, 0).release(
        row["id"], holder, then=region_waits_too if region_waits else None, **values
    )


def give_back(db: Engine, row: dict[str, Any], holder: str) -> None:
    """The process is stopping: the row is due again at once, for any process (the attempt
    it was given back in does not count)."""
    queue(db, 0).release(
        row["id"],
        holder,
        state=PENDING,
        attempts=region_writes.c.attempts - 1,
        next_try=now_s(),
    )


def job_region_states(db: Engine, job_pks: Sequence[int]) -> dict[int, dict[str, str]]:
    """Job -> region -> what the job's `regions` field shows for it."""
    if not job_pks:
        return {}
    with db.connect() as conn:
        rows = conn.execute(
            select(
                region_writes.c.job_id,
                region_writes.c.region,
                region_writes.c.state,
                region_writes.c.attempts,
                region_writes.c.error,
            ).where(region_writes.c.job_id.in_(list(job_pks)))
        ).all()
    out: dict[int, dict[str, str]] = {}
    for job_pk, region, state, attempts, error in rows:
        if state == ERROR:
            shown = f"error: {error} (attempt {attempts}; retried)"
        elif state == FAILED:
            shown = f"error: {error} (not retried)"
        else:
            shown = state
        out.setdefault(job_pk, {})[region] = shown
    return out


def job_owed(job_pk_column: Any) -> Any:
    """SQL condition: the job is still owed to some region (its file must be kept)."""
    return exists(
        select(region_writes.c.id).where(
            region_writes.c.job_id == job_pk_column,
            region_writes.c.state.not_in((APPLIED, FAILED)),
        )
    )


def forget_jobs(conn: Connection, job_pks: Sequence[int]) -> None:
    """The jobs left the history: their region rows go with them."""
    conn.execute(delete(region_writes).where(region_writes.c.job_id.in_(list(job_pks))))
    conn.execute(delete(job_replays).where(job_replays.c.job_id.in_(list(job_pks))))


def purge_applied(db: Engine, before: int) -> int:
    """Drop rows of posts and segment deletions applied before `before` (UNIX seconds); a
    job's rows go with the job."""
    with write_tx(db) as conn:
        return conn.execute(
            delete(region_writes).where(
                region_writes.c.job_id.is_(None),
                region_writes.c.state == APPLIED,
                region_writes.c.updated_at < before,
            )
        ).rowcount
