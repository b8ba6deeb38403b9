"""Count an upload's lines while it streams, for the per-member line limits.

Plain text: newlines. Gzip: newlines of the decompressed text (decompressed piecewise and
thrown away; multi-member files too). Avro (plain or gzipped) has records, not lines:
nothing is counted while streaming; the worker records the real count afterwards
(IngestResult.lines_read). A corrupt gzip stream stops the counting; the engine reports it.
"""

from __future__ import annotations

from typing import cast

from isal import isal_zlib

GZIP_MAGIC = b"\x1f\x8b"
AVRO_MAGIC = b"Obj\x01"
#: Most decompressed bytes produced per step: a gzip bomb cannot balloon memory here.
STEP = 4 << 20
#: isal's stub declares ``error`` as an Exception instance; at runtime it is the class.
ISAL_ERROR = cast("type[Exception]", isal_zlib.error)


class LineCounter:
    def __init__(self) -> None:
        self.lines = 0
        self._head = b""
        self._kind: str | None = None  # "plain" | "gzip" | "avro" | "broken"
        self._inflate: isal_zlib.Decompress | None = None
        self._text_head = b""
        self._last = b"\n"

    def feed(self, chunk: bytes) -> int:
        """Take the next raw chunk; returns the line count so far (complete lines)."""
        if self._kind is None:
            self._head += chunk
            if len(self._head) < 4 and not self._head.startswith(GZIP_MAGIC):
                return self.lines
            chunk, self._head = self._head, b""
            if chunk.startswith(GZIP_MAGIC):
                self._kind = "gzip"
                self._inflate = isal_zlib.decompressobj(wbits=31)
            elif chunk.startswith(AVRO_MAGIC):
                self._kind = "avro"
            else:
                self._kind = "plain"
        if self._kind == "plain":
            self._text(chunk)
        elif self._kind == "gzip":
            self._gunzip(chunk)
        return self.lines

    def _text(self, data: bytes) -> None:
        if not data:
            return
        if len(self._text_head) < 4:  # gzipped Avro: records, not lines
            self._text_head += data[:4]
            if self._text_head.startswith(AVRO_MAGIC):
                self._kind = "avro"
                self.lines = 0
                return
        self.lines += data.count(b"\n")
        self._last = data[-1:]

    def _gunzip(self, data: bytes) -> None:
        inflate = self._inflate
        assert inflate is not None  # feed() creates it when it settles on "gzip"
        try:
            while data and self._kind == "gzip":
                out = inflate.decompress(data, STEP)
                self._text(out)
                if inflate.eof:  # next gzip member, if any
                    data = inflate.unused_data
                    inflate = self._inflate = isal_zlib.decompressobj(wbits=31)
                    if data and not data.startswith(GZIP_MAGIC[:1]):
                        return  # trailing garbage: the engine will judge the file
                else:
                    data = inflate.unconsumed_tail
        except ISAL_ERROR:
            self._kind = "broken"

    def finish(self) -> int:
        """The total: a last line without a newline counts too."""
        if self._kind is None and self._head:
            self._kind = "plain"
            self._text(self._head)
        if self._kind in ("plain", "gzip") and self._last != b"\n":
            self.lines += 1
        return self.lines
