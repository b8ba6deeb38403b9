"""The global seq counter: one 64-bit row in the relational database, shared by every process.

Every write to the membership store carries a seq taken from here (a job reserves
JOB_SEQ_SPAN at its first apply, a segment deletion one, a real-time post as many as it has
pairs), so writes of different processes and machines never share a seq, and the later one
wins by the time the service first applied it. One atomic `UPDATE ... RETURNING` on SQLite
and PostgreSQL alike: no lock held between reading and bumping.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, String, Table, func, select, update
from sqlalchemy.exc import IntegrityError

from bss.db import metadata, write_tx

seq_counters = Table(
    "seq_counters",
    metadata,
    Column("name", String(20), primary_key=True),
    #: The next seq to hand out.
    Column("next_seq", BigInteger, nullable=False),
)

_GLOBAL = "global"
#: Seqs of the layout before the counter: job_no * 2**40 + index of the pair in its file.
OLD_JOB_SEQ_SPAN = 1 << 40


def reserve(db: Engine, n: int) -> int:
    """Reserve `n` consecutive seqs; return the first."""
    if n < 1:
        raise ValueError("reserve at least one seq")
    bump = (
        update(seq_counters)
        .where(seq_counters.c.name == _GLOBAL)
        .values(next_seq=seq_counters.c.next_seq + n)
        .returning(seq_counters.c.next_seq)
    )
    for _ in range(2):
        with write_tx(db) as conn:
            after = conn.execute(bump).scalar()
        if after is not None:
            return int(after) - n
        _create(db, _initial(db))
    raise RuntimeError("the seq counter row could not be created")


def ensure_above(db: Engine, seq: int) -> None:
    """Make every later reservation start above `seq` (used when old data is converted)."""
    _create(db, max(seq + 1, _initial(db)))
    with write_tx(db) as conn:
        conn.execute(
            update(seq_counters)
            .where(seq_counters.c.name == _GLOBAL, seq_counters.c.next_seq <= seq)
            .values(next_seq=seq + 1)
        )


def _initial(db: Engine) -> int:
    """Above every seq the old layout can have given: (highest job number + 1) * 2**40."""
    from bss.jobs.models import jobs  # the jobs domain sits above the store

    with db.connect() as conn:
        highest = conn.execute(select(func.max(jobs.c.id))).scalar() or 0
    return (int(highest) + 1) * OLD_JOB_SEQ_SPAN


def _create(db: Engine, first: int) -> None:
    try:
        with write_tx(db) as conn:
            exists = conn.execute(
                select(seq_counters.c.name).where(seq_counters.c.name == _GLOBAL)
            ).first()
            if exists is None:
                conn.execute(seq_counters.insert().values(name=_GLOBAL, next_seq=first))
    except IntegrityError:  # another process created it first: theirs stands
        pass
