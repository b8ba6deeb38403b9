"""The identity graph's table: per member, whether the ID sync may link its IDs (mapUID)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Integer, String, Table

from bss.db import metadata

id_sync_members = Table(
    "id_sync_members",
    metadata,
    Column("member_id", Integer, primary_key=True),
    #: GET /mapuid links this member's IDs (an entitlement an admin grants).
    Column("enabled", Boolean, nullable=False),
    #: When set, /mapuid needs `sig`: HMAC-SHA256 of "<member>:<user>" with it, hex.
    Column("secret", String(200), nullable=True),
    Column("last_modified", BigInteger, nullable=False),
)
