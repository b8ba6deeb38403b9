"""Membership stores, chosen by a URL-style setting; the embedded LMDB environment is the default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from bss.errors import StoreUrlError
from bss.store.base import APPLY_SCHEMA, JOB_SEQ_SPAN, Membership, MembershipStore

__all__ = ["APPLY_SCHEMA", "JOB_SEQ_SPAN", "Membership", "MembershipStore", "open_store"]


def open_store(
    url: str,
    *,
    wait_replicas: int | Literal["attached"] | None = None,
    held_data: Callable[[], bool] | None = None,
) -> MembershipStore:
    """`lmdb:///path/to/dir` (the embedded default: an LMDB environment directory),
    `redis://host:port/db` (one Redis server) or `redis+cluster://host:port[,host:port...]`
    (a Redis Cluster).

    `wait_replicas`: replicas a Redis write must reach before it counts as applied: a
    number, or "attached" (the default: as many as each master has attached now).
    `held_data`: see LmdbStore (asked if its file is gone)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "lmdb":
        from bss.store.keyvalue import LmdbStore

        return LmdbStore(Path(rest), held_data=held_data)
    if sep and scheme in ("redis", "rediss", "redis+cluster"):
        from bss.store.redis_store import RedisStore

        return RedisStore(url, wait_replicas=wait_replicas)
    raise StoreUrlError(
        f"unsupported membership store URL {url!r} (BSS_STORE_URL): use lmdb:///path/to/dir, "
        "redis://host:port/db or redis+cluster://host:port[,host:port...]"
    )
