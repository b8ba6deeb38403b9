"""The Avro object container: header, blocks, sync markers and codecs, each checked.

The framing is read here rather than by a decoder library so that every block is checked
(sync marker, record count, snappy CRC) and every decompression is bounded, whichever
decoder reads the records afterwards: the decompressed blocks are handed on as a
null-codec stream. Any damage to the file is InputError("corrupt_avro").
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import cramjam

from bss.formats.detect import AVRO_MAGIC, InputError

#: Container codecs we can read (the Avro specification's codecs, less zstandard).
SUPPORTED_CODECS = ("null", "deflate", "snappy", "bzip2", "xz")
#: Upper bound on one block, compressed or decompressed: more is taken as corruption (or a
#: decompression bomb). Real writers use blocks of tens of kilobytes to a few megabytes.
DEFAULT_MAX_BLOCK_BYTES = 256 << 20
#: Upper bound on the header (magic, metadata incl. the schema, sync marker).
MAX_HEADER_BYTES = 16 << 20

CORRUPT = "corrupt_avro"

SYNC_SIZE = 16
_READ_SIZE = 1 << 20


class ByteSource:
    """The uploaded byte stream, read in large pieces; counts the bytes consumed."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.offset = 0  # bytes consumed by the parser so far
        self._eof = False

    def _more(self) -> bool:
        if self._eof:
            return False
        try:
            data = self._stream.read(_READ_SIZE)
        except InputError:
            raise
        except OSError as exc:
            raise InputError(CORRUPT, f"cannot read the Avro file: {exc}") from exc
        if not data:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else bytes(data)
        self._pos = 0
        return True

    def at_eof(self) -> bool:
        return self._pos >= len(self._buf) and not self._more()

    def read_exact(self, size: int, what: str) -> bytes:
        """`size` bytes, or InputError if the file ends first. Memory grows only with data read."""
        if self._pos + size <= len(self._buf):
            out = self._buf[self._pos : self._pos + size]
            self._pos += size
            self.offset += size
            return out
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        self._buf, self._pos = b"", 0
        while have < size:
            if not self._more():
                raise InputError(
                    CORRUPT,
                    f"Avro file is truncated: it ends inside {what} "
                    f"(at byte {self.offset + have}, {size - have} more bytes expected)",
                )
            take = min(size - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        self.offset += size
        return b"".join(parts)

    def read_long(self, what: str) -> int:
        """A zig-zag varint long."""
        shift = 0
        accum = 0
        for _ in range(10):
            if self._pos >= len(self._buf) and not self._more():
                raise InputError(
                    CORRUPT,
                    f"Avro file is truncated: it ends inside {what} (at byte {self.offset})",
                )
            byte = self._buf[self._pos]
            self._pos += 1
            self.offset += 1
            accum |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (accum >> 1) ^ -(accum & 1)
            shift += 7
        raise InputError(CORRUPT, f"Avro file is corrupt: {what} is not a valid long")


@dataclass(slots=True)
class Header:
    meta: dict[str, bytes]
    sync: bytes
    schema_json: bytes
    codec: str


def read_header(src: ByteSource) -> Header:
    magic = src.read_exact(len(AVRO_MAGIC), "the file header")
    if magic != AVRO_MAGIC:
        raise InputError(CORRUPT, "not an Avro object container file (bad magic bytes)")
    meta: dict[str, bytes] = {}
    total = 0
    while True:
        count = src.read_long("the header metadata")
        if count == 0:
            break
        if count < 0:
            count = -count
            src.read_long("the header metadata")  # block size in bytes; not needed
        if count > 100_000:
            raise InputError(CORRUPT, "Avro file header is corrupt (metadata entry count)")
        for _ in range(count):
            parts = []
            for what in ("a header metadata key", "a header metadata value"):
                size = src.read_long(what)
                total += max(size, 0)
                if size < 0 or total > MAX_HEADER_BYTES:
                    raise InputError(CORRUPT, f"Avro file header is corrupt ({what} length)")
                parts.append(src.read_exact(size, what))
            try:
                key = parts[0].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(CORRUPT, "Avro file header is corrupt (metadata key)") from exc
            meta[key] = parts[1]
    sync = src.read_exact(SYNC_SIZE, "the header sync marker")
    schema_json = meta.get("avro.schema")
    if schema_json is None:
        raise InputError(CORRUPT, "Avro file header has no avro.schema entry")
    try:
        codec = meta.get("avro.codec", b"null").decode("utf-8") or "null"
    except UnicodeDecodeError as exc:
        raise InputError(CORRUPT, "Avro file header is corrupt (avro.codec)") from exc
    if codec not in SUPPORTED_CODECS:
        raise InputError(
            "unsupported_compression",
            f"Avro file uses the {codec!r} codec; supported codecs are "
            + ", ".join(SUPPORTED_CODECS),
        )
    return Header(meta=meta, sync=sync, schema_json=schema_json, codec=codec)


def encode_long(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_bytes(data: bytes) -> bytes:
    return encode_long(len(data)) + data


def null_codec_header(header: Header) -> bytes:
    entries = {"avro.schema": header.schema_json, "avro.codec": b"null"}
    body = b"".join(_encode_bytes(k.encode()) + _encode_bytes(v) for k, v in entries.items())
    return AVRO_MAGIC + encode_long(len(entries)) + body + encode_long(0) + header.sync


class DecompressionBudget:
    """Decompressed bytes allowed per block and (optionally) for the whole file."""

    def __init__(self, max_block_bytes: int, max_total_bytes: int | None) -> None:
        self.max_block = max_block_bytes
        self.remaining = max_total_bytes

    def limit(self) -> int:
        if self.remaining is None:
            return self.max_block
        return min(self.max_block, self.remaining)

    def check(self, size: int, block_no: int) -> None:
        if size > self.max_block:
            raise InputError(
                "decompression_limit_exceeded",
                f"Avro block {block_no} expands to more than {self.max_block} bytes",
            )
        if self.remaining is not None and size > self.remaining:
            raise InputError(
                "decompression_limit_exceeded",
                "Avro file expands to more than the allowed number of bytes when decompressed",
            )

    def spend(self, size: int, block_no: int) -> None:
        self.check(size, block_no)
        if self.remaining is not None:
            self.remaining -= size


def _decompress(codec: str, data: bytes, budget: DecompressionBudget, block_no: int) -> bytes:
    """One block's data, decompressed; never more than the budget's limit + 1 bytes."""
    limit = budget.limit()
    try:
        if codec == "deflate":
            return zlib.decompressobj(-15).decompress(data, limit + 1)
        if codec == "snappy":
            if len(data) < 4:
                raise InputError(CORRUPT, f"Avro block {block_no}: snappy block has no checksum")
            body, crc = data[:-4], data[-4:]
            size = cramjam.snappy.decompress_raw_len(body)
            budget.check(size, block_no)
            out = bytes(cramjam.snappy.decompress_raw(body))
            if zlib.crc32(out) != int.from_bytes(crc, "big"):
                raise InputError(CORRUPT, f"Avro block {block_no}: snappy checksum mismatch")
            return out
        if codec == "bzip2":
            return bz2.BZ2Decompressor().decompress(data, limit + 1)
        if codec == "xz":
            return lzma.LZMADecompressor().decompress(data, limit + 1)
    except InputError:
        raise
    except (
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        lzma.LZMAError,
        cramjam.DecompressionError,
    ) as exc:
        raise InputError(
            CORRUPT, f"Avro block {block_no} cannot be decompressed ({codec}): {exc}"
        ) from exc
    return data  # null


def iter_blocks(
    src: ByteSource, header: Header, budget: DecompressionBudget
) -> Iterator[tuple[int, bytes]]:
    """(record count, decompressed data) per block, after checking its framing."""
    block_no = 0
    while not src.at_eof():
        block_no += 1
        count = src.read_long(f"the record count of block {block_no}")
        size = src.read_long(f"the size of block {block_no}")
        if count < 0 or size < 0:
            raise InputError(CORRUPT, f"Avro block {block_no} has a negative record count or size")
        if size > budget.max_block:
            raise InputError(
                CORRUPT,
                f"Avro block {block_no} claims {size} bytes, more than the limit of "
                f"{budget.max_block} bytes per block",
            )
        data = src.read_exact(size, f"block {block_no}")
        if src.read_exact(SYNC_SIZE, f"the sync marker after block {block_no}") != header.sync:
            raise InputError(
                CORRUPT, f"Avro file is corrupt: sync marker mismatch after block {block_no}"
            )
        if header.codec != "null":
            data = _decompress(header.codec, data, budget, block_no)
        budget.spend(len(data), block_no)
        # Every record takes at least one byte (its segments array), so a count above the
        # data size can only come from corruption.
        if count > len(data):
            raise InputError(
                CORRUPT, f"Avro block {block_no} claims {count} records in {len(data)} bytes"
            )
        if count:
            yield count, data


class NullCodecStream:
    """What fastavro reads: the header and the checked, decompressed blocks, codec null."""

    def __init__(self, header: bytes, sync: bytes, blocks: Iterator[tuple[int, bytes]]) -> None:
        self._sync = sync
        self._blocks = blocks
        self._pieces: list[bytes] = [header]
        self._cur = b""
        self._pos = 0

    def _next_piece(self) -> bool:
        if not self._pieces:
            block = next(self._blocks, None)
            if block is None:
                return False
            count, data = block
            self._pieces = [encode_long(count) + encode_long(len(data)), data, self._sync]
        self._cur = self._pieces.pop(0)
        self._pos = 0
        return True

    def read(self, size: int = -1) -> bytes:
        cur, pos = self._cur, self._pos
        if size < 0:
            parts = [cur[pos:]]
            while self._next_piece():
                parts.append(self._cur)
            self._cur, self._pos = b"", 0
            return b"".join(parts)
        end = pos + size
        if end <= len(cur):
            self._pos = end
            if pos == 0 and end == len(cur):
                return cur
            return cur[pos:end]
        parts = [cur[pos:]]
        need = size - (len(cur) - pos)
        while need > 0 and self._next_piece():
            take = self._cur[:need] if need < len(self._cur) else self._cur
            parts.append(take)
            self._pos = len(take)
            need -= len(take)
        if need > 0:
            self._cur, self._pos = b"", 0
        return b"".join(parts)
