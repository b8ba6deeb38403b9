"""The webhook delivery log, which is also the outbox deliveries are sent from."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from bss.db import metadata

#: pending -> delivered | failed. Only the oldest pending delivery of a member is ever sent
#: (one in flight per member, in order); a sender holds it by a lease (claimed_until).
DELIVERY_STATES = ("pending", "delivered", "failed")

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: The X-BSS-Delivery header: the same on every attempt, so receivers can deduplicate.
    Column("delivery_id", String(36), nullable=False, unique=True),
    Column("member_id", Integer, nullable=False),
    Column("job_id", String(40), nullable=True),
    Column("event", String(40), nullable=False),
    #: The exact bytes POSTed (signed on every attempt with a fresh timestamp).
    Column("body", Text, nullable=False),
    Column("state", String(10), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_on", BigInteger, nullable=False),
    Column("first_attempt_on", BigInteger, nullable=True),
    Column("last_attempt_on", BigInteger, nullable=True),
    #: Milliseconds (retry delays may be short), unlike the other times (whole seconds).
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("finished_on", BigInteger, nullable=True),
    #: The URL of the last attempt, the receiver's HTTP status, or why it failed.
    Column("url", Text, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("claimed_by", String(80), nullable=True),
    Column("claimed_until", BigInteger, nullable=True),
    Index("ix_webhook_deliveries_member_state", "member_id", "state", "id"),
    Index("ix_webhook_deliveries_state_next", "state", "next_attempt_ms"),
)
