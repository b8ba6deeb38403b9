"""Reading the bit fields of IAB privacy strings (TCF v2, GPP): web-safe base64 without
padding, most significant bit first."""

from __future__ import annotations

import base64
import re

_WEBSAFE = re.compile(r"[A-Za-z0-9_-]+")
#: Longest segment read, in characters. A TC string carrying a vendor bitfield for vendor id
#: 65535 is about 11,000 characters; anything longer is refused before it is decoded.
MAX_SEGMENT_CHARS = 16_384


class ConsentStringError(ValueError):
    """A privacy string that cannot be read: wrong characters, too short for its fields,
    an unknown version, or values outside what its specification allows."""


class BitReader:
    """The fields of one base64-websafe segment, read in order."""

    __slots__ = ("_end", "_shift", "_value", "pos")

    def __init__(self, segment: str) -> None:
        if len(segment) > MAX_SEGMENT_CHARS or not _WEBSAFE.fullmatch(segment):
            raise ConsentStringError("not a web-safe base64 segment")
        # 'A' is six zero bits: padding to whole base64 quanta only adds bits after the
        # segment's own, and reads past those are refused.
        padded = segment + "A" * (-len(segment) % 4)
        self._value = int.from_bytes(base64.urlsafe_b64decode(padded), "big")
        self._shift = len(padded) * 6
        self._end = len(segment) * 6
        self.pos = 0

    def read(self, width: int) -> int:
        """The next `width` bits as an unsigned integer."""
        end = self.pos + width
        if end > self._end:
            raise ConsentStringError("the string ends inside a field")
        self.pos = end
        return (self._value >> (self._shift - end)) & ((1 << width) - 1)

    def flag(self) -> bool:
        return self.read(1) == 1

    def skip(self, width: int) -> None:
        if self.pos + width > self._end:
            raise ConsentStringError("the string ends inside a field")
        self.pos += width

    def fibonacci(self) -> int:
        """One Fibonacci-coded positive integer (GPP): a bit each for 1, 2, 3, 5, 8, ...,
        ended by the first two 1 bits in a row."""
        total, fib, next_fib, previous = 0, 1, 2, 0
        while True:
            bit = self.read(1)
            if bit and previous:
                return total
            if bit:
                total += fib
            fib, next_fib = next_fib, fib + next_fib
            previous = bit
            if fib > 1 << 32:
                raise ConsentStringError("a Fibonacci-coded number is out of range")
