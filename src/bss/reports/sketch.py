"""Unique users per segment and day: exact while small, a HyperLogLog sketch beyond.

A sketch holds the sorted distinct 64-bit hashes of its users up to EXACT_LIMIT (exact: the
count is the number of distinct users, barring a 64-bit hash collision), and switches to
HyperLogLog registers (2**15 of them, standard error 0.57%) when it grows past that. The
count of registers is estimated with Ertl's improved estimator ("New cardinality estimation
algorithms for HyperLogLog sketches", 2017; the one Redis uses), which needs no empirical
bias tables and stays unbiased from a few users to billions. Two sketches merge by union
(exact) or by register-wise maximum, so monthly uniques are the merge of daily sketches.

User hashes must be stable across processes and versions (sketches are stored and merged
later), so they are computed here, not by a library's unspecified hash: platform user IDs
by their integer value, other identifiers by FNV-1a over "<kind>:<key>", each followed by
the splitmix64 finalizer.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import polars as pl
import pyarrow as pa

from bss.formats.records import UserKind

PRECISION = 15
REGISTERS = 1 << PRECISION
#: Bits of the hash left after the register index; register values are 0..Q + 1.
Q = 64 - PRECISION
#: Up to this many distinct users a sketch is an exact set.
EXACT_LIMIT = 4096

_EXACT_TAG, _HLL_TAG = b"E", b"H"
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_LOW_BITS = np.uint64((1 << Q) - 1)


def _splitmix(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _fnv1a(texts: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string, vectorized over the Arrow buffers (one pass per byte
    position, not per string)."""
    texts = texts.cast(pa.large_string())
    n = len(texts)
    hashes = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return hashes
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + n + 1]
    data_buffer = texts.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0)
    starts, lengths = offsets[:-1], np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: the live rows are a prefix
    starts, lengths = starts[order], lengths[order]
    out = hashes.copy()
    for j in range(int(lengths[0]) if n else 0):
        live = int(np.searchsorted(-lengths, -j, side="left"))  # rows longer than j
        rows = slice(0, live)
        out[rows] = (out[rows] ^ data[starts[rows] + j].astype(np.uint64)) * _FNV_PRIME
    hashes[order] = out
    return hashes


def user_hashes(kinds: pl.Series, keys: pl.Series) -> np.ndarray:
    """Stable 64-bit hashes of users given as (user_kind, user_key) columns."""
    kinds_np = kinds.cast(pl.UInt8).to_numpy()
    anid = kinds_np == int(UserKind.ANID)
    if anid.all():  # the common case: no masks
        return _splitmix(keys.cast(pl.UInt64, strict=False).fill_null(0).to_numpy())
    hashes = np.empty(len(kinds_np), dtype=np.uint64)
    if anid.any():
        values = keys.filter(pl.Series(anid)).cast(pl.UInt64, strict=False).fill_null(0)
        hashes[anid] = _splitmix(values.to_numpy())
    other = ~anid
    if other.any():
        mask = pl.Series(other)
        tagged = pl.DataFrame(
            {"kind": kinds.filter(mask).cast(pl.String), "key": keys.filter(mask)}
        ).select(pl.concat_str("kind", "key", separator=":"))
        hashes[other] = _splitmix(_fnv1a(tagged.to_series().to_arrow()))
    return hashes


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_before = z
        z += x * y
        y += y
        if z == z_before:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_before = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_before:
            return z / 3.0


class UniqueSketch:
    """Distinct users: an exact set of hashes while small, HyperLogLog registers beyond."""

    __slots__ = ("exact", "registers")

    def __init__(self) -> None:
        self.exact: np.ndarray | None = np.zeros(0, dtype=np.uint64)
        self.registers: np.ndarray | None = None

    def add(self, hashes: np.ndarray) -> None:
        if self.exact is not None:
            if len(self.exact) + len(hashes) > 4 * EXACT_LIMIT:
                self._to_registers()  # surely past the limit: skip sorting the union
            else:
                self.exact = np.union1d(self.exact, hashes.astype(np.uint64))
                if len(self.exact) > EXACT_LIMIT:
                    self._to_registers()
                return
        self._raise(hashes)

    def merge(self, other: UniqueSketch) -> None:
        if other.exact is not None:
            self.add(other.exact)
            return
        if self.exact is not None:
            self._to_registers()
        assert self.registers is not None and other.registers is not None
        np.maximum(self.registers, other.registers, out=self.registers)

    def count(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        assert self.registers is not None
        counts = np.bincount(self.registers, minlength=Q + 2).astype(np.float64)
        m = float(REGISTERS)
        z = m * _tau(1.0 - counts[Q + 1] / m)
        for k in range(Q, 0, -1):
            z = 0.5 * (z + counts[k])
        z += m * _sigma(counts[0] / m)
        return round(m * m / (2.0 * math.log(2.0)) / z)

    def _to_registers(self) -> None:
        assert self.exact is not None
        self.registers = np.zeros(REGISTERS, dtype=np.uint8)
        hashes, self.exact = self.exact, None
        self._raise(hashes)

    def _raise(self, hashes: np.ndarray) -> None:
        assert self.registers is not None
        hashes = hashes.astype(np.uint64)
        index = (hashes >> np.uint64(Q)).astype(np.intp)
        rest = (hashes & _LOW_BITS).astype(np.float64)  # < 2**49: exact in a double
        # rank = position of the first 1 bit in the Q remaining bits: Q + 1 - bit_length
        rank = (Q + 1 - np.frexp(rest)[1]).astype(np.uint8)
        np.maximum.at(self.registers, index, rank)

    def to_bytes(self) -> bytes:
        if self.exact is not None:
            return _EXACT_TAG + zlib.compress(self.exact.astype("<u8").tobytes(), 1)
        assert self.registers is not None
        return _HLL_TAG + zlib.compress(self.registers.tobytes(), 1)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> UniqueSketch:
        sketch = cls()
        if not data:
            return sketch
        payload = zlib.decompress(data[1:])
        if data[:1] == _EXACT_TAG:
            sketch.exact = np.frombuffer(payload, dtype="<u8").astype(np.uint64)
        else:
            sketch.exact = None
            sketch.registers = np.frombuffer(payload, dtype=np.uint8).copy()
        return sketch
