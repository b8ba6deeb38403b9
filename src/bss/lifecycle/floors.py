"""Replace floors kept with the segments in the database, applied by every read.

A replace job's floor (bss.lifecycle.replace) hides the entries of a segment below the job's
seq base. Written into the store it would take one write per Redis master, so a reader could
see some users replaced and others not; kept in the database (`segment_floors`, one row per
segment and store region) and applied by every read of the store (the stores' `floors`
provider, bss.store.base.Floors) it is one step: a read takes the floors first, then reads
the store, so a read that sees a floor also sees every add of the job (they were all written
before the floor was), and one that does not see it sees the old members plus the adds.

Each process keeps a copy of the table, read again at most every CACHE_SECONDS (its own
writes at once). The entries below a floor are then dropped from the store (which also
makes the counts drop and keeps later writes below the floor out): on LMDB in the write
transaction that counted them, committed after the floor (bss.lifecycle.replace), on a store
that purges in several steps (Redis) PURGE_DELAY_SECONDS after the floor was written: by
then every process's copy holds the floor, so no read that missed it meets a half-purged
segment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bss.db import make_engine, write_tx
from bss.segments.models import segment_floors
from bss.store.base import Floors

#: How long a process trusts its copy of the floors (its own writes apply at once).
CACHE_SECONDS = 0.5
#: From a floor's write to the purge of the entries it hides: every copy is fresh by then,
#: with as long again for a read that took its floors just before to finish.
PURGE_DELAY_SECONDS = 2 * CACHE_SECONDS
#: The region name of a floor without store regions.
NO_REGION = ""

_Table = dict[str, dict[int, int]]


class SegmentFloors:
    """A process's copy of `segment_floors`: region -> segment id -> floor seq."""

    _by_url: dict[str, SegmentFloors] = {}
    _lock = threading.Lock()

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine
        self._loaded_at = -1.0
        self._table: _Table = {}

    @classmethod
    def for_url(cls, url: str) -> SegmentFloors:
        """The process's copy for the database at `url` (an engine of its own, made on
        first use)."""
        with cls._lock:
            found = cls._by_url.get(url)
            if found is None:
                engine: list[Engine] = []

                def make() -> Engine:
                    if not engine:
                        engine.append(make_engine(url))
                    return engine[0]

                found = cls._by_url[url] = cls(make)
            return found

    @classmethod
    def invalidate_all(cls) -> None:
        """This process wrote floors: every copy reads them again at its next use."""
        with cls._lock:
            for floors in cls._by_url.values():
                floors._loaded_at = -1.0

    def current(self) -> _Table:
        if time.monotonic() - self._loaded_at > CACHE_SECONDS:
            t = segment_floors
            try:
                with self._engine().connect() as conn:
                    rows = conn.execute(select(t.c.region, t.c.segment_id, t.c.seq)).all()
            except SQLAlchemyError:
                # The database is down: the copy held stands (reads go on), asked again next.
                return self._table
            table: _Table = {}
            for region, segment_id, seq in rows:
                table.setdefault(region, {})[segment_id] = seq
            self._table, self._loaded_at = table, time.monotonic()
        return self._table

    def reader(self, region: str | None) -> Floors:
        """The floors provider of one store region's store."""
        name = NO_REGION if region is None else region

        def floors() -> Mapping[int, int]:
            return self.current().get(name, {})

        return floors


def set_floors(db: Engine, segment_ids: Iterable[int], seq: int, region: str | None) -> None:
    """Raise the floors of `segment_ids` in `region` to `seq` (never lower one), in one
    transaction: from its commit on, every read of that region hides their entries below."""
    name = NO_REGION if region is None else region
    t = segment_floors
    wanted = sorted(set(segment_ids))
    for attempt in range(2):
        try:
            with write_tx(db) as conn:
                stored = dict(
                    conn.execute(
                        select(t.c.segment_id, t.c.seq).where(
                            t.c.region == name, t.c.segment_id.in_(wanted)
                        )
                    ).all()
                )
                new = [s for s in wanted if s not in stored]
                if new:
                    conn.execute(
                        insert(t), [{"segment_id": s, "region": name, "seq": seq} for s in new]
                    )
                lower = [s for s in wanted if s in stored and stored[s] < seq]
                if lower:
                    conn.execute(
                        update(t)
                        .where(t.c.region == name, t.c.segment_id.in_(lower))
                        .values(seq=seq)
                    )
            break
        except IntegrityError:  # another process inserted one first: compare again
            if attempt:
                raise
    SegmentFloors.invalidate_all()
