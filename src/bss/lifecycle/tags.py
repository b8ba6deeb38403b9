"""Keyed tags of user IDs, computed for a whole batch at once: the suppression list's
prefilter (bss.lifecycle.optout).

A file job checks every pair against the suppression list; an HMAC per user costs more than
the rest of the ingest can spare. Each suppressed ID is kept with a tag as well as its HMAC:
the top TAG_BITS bits of a mix of the ID's kind, its length and its first and last 8 bytes
under two keys derived from the service secret, computed in numpy over the batch's Arrow
buffers. One ID in 2**TAG_BITS shares each tag, so a kept tag tells next to nothing about
the ID. A batch's tags are looked up in a bitmap of the kept ones; only the IDs whose tag is
there (the suppressed ones, and about one in 170 others per 100,000 kept) get the HMAC that
decides. An ID never escapes the check: equal IDs have equal tags.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

#: Bits of a kept tag: the index of its bitmap entry (16 MiB of booleans).
TAG_BITS = 24
_SHIFT = np.uint64(64 - TAG_BITS)
_LANE = np.arange(8, dtype=np.int64)


def tag_keys(secret: bytes) -> tuple[np.uint64, np.uint64]:
    """(odd multiplier, seed) of the tags, derived from the service secret."""
    derived = hmac.digest(secret, b"bss optout tags", "sha256")
    return (
        np.uint64(int.from_bytes(derived[:8], "little") | 1),
        np.uint64(int.from_bytes(derived[8:16], "little")),
    )


#: Little-endian masks keeping the first 0..8 bytes of a uint64.
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def id_tags(
    keys: tuple[np.uint64, np.uint64], user_kind: np.ndarray, user_key: Sequence[str] | pa.Array
) -> np.ndarray:
    """The tag of each (kind, key), 0 to 2**TAG_BITS - 1."""
    array = user_key if isinstance(user_key, pa.Array) else pa.array(user_key, pa.string())
    if array.type != pa.string():
        array = array.cast(pa.string())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1]
    buffer = array.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    # Every 8-byte window of the data (8 zero bytes either side), read as one uint64 per ID.
    padded = np.concatenate([np.zeros(8, np.uint8), data, np.zeros(8, np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)
    start, end = offsets[:-1].astype(np.int64) + 8, offsets[1:].astype(np.int64) + 8
    length = end - start
    first = np.ascontiguousarray(windows[start]).view(np.uint64)[:, 0]
    first &= _MASKS[np.minimum(length, 8)]
    last = np.ascontiguousarray(windows[end - 8]).view(np.uint64)[:, 0]
    last[length < 8] = 0  # all of it is in `first`
    multiplier, seed = keys
    parts = (first, last, length.astype(np.uint64), _kinds(user_kind))
    tag = np.full(n, seed, dtype=np.uint64)
    for part in parts:
        tag = (tag ^ part) * multiplier
        tag ^= tag >> np.uint64(29)
    return tag >> _SHIFT


def _kinds(user_kind: np.ndarray) -> np.ndarray:
    kinds = np.asarray(user_kind)
    if kinds.dtype.kind == "f":  # a column with nulls (pairs of invalid lines): those are 0
        kinds = np.nan_to_num(kinds)
    return kinds.astype(np.uint64)


class TagSet:
    """Kept tags, as a bitmap: one gather a tag looked up."""

    def __init__(self, tags: np.ndarray) -> None:
        self.bitmap = np.zeros(1 << TAG_BITS, dtype=bool)
        self.bitmap[tags.astype(np.int64)] = True

    def matches(self, tags: np.ndarray) -> np.ndarray:
        """Indexes of the tags that are kept."""
        return np.flatnonzero(self.bitmap[tags])
