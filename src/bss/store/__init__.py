"""Membership stores, chosen by a URL-style setting; the embedded DuckDB file is the default."""

from __future__ import annotations

from bss.store.base import APPLY_SCHEMA, Membership, MembershipStore, job_seq_range

__all__ = ["APPLY_SCHEMA", "Membership", "MembershipStore", "job_seq_range", "open_store"]


def open_store(url: str, *, wait_replicas: int | None = None) -> MembershipStore:
    """`duckdb:///path/to/file.duckdb` (the embedded default), `redis://host:port/db` (one
    Redis server) or `redis+cluster://host:port[,host:port...]` (a Redis Cluster).

    `wait_replicas`: replicas a Redis write must reach before it counts as applied (default
    1 on a cluster, 0 on one server)."""
    if url.startswith("duckdb://"):
        from bss.store.embedded import EmbeddedStore

        return EmbeddedStore(url.removeprefix("duckdb://"))
    if url.startswith(("redis://", "rediss://", "redis+cluster://")):
        from bss.store.redis_store import RedisStore

        return RedisStore(url, wait_replicas=wait_replicas)
    raise ValueError(
        f"unsupported membership store URL {url!r}; use duckdb:///path, redis://host:port/db "
        "or redis+cluster://host:port[,host:port...]"
    )
