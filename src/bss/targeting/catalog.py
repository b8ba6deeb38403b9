"""What the answers need to know about segments and members, kept in memory for a few
seconds: a bid request must not wait on the database.

Segments are looked up by id the first time a membership names them (another member's
segment is remembered as not the reader's), so a segment created a moment ago is found at
once; every CATALOG_SECONDS the known ones are read again in a few queries, so a change to an
existing segment or to a member's settings shows within that time and requests do not wait
on the database meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, select

from bss.accounts.models import members
from bss.db import now_s, write_tx
from bss.segments.service import segments_by_ids
from bss.targeting.models import openrtb_member_settings

#: How long segment facts and member settings are used before they are read again.
CATALOG_SECONDS = 5.0
#: Segment ids read again in one query when the facts are refreshed.
REFRESH_CHUNK = 500


class SegmentFacts(NamedTuple):
    """A named tuple: a refresh makes one for every segment known, every few seconds."""

    member_id: int
    code: str | None
    active: bool
    taxonomy_id: int | None
    taxonomy_node: str | None
    #: What answers name the segment by, worked out once rather than for every membership
    #: answered: its taxonomy (None unless it has a node in one), and its segment[].id by
    #: the member's segment_id_field, "id" (then "code").
    segtax: int | None = None
    openrtb_ids: tuple[str, str] = ("", "")


@dataclass(frozen=True, slots=True)
class MemberSettings:
    """A member's OpenRTB answer settings (the defaults for a member that set none)."""

    user_id_is_external: bool = False
    segment_id_field: str = "id"

    def out(self) -> dict[str, Any]:
        return {
            "user_id_is_external": self.user_id_is_external,
            "segment_id_field": self.segment_id_field,
        }


class Catalog:
    def __init__(self, db: Engine, max_age: float = CATALOG_SECONDS) -> None:
        self.db = db
        self.max_age = max_age
        self._lock = threading.Lock()
        self._segments: dict[int, SegmentFacts | None] = {}
        self._members: dict[int, MemberSettings | None] = {}
        self._loaded = time.monotonic()

    def _fresh(self) -> None:
        """Past `max_age`, read again every segment known (in chunks, one thread at a time;
        the others keep using the facts they have meanwhile) and forget member settings."""
        if time.monotonic() - self._loaded <= self.max_age or not self._lock.acquire(False):
            return
        try:
            ids = list(self._segments)
            fresh: dict[int, SegmentFacts | None] = {}
            for start in range(0, len(ids), REFRESH_CHUNK):
                chunk = ids[start : start + REFRESH_CHUNK]
                rows = segments_by_ids(self.db, chunk)
                fresh.update((i, _facts(rows[i]) if i in rows else None) for i in chunk)
            self._segments, self._members = fresh, {}
            self._loaded = time.monotonic()
        finally:
            self._lock.release()

    def segments(self, ids: list[int]) -> dict[int, SegmentFacts | None]:
        """Facts of each segment id (None: no such segment)."""
        return dict(zip(ids, self.facts(ids), strict=True))

    def facts(self, ids: list[int]) -> list[SegmentFacts | None]:
        """Facts of each segment id, in order (None: no such segment)."""
        self._fresh()
        known = self._segments
        try:
            return [known[i] for i in ids]
        except KeyError:  # segments not seen yet: read in one query
            missing = [i for i in dict.fromkeys(ids) if i not in known]
            rows = segments_by_ids(self.db, missing)
            for i in missing:
                row = rows.get(i)
                known[i] = None if row is None else _facts(row)
            return [known[i] for i in ids]

    def member(self, member_id: int) -> MemberSettings | None:
        """The member's settings; None when there is no such member."""
        self._fresh()
        if member_id not in self._members:
            self._members[member_id] = read_member_settings(self.db, member_id)
        return self._members[member_id]

    def forget_member(self, member_id: int) -> None:
        self._members.pop(member_id, None)


def _facts(row: Any) -> SegmentFacts:
    code, taxonomy_id, node = row["code"], row.get("taxonomy_id"), row.get("taxonomy_node")
    by_id = str(row["id"])
    if taxonomy_id is not None and node:  # a taxonomy node names it whatever the setting
        segtax, openrtb_ids = taxonomy_id, (node, node)
    else:
        segtax, openrtb_ids = None, (by_id, code or by_id)
    active = row["state"] == "active"
    return SegmentFacts(row["member_id"], code, active, taxonomy_id, node, segtax, openrtb_ids)


def read_member_settings(db: Engine, member_id: int) -> MemberSettings | None:
    s = openrtb_member_settings
    q = (
        select(members.c.id, s.c.user_id_is_external, s.c.segment_id_field)
        .select_from(members.outerjoin(s, s.c.member_id == members.c.id))
        .where(members.c.id == member_id)
    )
    with db.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        return None
    if row.segment_id_field is None:
        return MemberSettings()
    return MemberSettings(bool(row.user_id_is_external), row.segment_id_field)


def write_member_settings(db: Engine, member_id: int, settings: MemberSettings) -> None:
    s = openrtb_member_settings
    values = {
        "user_id_is_external": settings.user_id_is_external,
        "segment_id_field": settings.segment_id_field,
        "last_modified": now_s(),
    }
    with write_tx(db) as conn:
        done = conn.execute(s.update().where(s.c.member_id == member_id).values(**values))
        if not done.rowcount:
            conn.execute(s.insert().values(member_id=member_id, **values))
