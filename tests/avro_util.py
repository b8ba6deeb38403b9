"""Helpers to write BSS Avro files in tests: with fastavro and with the Apache `avro` package."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import fastavro

from bss.formats.avro import published_schema

NAMESPACE = "xandr.avro"


def schema() -> dict[str, Any]:
    """The published schema (a fresh copy)."""
    return published_schema()


def segment(
    id: int = 0,
    code: str = "",
    member_id: int = 0,
    expiration: int = 0,
    timestamp: int = 0,
    value: int = 0,
) -> dict[str, Any]:
    """A segment element with the published schema's fields (defaults as in the schema)."""
    return {
        "id": id,
        "code": code,
        "member_id": member_id,
        "expiration": expiration,
        "timestamp": timestamp,
        "value": value,
    }


def user(branch: str, value: Any, segments: list[dict[str, Any]]) -> dict[str, Any]:
    """A record for fastavro: `uid` as (branch record name, value), anid as a plain long."""
    uid = value if branch == "anid" else (f"{NAMESPACE}.{branch}", value)
    return {"uid": uid, "segments": segments}


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """The same record with `uid` as a plain value (how the Apache avro package takes it)."""
    uid = record["uid"]
    return {**record, "uid": uid[1] if isinstance(uid, tuple) else uid}


def write_fastavro(
    records: Iterable[dict[str, Any]],
    codec: str = "null",
    writer_schema: dict[str, Any] | None = None,
    sync_interval: int = 16000,
) -> bytes:
    buf = io.BytesIO()
    parsed = fastavro.parse_schema(writer_schema or schema())
    fastavro.writer(buf, parsed, records, codec=codec, sync_interval=sync_interval)
    return buf.getvalue()


def _register_apache_snappy() -> None:
    """The Apache package needs python-snappy for its snappy codec; it is not installed here,
    so register the same codec (raw snappy + big-endian CRC32 of the data) over cramjam."""
    import binascii
    import struct

    import avro.codecs
    import avro.io
    import cramjam

    if "snappy" in avro.codecs.KNOWN_CODECS:
        return

    class SnappyCodec(avro.codecs.Codec):
        @staticmethod
        def compress(data: bytes) -> tuple[bytes, int]:
            out = bytes(cramjam.snappy.compress_raw(data))
            out += struct.pack(">I", binascii.crc32(data) & 0xFFFFFFFF)
            return out, len(out)

        @staticmethod
        def decompress(readers_decoder: avro.io.BinaryDecoder) -> avro.io.BinaryDecoder:
            length = readers_decoder.read_long()
            data = bytes(cramjam.snappy.decompress_raw(readers_decoder.read(length - 4)))
            readers_decoder.read(4)
            return avro.io.BinaryDecoder(io.BytesIO(data))

    avro.codecs.KNOWN_CODECS["snappy"] = SnappyCodec


def write_apache(
    records: Iterable[dict[str, Any]],
    codec: str = "null",
    writer_schema: dict[str, Any] | None = None,
) -> bytes:
    """Write with the Apache `avro` package's DataFileWriter (records with plain uid values)."""
    import avro.datafile
    import avro.io
    import avro.schema

    if codec == "snappy":
        _register_apache_snappy()
    parsed = avro.schema.parse(json.dumps(writer_schema or schema()))
    buf = io.BytesIO()
    writer = avro.datafile.DataFileWriter(buf, avro.io.DatumWriter(), parsed, codec=codec)
    for record in records:
        writer.append(plain(record))
    writer.flush()
    data = buf.getvalue()
    writer.close()
    return data
