"""Open an uploaded file: detect gzip by its magic bytes, bound decompression, sniff Avro.

Gzip is the only compression the service accepts; any other compressed container is
refused by its magic bytes with a clear error instead of being parsed as garbage text.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from isal import isal_zlib

GZIP_MAGIC = b"\x1f\x8b"
AVRO_MAGIC = b"Obj\x01"
#: isal's stub declares ``error`` as an Exception instance; at runtime it is the class.
ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
_OTHER_COMPRESSION = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"\x04\x22\x4d\x18": "lz4",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"\xff\x06\x00\x00sNaPpY": "snappy",
}

Kind = Literal["legacy", "avro"]

#: A file with no bytes (after decompression) ends in this error, through the API and the
#: passive drop alike (the passive scanner refuses a 0-byte file with the same code).
EMPTY_FILE = "empty_file"
#: A file that is not Avro and not text: one error instead of a format error per "line".
NOT_A_SEGMENT_FILE = "not_a_segment_file"
#: How much of the start of a legacy file is looked at to tell text from binary data.
SNIFF_BYTES = 64 * 1024
#: Control bytes other than TAB, LF and CR a text file may have in its first SNIFF_BYTES.
MAX_CONTROL_SHARE = 0.10
_CONTROL_BYTES = bytes([*range(0x20), 0x7F]).translate(None, b"\t\n\r")


class InputError(Exception):
    """The file cannot be read at all; the job fails with `error_code`."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class GzipStream(io.RawIOBase):
    """Decompress a (possibly multi-member) gzip stream lazily, refusing to expand past a limit.

    Each inflate call is capped at `step` output bytes, so a gzip bomb costs at most one step
    of memory before the limit stops it.
    """

    def __init__(self, raw: BinaryIO, limit: int, read_size: int = 1 << 20) -> None:
        self._raw = raw
        self._limit = limit
        self._read_size = read_size
        self._step = 4 << 20
        self._inflater = isal_zlib.decompressobj(31)
        self._pending = b""  # compressed bytes read but not yet inflated
        self._buffer = b""
        self._produced = 0
        self._started = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._eof:
            self._fill()
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def _fill(self) -> None:
        data = self._pending or self._raw.read(self._read_size)
        self._pending = b""
        if not data:
            if self._started and not self._inflater.eof:
                raise InputError(
                    "corrupt_gzip", "gzip stream ends before its end marker (truncated)"
                )
            self._eof = True
            return
        if self._inflater.eof:
            # Another gzip member follows (concatenated gzip files are valid gzip).
            if not data.startswith(GZIP_MAGIC[:1]):
                raise InputError(
                    "corrupt_gzip", "bytes after the end of the gzip stream are not gzip"
                )
            self._inflater = isal_zlib.decompressobj(31)
        self._started = True
        room = min(self._limit - self._produced + 1, self._step)
        try:
            out = self._inflater.decompress(data, room)
        except (zlib.error, ISAL_ERROR) as exc:
            raise InputError("corrupt_gzip", f"gzip data is corrupt: {exc}") from exc
        self._pending = self._inflater.unconsumed_tail or (
            self._inflater.unused_data if self._inflater.eof else b""
        )
        self._produced += len(out)
        if self._produced > self._limit:
            raise InputError(
                "decompression_limit_exceeded",
                f"file expands to more than {self._limit} bytes when decompressed",
            )
        self._buffer = out


def _refuse_other_compression(head: bytes) -> None:
    for magic, name in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise InputError(
                "unsupported_compression",
                f"file is {name}-compressed; gzip is the only compression supported",
            )


def _refuse_non_text(sample: bytes) -> None:
    """The rule for "not a segment file": legacy text never holds a NUL byte, and control
    bytes other than TAB, LF and CR are rare in it; a start of file with a NUL, or with more
    than MAX_CONTROL_SHARE of such bytes, is binary data (an image, an archive, ...)."""
    if not sample:
        raise InputError(EMPTY_FILE, "The file is empty (0 bytes)")
    if b"\0" in sample:
        raise InputError(
            NOT_A_SEGMENT_FILE,
            "the file is not a segment file: it holds NUL bytes (legacy text files have none, "
            "Avro files start with Obj\\x01)",
        )
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if controls > MAX_CONTROL_SHARE * len(sample):
        raise InputError(
            NOT_A_SEGMENT_FILE,
            f"the file is not a segment file: {controls} of its first {len(sample)} bytes are "
            "control bytes (text allows only TAB, LF and CR)",
        )


@dataclass(slots=True)
class InputFile:
    """An opened upload: its format, its decompressed bytes, and how far it has been read."""

    kind: Kind
    stream: BinaryIO
    size: int
    #: The bound on decompressed bytes, for the Avro codecs' own decompression too.
    max_decompressed_bytes: int
    _raw: BinaryIO

    def fraction_read(self) -> float:
        """Share of the file on disk consumed so far (compressed bytes for gzip)."""
        return min(1.0, self._raw.tell() / self.size) if self.size else 1.0


@contextmanager
def open_input(path: Path, max_decompressed_bytes: int) -> Iterator[InputFile]:
    size = path.stat().st_size
    with path.open("rb") as raw:
        head = raw.read(16)
        raw.seek(0)
        _refuse_other_compression(head)
        stream: BinaryIO
        if head.startswith(GZIP_MAGIC):
            stream = io.BufferedReader(GzipStream(raw, max_decompressed_bytes), 1 << 20)
            inner_head = stream.peek(16)[:16]
            _refuse_other_compression(inner_head)
            if inner_head.startswith(GZIP_MAGIC):
                raise InputError("unsupported_compression", "file is gzip-compressed twice")
            sample = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        else:
            stream = raw
            inner_head = head
            sample = raw.read(SNIFF_BYTES)
            raw.seek(0)
        kind: Kind = "avro" if inner_head.startswith(AVRO_MAGIC) else "legacy"
        if kind == "legacy":
            _refuse_non_text(sample)
        yield InputFile(kind, stream, size, max_decompressed_bytes, raw)
