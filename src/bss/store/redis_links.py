"""Links on Redis: the calls of the `bss_links_v1` library (redis_links.lua, which documents
the layout), built and decoded here for bss.store.redis_store.

A link is kept under each of its ends, in that end's bucket (the bucket of its
memberships). A batch becomes one `bss_apply_links` call per bucket; a `top_links` read of
any number of users is one `bss_read_links` call per bucket, all sent at once (one round
trip per master), so an expansion costs one round trip per hop.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib.resources import files

import pyarrow as pa

from bss.store.base import LINK_SCHEMA, Link, link_order

LIBRARY = files("bss.store").joinpath("redis_links.lua").read_text()
_TAIL = struct.Struct(">QqqB")
_LEN = struct.Struct(">H")


def _record(other: str, seq: int, asserted: int, expires: int, removed: bool) -> bytes:
    raw = other.encode()
    return _LEN.pack(len(raw)) + raw + _TAIL.pack(seq, asserted, expires, removed)


def apply_args(batch: pa.Table, bucket_of: Callable[[int, str], int]) -> dict[int, list[object]]:
    """{bucket: the arguments of its `bss_apply_links` call after the bucket tag}: per
    (scope, end) the records of its links in the batch, each other end once (highest seq)."""
    batch = batch.select(LINK_SCHEMA.names).cast(LINK_SCHEMA)
    cols = [batch[name].to_pylist() for name in LINK_SCHEMA.names]
    # (bucket, scope, end) -> other end -> (seq, record)
    groups: dict[tuple[int, int, str], dict[str, tuple[int, bytes]]] = defaultdict(dict)
    for scope, a_kind, a_key, b_kind, b_key, asserted, expires, removed, seq in zip(
        *cols, strict=True
    ):
        a, b = f"{a_kind}:{a_key}", f"{b_kind}:{b_key}"
        for (kind, key, end), other in (((a_kind, a_key, a), b), ((b_kind, b_key, b), a)):
            links = groups[(bucket_of(kind, key), scope, end)]
            held = links.get(other)
            if held is None or held[0] < seq:
                links[other] = (seq, _record(other, seq, asserted, expires, removed))
    args: dict[int, list[object]] = defaultdict(list)
    count: dict[int, int] = defaultdict(int)
    for (bucket, scope, end), links in groups.items():
        count[bucket] += 1
        args[bucket] += [scope, end, len(links), *(record for _, record in links.values())]
    return {bucket: [count[bucket], *rest] for bucket, rest in args.items()}


def decode(blob: bytes, scope: int, now: int) -> list[Link]:
    """The live links of one user's records in one scope."""
    found = []
    pos, end = 0, len(blob)
    while pos < end:
        (n,) = _LEN.unpack_from(blob, pos)
        other = blob[pos + 2 : pos + 2 + n].decode()
        seq, asserted, expires, removed = _TAIL.unpack_from(blob, pos + 2 + n)
        pos += 2 + n + _TAIL.size
        if not removed and asserted <= now < expires:
            kind, _, key = other.partition(":")
            found.append(Link(int(kind), key, scope, seq, asserted, expires))
    return found


def ranked(blobs: Sequence[bytes], scopes: Sequence[int], now: int, limit: int) -> list[Link]:
    """One user's live links over its records in each scope, ranked, at most `limit`."""
    found = [
        link for blob, scope in zip(blobs, scopes, strict=True) for link in decode(blob, scope, now)
    ]
    found.sort(key=link_order)
    return found[:limit]
