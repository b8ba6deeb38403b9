"""Input detection: gzip by magic bytes, other compression refused, bounded decompression."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bss.formats.detect import InputError, open_input

TEXT = b"".join(b"%d,%d:1440\n" % (i + 1, i % 7 + 1) for i in range(50_000))


def read_all(path: Path, limit: int = 10**9) -> tuple[str, bytes]:
    with open_input(path, limit) as src:
        return src.kind, src.stream.read()


def test_plain_gzip_and_concatenated_gzip(tmp_path: Path) -> None:
    plain = tmp_path / "a.txt"
    plain.write_bytes(TEXT)
    assert read_all(plain) == ("legacy", TEXT)
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:]))
    assert read_all(gz) == ("legacy", TEXT)


def test_avro_is_sniffed_inside_gzip(tmp_path: Path) -> None:
    p = tmp_path / "a.avro.gz"
    p.write_bytes(gzip.compress(b"Obj\x01rest"))
    assert read_all(p)[0] == "avro"


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (bz2.compress(TEXT), "bzip2"),
        (lzma.compress(TEXT), "xz"),
        (b"PK\x03\x04" + TEXT, "zip"),
        (b"\x28\xb5\x2f\xfd" + TEXT, "zstd"),
        (gzip.compress(gzip.compress(TEXT)), "twice"),
        (gzip.compress(bz2.compress(TEXT)), "bzip2"),
    ],
)
def test_other_compression_is_refused(tmp_path: Path, payload: bytes, name: str) -> None:
    p = tmp_path / "f"
    p.write_bytes(payload)
    with pytest.raises(InputError, match=name) as info:
        read_all(p)
    assert info.value.error_code == "unsupported_compression"


def test_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "bomb.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with p.open("wb") as out:
        # text, not zeros: a file of NULs is refused at its first bytes as not a segment file
        block = b"1" * (1 << 20)
        for _ in range(200):  # 200 MB of ones, ~200 KB compressed
            out.write(comp.compress(block))
        out.write(comp.flush())
    with pytest.raises(InputError) as info:
        read_all(p, limit=20 << 20)
    assert info.value.error_code == "decompression_limit_exceeded"


def test_truncated_gzip_fails_cleanly(tmp_path: Path) -> None:
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(TEXT)[:-100])
    with pytest.raises(InputError) as info:
        read_all(p)
    assert info.value.error_code == "corrupt_gzip"


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_damaged_gzip_never_raises_anything_else(tmp_path_factory, data) -> None:
    blob = bytearray(gzip.compress(TEXT[:5000]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(10, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    p = tmp_path_factory.mktemp("g") / "d.gz"
    p.write_bytes(bytes(blob))
    try:
        kind, out = read_all(p)
    except InputError as exc:
        assert exc.error_code == "corrupt_gzip"
    else:
        assert kind == "legacy" and isinstance(out, bytes)
