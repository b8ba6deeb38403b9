"""Tables of the lifecycle domain: member erasures, opt-outs and their suppression list."""

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

#: Opt-out requests and withdrawals (POST and DELETE /user-optout, `bss optout add`, the ID
#: sync's /optout cookie): the audit trail, kept. Never the IDs themselves.
optout_requests = Table(
    "optout_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: The member whose scope the request is in; null: platform-wide.
    Column("member_id", Integer, nullable=True),
    #: "optout" or "withdrawal".
    Column("kind", String(12), nullable=False),
    Column("requested_on", BigInteger, nullable=False),
    Column("requested_by", String(200), nullable=True),
    #: The seq the request was given: writes above an opt-out's are not applied while it
    #: stands; a withdrawal's seq is where writes apply again.
    Column("seq", BigInteger, nullable=False),
    Column("ids", Integer, nullable=False),
    Column("memberships_removed", Integer, nullable=False),
    Column("links_removed", Integer, nullable=False),
    Index("ix_optout_requests_member", "member_id", "id"),
)

#: The suppression list: one row per opted-out ID and scope, the ID as a keyed hash (HMAC
#: with the service secret), never in the clear.
optout_suppressions = Table(
    "optout_suppressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: The member id, or 0: platform-wide.
    Column("scope", Integer, nullable=False),
    Column("id_hash", String(64), nullable=False),
    Column("optout_seq", BigInteger, nullable=False),
    #: Set by a withdrawal: writes above this seq apply again.
    Column("withdrawn_seq", BigInteger, nullable=True),
    #: The ID's keyed 24-bit tag (bss.lifecycle.tags, shared by one ID in 16 million): the
    #: prefilter that spares file jobs an HMAC per user. Null: a row kept before tags were.
    Column("id_tag", BigInteger, nullable=True),
    Column("request_id", Integer, nullable=False),
    Index("ix_optout_suppressions_scope_hash", "scope", "id_hash"),
)

#: Secrets the service makes for itself when no setting gives one (the opt-out HMAC key).
service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", String(200), nullable=False),
)
