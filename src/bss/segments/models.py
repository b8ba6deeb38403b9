"""Tables of the segments domain: segments and batch segment configs."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from bss.db import metadata

segments = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", Integer, nullable=False),
    Column("code", String(50), nullable=True),
    #: lower(code): codes are unique per member case-insensitively (NULLs never collide).
    Column("code_key", String(50), nullable=True),
    Column("short_name", String(255), nullable=True),
    Column("description", Text, nullable=True),
    Column("state", String(10), nullable=False, default="active"),
    Column("expire_minutes", Integer, nullable=True),
    #: The segment's place in a published taxonomy (OpenRTB segtax, e.g. 4 for the IAB
    #: Audience Taxonomy 1.1) and its node id there: bid requests name it by that node.
    Column("taxonomy_id", Integer, nullable=True),
    Column("taxonomy_node", String(100), nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("last_modified", BigInteger, nullable=False),
    Index("ux_segments_member_code", "member_id", "code_key", unique=True),
)

#: Replace floors (bss.lifecycle.floors): per segment and store region, the seq below which
#: every read hides the segment's entries. Written when a replace job's pairs are all in
#: the region; one row is read by every lookup of that region, so a replace is one step.
segment_floors = Table(
    "segment_floors",
    metadata,
    Column("segment_id", Integer, nullable=False),
    #: The store region's name ("" without store regions).
    Column("region", String(40), nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("segment_id", "region"),
)

#: One row: the highest segment id ever given out or taken explicitly. Automatic ids continue
#: above it, so a deleted segment's id is never handed to a new segment by itself, and an
#: explicit id never meets a later automatic one (one code path for SQLite and PostgreSQL).
segment_id_counter = Table(
    "segment_id_counter",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", Integer, nullable=False),
)

batch_segment_configs = Table(
    "batch_segment_configs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", Integer, nullable=False, unique=True),
    #: The validated BatchSegmentConfig as JSON.
    Column("config_json", Text, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("last_modified", BigInteger, nullable=False),
)
