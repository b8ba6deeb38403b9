"""Membership stores, chosen by a URL-style setting; the embedded DuckDB file is the default."""

from __future__ import annotations

from bss.store.base import APPLY_SCHEMA, Membership, MembershipStore, job_seq_range

__all__ = ["APPLY_SCHEMA", "Membership", "MembershipStore", "job_seq_range", "open_store"]


def open_store(url: str) -> MembershipStore:
    """`duckdb:///path/to/file.duckdb` (the embedded default)."""
    if url.startswith("duckdb://"):
        from bss.store.embedded import EmbeddedStore

        return EmbeddedStore(url.removeprefix("duckdb://"))
    raise ValueError(f"unsupported membership store URL {url!r}; use duckdb:///path")
