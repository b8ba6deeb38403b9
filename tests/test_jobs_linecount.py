"""Line counting while an upload streams: plain, gzip (multi-member), Avro, any chunking."""

from __future__ import annotations

import gzip
import random

from hypothesis import given
from hypothesis import strategies as st

from bss.jobs.linecount import LineCounter


def count(data: bytes, step: int) -> int:
    counter = LineCounter()
    for i in range(0, len(data), step):
        counter.feed(data[i : i + step])
    return counter.finish()


@given(
    lines=st.lists(st.text(alphabet="0123456789,;:", max_size=30), max_size=40),
    trailing=st.booleans(),
    step=st.integers(min_value=1, max_value=64),
)
def test_plain_and_gzip_count_the_same_lines(lines, trailing, step):
    text = "\n".join(lines) + ("\n" if trailing and lines else "")
    data = text.encode()
    expected = len(text.splitlines())
    assert count(data, step) == expected
    assert count(gzip.compress(data), step) == expected


def test_gzip_members_and_compressed_newline_bytes():
    rng = random.Random(7)
    noisy = "".join(rng.choice("abcdefghij,;:0123456789") for _ in range(200_000)).encode()
    data = gzip.compress(noisy + b"\n") + gzip.compress(b"a\nb\n")
    assert data.count(b"\n") > 3  # the compressed bytes are full of newline bytes ...
    assert count(data, 4096) == 3  # ... but only decompressed lines count


def test_avro_is_not_counted_while_streaming():
    assert count(b"Obj\x01" + b"\n" * 100, 10) == 0
    assert count(gzip.compress(b"Obj\x01" + b"\n" * 100), 10) == 0


def test_corrupt_gzip_stops_counting():
    assert count(b"\x1f\x8b" + b"\x00\n" * 50, 8) >= 0
