"""Tables of the targeting domain: each member's OpenRTB answer settings."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Integer, String, Table

from bss.db import metadata

openrtb_member_settings = Table(
    "openrtb_member_settings",
    metadata,
    Column("member_id", Integer, primary_key=True),
    #: user.id of a bid request is the member's own ID of the user (ext=<member>:<user.id>).
    Column("user_id_is_external", Boolean, nullable=False, default=False),
    #: What segment[].id holds: "id" (the segment's id as a string) or "code" (its code,
    #: the id for a segment without one).
    Column("segment_id_field", String(10), nullable=False, default="id"),
    Column("last_modified", BigInteger, nullable=False),
)
