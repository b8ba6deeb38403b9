"""The global seq counter: one 64-bit row in the relational database, shared by every process.

Every write to the membership store carries a seq taken from here (a job reserves
JOB_SEQ_SPAN at its first apply, a segment deletion one, a real-time post as many as it has
pairs), so writes of different processes and machines never share a seq, and the later one
wins by the time the service first applied it. One atomic `UPDATE ... RETURNING` on SQLite
and PostgreSQL alike: no lock held between reading and bumping.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, String, Table, select, update
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
#: The first seq handed out (every existing store's seqs are above it too).
FIRST_SEQ = 1 << 40


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
        _create(db, FIRST_SEQ)
    raise RuntimeError("the seq counter row could not be created")


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
