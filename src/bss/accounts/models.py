"""Tables of the accounts domain: members, users, tokens, recent logins."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table

from bss.db import metadata

members = Table(
    "members",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, default=""),
    Column("state", String(20), nullable=False, default="active"),
    Column("created_on", BigInteger, nullable=False),
    Column("last_modified", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(200), nullable=False, unique=True),
    Column("password_hash", String(300), nullable=False),
    #: "admin" | "member" | "data_provider"
    Column("user_type", String(20), nullable=False),
    Column("member_id", Integer, ForeignKey("members.id", ondelete="CASCADE"), nullable=True),
    Column("created_on", BigInteger, nullable=False),
    Column("last_modified", BigInteger, nullable=False),
)

#: Only a hash of each token is kept: a leaked database does not leak sessions.
tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_tokens_expires_at", "expires_at"),
)

logins = Table(
    "logins",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("at", BigInteger, nullable=False),
    Index("ix_logins_user_at", "user_id", "at"),
)
