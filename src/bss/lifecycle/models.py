"""Tables of the lifecycle domain: the audit record of member erasures."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from bss.db import metadata

#: One row per DELETE /member: the only thing kept of an erased member. The store work
#: (deletion markers for its segments, in every region) and the kept files are done after
#: the database rows go; `completed_on` stays null until they are, so an interrupted
#: erasure is finished by the next DELETE /member of the same id.
member_erasures = Table(
    "member_erasures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", Integer, nullable=False),
    Column("requested_on", BigInteger, nullable=False),
    #: Who asked (the admin's username), for the audit trail.
    Column("requested_by", String(200), nullable=True),
    #: JSON list of the erased segment ids: they get deletion markers in every region.
    Column("segment_ids", Text, nullable=False),
    #: JSON list of the kept files and error reports still to delete.
    Column("files", Text, nullable=False),
    Column("jobs_erased", Integer, nullable=False),
    #: The seq of the segments' deletion markers, once reserved.
    Column("store_seq", BigInteger, nullable=True),
    Column("completed_on", BigInteger, nullable=True),
    Index("ix_member_erasures_member", "member_id"),
)
