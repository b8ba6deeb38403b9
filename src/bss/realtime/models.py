"""Idempotency keys of real-time posts: a retried post is answered again, not applied again."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text

from bss.db import metadata

rt_idempotency_keys = Table(
    "rt_idempotency_keys",
    metadata,
    Column("member_id", Integer, primary_key=True),
    Column("idempotency_key", String(200), primary_key=True),
    Column("created_on", BigInteger, nullable=False),
    #: The answer given; null while the post is being applied.
    Column("response_json", Text, nullable=True),
)
