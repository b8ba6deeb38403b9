"""Links in the embedded store: one named database of the LMDB environment.

``links``: scope (8 bytes big-endian) + kind byte + user key + NUL + kind byte + other user's
key -> (seq, asserted_at, expires_at, removed). A link is kept under both of its ends, so one
ID's links in one scope are one key range: `top_links` is a cursor seek and a short walk per
(ID, scope). Every link and tombstone is kept until it expires (no link a read could use is
ever dropped); `purge` reclaims the lapsed ones and `delete_scope` a deleted member's range.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lmdb
import pyarrow as pa

from bss.store.base import LINK_SCHEMA, Link, link_order

_LINK = struct.Struct("<qqqB")
_SCOPE = struct.Struct(">q")
#: Keys walked per read transaction when purging.
_WALK_CHUNK = 20_000


def _end(kind: int, key: str) -> bytes:
    return bytes((kind,)) + key.encode()


def _prefix(scope: int, kind: int, key: str) -> bytes:
    return _SCOPE.pack(scope) + _end(kind, key) + b"\x00"


def link_keys(batch: pa.Table) -> dict[bytes, bytes]:
    """The stored rows of a batch (both ends of every link), each key once with its highest
    seq: {key: value}."""
    batch = batch.select(LINK_SCHEMA.names).cast(LINK_SCHEMA)
    cols = [batch[name].to_pylist() for name in LINK_SCHEMA.names]
    rows: dict[bytes, bytes] = {}
    for scope, a_kind, a_key, b_kind, b_key, asserted, expires, removed, seq in zip(
        *cols, strict=True
    ):
        value = _LINK.pack(seq, asserted, expires, removed)
        scope_bytes = _SCOPE.pack(scope)
        a, b = _end(a_kind, a_key), _end(b_kind, b_key)
        for key in (scope_bytes + a + b"\x00" + b, scope_bytes + b + b"\x00" + a):
            old = rows.get(key)
            if old is None or _LINK.unpack(old)[0] < seq:
                rows[key] = value
    return rows


class LmdbLinks:
    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(b"links")

    def apply(self, batch: pa.Table) -> None:
        rows = link_keys(batch)
        if not rows:
            return
        keys = sorted(rows)
        with self._env.begin(write=True, db=self._db) as txn:
            cursor = txn.cursor()
            stored = dict(cursor.getmulti(keys))
            winners = []
            for key in keys:
                old = stored.get(key)
                value = rows[key]
                if old is None or _LINK.unpack(old)[0] < _LINK.unpack(value)[0]:
                    winners.append((key, value))
            cursor.putmulti(winners)

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        out: list[list[Link]] = []
        with self._env.begin(db=self._db, buffers=False) as txn:
            cursor = txn.cursor()
            for kind, key in users:
                found: list[Link] = []
                for scope in scopes:
                    prefix = _prefix(scope, kind, key)
                    if not cursor.set_range(prefix):
                        continue
                    width = len(prefix)
                    for stored_key, value in cursor:
                        if stored_key[:width] != prefix:
                            break
                        seq, asserted, expires, removed = _LINK.unpack(value)
                        if not removed and asserted <= now < expires:
                            other = stored_key[width:]
                            found.append(
                                Link(other[0], other[1:].decode(), scope, seq, asserted, expires)
                            )
                found.sort(key=link_order)
                out.append(found[:limit])
        return out

    def delete_scope(self, scope: int) -> None:
        prefix = _SCOPE.pack(scope)
        more = True
        while more:
            with self._env.begin(write=True, db=self._db) as txn:
                cursor = txn.cursor()
                more = cursor.set_range(prefix) and cursor.key()[:8] == prefix
                done = 0
                while more and done < _WALK_CHUNK:
                    more = cursor.delete() and cursor.key()[:8] == prefix
                    done += 1

    def purge(self, now: int) -> int:
        """Drop lapsed links and tombstones; how many stored rows went."""
        dropped = 0
        resume: bytes | None = b""
        while resume is not None:
            with self._env.begin(db=self._db) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(resume):
                    break
                items = []
                for item in cursor.iternext():
                    items.append(item)
                    if len(items) > _WALK_CHUNK:
                        break
            resume = items.pop()[0] if len(items) > _WALK_CHUNK else None
            lapsed = [k for k, v in items if _LINK.unpack(v)[2] <= now]
            if lapsed:
                with self._env.begin(write=True, db=self._db) as txn:
                    for key in lapsed:
                        value = txn.get(key)
                        if value is not None and _LINK.unpack(value)[2] <= now:
                            txn.delete(key)
                            dropped += 1
        return dropped
