"""The Avro reader: an Avro object container file -> ParsedChunk records.

One Avro record is one "line": a user (`uid`, a union of ID types) and its `segments`.
Members may register their own schema, so the writer schema in the file header is what we
read with; it must have a `uid` field and a `segments` array of records, and the `uid`
branches are recognised by their record NAME (`ifa`, `xfa`, `external_id`, `device_id`,
`eid`) or, for `anid`, by being a long (the published schema writes anid as a plain long).

The container framing (header, blocks, sync markers, codecs) is read here rather than by
fastavro, so that every block is checked (sync marker, record count, snappy CRC) and every
decompression is bounded; the decompressed blocks are handed to fastavro as a null-codec
stream and fastavro only decodes records. Any damage to the file is reported as
InputError("corrupt_avro"), never as another exception.
"""

from __future__ import annotations

import bz2
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, BinaryIO

import cramjam
import fastavro
import polars as pl

from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import AVRO_MAGIC, InputError
from bss.formats.records import (
    DEVICE_DOMAINS,
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    MAX_UID,
    MAX_VALUE,
    MIN_VALUE,
    PAIR_SCHEMA,
    ParsedChunk,
    UserKind,
)

__all__ = [
    "DEFAULT_MAX_BLOCK_BYTES",
    "PUBLISHED_SCHEMA_FILE",
    "SUPPORTED_CODECS",
    "UID_BRANCHES",
    "iter_avro_chunks",
    "published_schema",
]

#: Name of the published schema file, shipped in the `bss.formats.schema` package data.
PUBLISHED_SCHEMA_FILE = "xandr_user.avsc"
#: The `uid` branches we recognise, by (short) name.
UID_BRANCHES = ("anid", "ifa", "xfa", "external_id", "device_id", "eid")
#: Container codecs we can read (the Avro specification's codecs, less zstandard).
SUPPORTED_CODECS = ("null", "deflate", "snappy", "bzip2", "xz")
#: Upper bound on one block, compressed or decompressed: more is taken as corruption (or a
#: decompression bomb). Real writers use blocks of tens of kilobytes to a few megabytes.
DEFAULT_MAX_BLOCK_BYTES = 256 << 20
#: A chunk ends before `records_per_chunk` records once it holds this many segment pairs
#: or this much record JSON (records with up to 1800 segments would otherwise make a chunk
#: of 100,000 records take gigabytes).
MAX_PAIRS_PER_CHUNK = 500_000
MAX_RAW_CHARS_PER_CHUNK = 64 << 20
#: Upper bound on the header (magic, metadata incl. the schema, sync marker).
MAX_HEADER_BYTES = 16 << 20

CORRUPT = "corrupt_avro"
SCHEMA_INVALID = "avro_schema_invalid"

_SYNC_SIZE = 16
_READ_SIZE = 1 << 20

ERR_NO_UID_TYPE = "uid has no recognised ID type"
ERR_NO_SEGMENTS = "no segments"
ERR_TOO_MANY_SEGMENTS = f"more than {MAX_SEGMENTS_PER_LINE} segments"
ERR_NO_ID_NOR_CODE = "segment has neither id nor code"
ERR_SEGMENT_NOT_RECORD = "segment is not a record"
ERR_SEGMENT_ID_NOT_INT = "segment id is not an integer"

_KIND_ANID = int(UserKind.ANID)
_KIND_IFA = int(UserKind.IFA)
_KIND_XFA = int(UserKind.XFA)
_KIND_EXTERNAL = int(UserKind.EXTERNAL)
_KIND_DEVICE = int(UserKind.DEVICE)
_KIND_EID = int(UserKind.EID)


def _json_encoder() -> Any:
    """Compact JSON with default=str: json.dumps's C encoder, without its per-call set-up."""
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(separators=(",", ":"), default=str).encode
    encode = c_make_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    join = "".join

    def to_json(obj: Any) -> str:
        return join(encode(obj, 0))

    return to_json


_to_json = _json_encoder()


@lru_cache(maxsize=1)
def _published_schema_text() -> str:
    return (resources.files("bss.formats.schema") / PUBLISHED_SCHEMA_FILE).read_text("utf-8")


def published_schema() -> dict[str, Any]:
    """The published BSS Avro schema (namespace xandr.avro, record user), as a fresh dict."""
    return json.loads(_published_schema_text())


# --------------------------------------------------------------------------------------
# Container framing
# --------------------------------------------------------------------------------------


class _Source:
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
class _Header:
    meta: dict[str, bytes]
    sync: bytes
    schema_json: bytes
    codec: str


def _read_header(src: _Source) -> _Header:
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
    sync = src.read_exact(_SYNC_SIZE, "the header sync marker")
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
    return _Header(meta=meta, sync=sync, schema_json=schema_json, codec=codec)


def _encode_long(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_bytes(data: bytes) -> bytes:
    return _encode_long(len(data)) + data


def _null_codec_header(header: _Header) -> bytes:
    entries = {"avro.schema": header.schema_json, "avro.codec": b"null"}
    body = b"".join(_encode_bytes(k.encode()) + _encode_bytes(v) for k, v in entries.items())
    return AVRO_MAGIC + _encode_long(len(entries)) + body + _encode_long(0) + header.sync


class _Budget:
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


def _decompress(codec: str, data: bytes, budget: _Budget, block_no: int) -> bytes:
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


def _iter_blocks(src: _Source, header: _Header, budget: _Budget) -> Iterator[tuple[int, bytes]]:
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
        if src.read_exact(_SYNC_SIZE, f"the sync marker after block {block_no}") != header.sync:
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


class _NullCodecStream:
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
            self._pieces = [_encode_long(count) + _encode_long(len(data)), data, self._sync]
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


# --------------------------------------------------------------------------------------
# Writer schema
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """How to interpret records of one writer schema."""

    uid_is_union: bool
    #: Avro type name of the integer branch ("long" or "int"), if the uid has one.
    int_branch: str | None = None
    #: Full record name -> branch short name, for the recognised record branches.
    record_branches: dict[str, str] = field(default_factory=dict)
    #: When the uid is not a union: its branch short name (None if unrecognised).
    single_branch: str | None = None
    #: Segment fields have the plain types polars can take as they are (vectorized rules).
    fast_segments: bool = False


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """Follow named-type references and {"type": <nested type>} wrappers."""
    for _ in range(100):
        if isinstance(schema, str) and schema in named:
            schema = named[schema]
            continue
        if isinstance(schema, dict):
            inner = schema.get("type")
            if isinstance(inner, (dict, list)) or (isinstance(inner, str) and inner in named):
                schema = inner
                continue
        break
    return schema


def _type_name(schema: Any) -> str | None:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind if isinstance(kind, str) else None
    return None


def _branch_of(schema: Any) -> tuple[str | None, str | None]:
    """(branch short name, full record name) for one uid branch schema."""
    kind = _type_name(schema)
    if kind in ("long", "int") and not (isinstance(schema, dict) and "logicalType" in schema):
        return "anid", None
    if kind == "record" and isinstance(schema, dict):
        full = str(schema.get("name", ""))
        short = _short(full)
        if short in UID_BRANCHES and short != "anid":
            return short, full
    return None, None


def _plan(schema_json: bytes) -> _Plan:
    """Check the writer schema and work out how to read its records."""
    try:
        return _plan_schema(schema_json)
    except InputError:
        raise
    except Exception as exc:  # a schema shape fastavro accepts but nobody expects
        raise InputError(SCHEMA_INVALID, f"writer schema cannot be used: {exc!r}") from exc


def _plan_schema(schema_json: bytes) -> _Plan:
    try:
        schema = json.loads(schema_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            CORRUPT, f"Avro file header is corrupt: schema is not JSON ({exc})"
        ) from exc
    named: dict[str, Any] = {}
    try:
        parsed = fastavro.parse_schema(schema, named, _write_hint=False, _force=True)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise InputError(
            SCHEMA_INVALID, f"writer schema is not a valid Avro schema: {exc}"
        ) from exc
    top = _resolve(parsed, named)
    if _type_name(top) != "record" or not isinstance(top, dict):
        raise InputError(SCHEMA_INVALID, "writer schema must be a record with uid and segments")
    fields = {f.get("name"): f.get("type") for f in top.get("fields", []) if isinstance(f, dict)}
    missing = [name for name in ("uid", "segments") if name not in fields]
    if missing:
        raise InputError(
            SCHEMA_INVALID,
            "writer schema has no "
            + " and no ".join(f"`{m}` field" for m in missing)
            + f" (its fields: {', '.join(str(f) for f in fields) or 'none'})",
        )

    uid = _resolve(fields["uid"], named)
    if isinstance(uid, list):
        plan = _Plan(uid_is_union=True)
        for branch in uid:
            branch = _resolve(branch, named)
            short, full = _branch_of(branch)
            if short == "anid":
                name = _type_name(branch)
                if plan.int_branch is None or name == "long":
                    plan.int_branch = name
            elif short is not None and full is not None:
                plan.record_branches[full] = short
        recognised = plan.int_branch is not None or bool(plan.record_branches)
    else:
        short, _full = _branch_of(uid)
        plan = _Plan(uid_is_union=False, single_branch=short)
        recognised = short is not None
    if not recognised:
        raise InputError(
            SCHEMA_INVALID,
            "writer schema's `uid` has no recognised ID type: it must be a long (anid) or a "
            "union including anid (long) or records named " + ", ".join(UID_BRANCHES[1:]),
        )

    segments = _resolve(fields["segments"], named)
    items = _resolve(segments.get("items"), named) if _type_name(segments) == "array" else None
    items_union = isinstance(items, list)
    if isinstance(items, list):  # a union of item types: it must hold the segment record
        records = [_resolve(b, named) for b in items]
        items = next((b for b in records if _type_name(b) == "record"), None)
    if _type_name(items) != "record" or not isinstance(items, dict):
        raise InputError(SCHEMA_INVALID, "writer schema's `segments` must be an array of records")
    seg_fields: dict[str, Any] = {
        str(f.get("name")): f.get("type") for f in items.get("fields", []) if isinstance(f, dict)
    }
    if not seg_fields.keys() & {"id", "code"}:
        raise InputError(
            SCHEMA_INVALID, "writer schema's segment record has neither an `id` nor a `code` field"
        )
    # Union items come as (name, record) tuples: those take the per-segment path.
    plan.fast_segments = not items_union and _fast_segments_ok(seg_fields, named)
    return plan


_INTEGER_TYPES = frozenset({"int", "long"})


def _plain_type(schema: Any, named: dict[str, Any], allowed: frozenset[str]) -> bool:
    """An allowed primitive (no logical type), or a union of it with null."""
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        kinds = [_resolve(b, named) for b in schema]
        return all(k == "null" or _plain_type(k, named, allowed) for k in kinds)
    if isinstance(schema, dict):
        return "logicalType" not in schema and schema.get("type") in allowed
    return schema in allowed


def _fast_segments_ok(fields: dict[str, Any], named: dict[str, Any]) -> bool:
    """Whether the segment fields we read all decode to int / str / None."""
    for name in ("id", "member_id", "expiration", "timestamp", "value"):
        if name in fields and not _plain_type(fields[name], named, _INTEGER_TYPES):
            return False
    return "code" not in fields or _plain_type(fields["code"], named, frozenset({"string"}))


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def _int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(value)


_UserResult = tuple[int | None, str | None, str | None]


def _anid(value: Any) -> _UserResult:
    if type(value) is not int:
        return None, None, "anid is not an integer"
    if value == 0:
        return None, None, "anid 0 is not a valid user ID"
    return _KIND_ANID, str(value & MAX_UID), None


def _ifa(value: Any) -> _UserResult:
    if type(value) is not dict:
        return None, None, "ifa is not a record"
    ident, kind = _text(value.get("id")), _text(value.get("type"))
    if not ident or not kind:
        return None, None, "ifa id is empty" if not ident else "ifa type is empty"
    return _KIND_IFA, f"{kind.lower()}:{ident.lower()}", None


def _device_id(value: Any) -> _UserResult:
    if type(value) is not dict:
        return None, None, "device_id is not a record"
    ident, domain = _text(value.get("id")), _text(value.get("domain")).lower()
    if not ident:
        return None, None, "device_id id is empty"
    if domain not in DEVICE_DOMAINS:
        return None, None, f"device_id domain {domain!r} is not supported"
    return _KIND_DEVICE, f"{domain}:{ident.lower()}", None


def _eid(value: Any) -> _UserResult:
    if type(value) is not dict:
        return None, None, "eid is not a record"
    source, ident = _text(value.get("source")), _text(value.get("id"))
    if not source or not ident:
        return None, None, "eid source is empty" if not source else "eid id is empty"
    return _KIND_EID, f"{source.lower()}:{ident}", None


def _xfa(value: Any) -> _UserResult:
    if type(value) is not dict:
        return None, None, "xfa is not a record"
    ip = _text(value.get("ip"))
    if not ip:
        return None, None, "xfa ip is empty"
    make, model = value.get("device_make_id"), value.get("device_model_id")
    make = 0 if make is None else make
    model = 0 if model is None else model
    return _KIND_XFA, f"{make}:{model}:{ip}", None


def _user_functions(config: BatchSegmentConfig, member_id: int) -> dict[str, Any]:
    """uid branch name -> function(branch value) -> (user_kind, user_key, user_error)."""
    default_owner = config.external_member_uid or member_id

    def external_id(value: Any) -> _UserResult:
        if type(value) is not dict:
            return None, None, "external_id is not a record"
        ident = _text(value.get("id"))
        if not ident:
            return None, None, "external_id id is empty"
        try:
            owner = _int(value.get("member_id")) or default_owner
        except TypeError:
            return None, None, "external_id member_id is not an integer"
        return _KIND_EXTERNAL, f"{owner}:{ident}", None

    return {
        "anid": _anid,
        "ifa": _ifa,
        "xfa": _xfa,
        "external_id": external_id,
        "device_id": _device_id,
        "eid": _eid,
    }


class _Columns:
    """Column lists for one chunk; built into frames once per chunk."""

    __slots__ = (
        "line_no", "raw", "format_error", "user_kind", "user_key", "user_error",
        "p_line", "p_pos", "p_id", "p_code", "p_member", "p_exp", "p_ts", "p_value",
        "p_ts_bad", "p_value_bad", "p_exp_bad", "s_rows",
    )  # fmt: skip

    def __init__(self) -> None:
        self.line_no: list[int] = []
        self.raw: list[str] = []
        self.format_error: list[str | None] = []
        self.user_kind: list[int | None] = []
        self.user_key: list[str | None] = []
        self.user_error: list[str | None] = []
        self.p_line: list[int] = []
        self.p_pos: list[int] = []
        self.p_id: list[int | None] = []
        self.p_code: list[str | None] = []
        self.p_member: list[int | None] = []
        self.p_exp: list[int | None] = []
        self.p_ts: list[int | None] = []
        self.p_value: list[int | None] = []
        self.p_ts_bad: list[bool] = []
        self.p_value_bad: list[bool] = []
        self.p_exp_bad: list[bool] = []
        self.s_rows: list[dict[str, Any]] = []  # segment records, for the vectorized rules

    def pair_lists(self) -> tuple[list[Any], ...]:
        return (
            self.p_line, self.p_pos, self.p_id, self.p_code, self.p_member, self.p_exp,
            self.p_ts, self.p_value, self.p_ts_bad, self.p_value_bad, self.p_exp_bad,
        )  # fmt: skip

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        lines = pl.DataFrame(
            {
                "line_no": self.line_no,
                "raw": self.raw,
                "format_error": self.format_error,
                "user_kind": self.user_kind,
                "user_key": self.user_key,
                "user_error": self.user_error,
            },
            schema=LINE_SCHEMA,
        )
        if self.s_rows:
            return _vectorized_pairs(lines, self.p_line, self.p_pos, self.s_rows)
        pairs = pl.DataFrame(
            {
                "line_no": self.p_line,
                "pos": self.p_pos,
                "seg_id": self.p_id,
                "seg_code": self.p_code,
                "seg_member_id": self.p_member,
                "expiration": self.p_exp,
                "timestamp": self.p_ts,
                "value": self.p_value,
                "removal": [False] * len(self.p_line),
                "timestamp_invalid": self.p_ts_bad,
                "value_invalid": self.p_value_bad,
                "expiration_invalid": self.p_exp_bad,
            },
            schema=PAIR_SCHEMA,
        )
        return lines, pairs


_SEGMENT_INPUT = {
    "id": pl.Int64(),
    "code": pl.String(),
    "member_id": pl.Int64(),
    "expiration": pl.Int64(),
    "timestamp": pl.Int64(),
    "value": pl.Int64(),
}


def _vectorized_pairs(
    lines: pl.DataFrame, line_nos: list[int], positions: list[int], rows: list[dict[str, Any]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The segment rules of `_segments`, applied to a whole chunk at once.

    Only for writer schemas whose segment fields decode to int / str / None (see
    `_fast_segments_ok`); `_segments` is the reference the tests compare this with.
    """
    seg = pl.DataFrame(rows, schema=_SEGMENT_INPUT)
    has_id = pl.col("id").fill_null(0) != 0
    has_code = ~has_id & (pl.col("code").fill_null("") != "")
    exp, ts, value = pl.col("expiration"), pl.col("timestamp"), pl.col("value")
    exp_bad = (exp < -2).fill_null(False)
    ts_bad = ((ts < 0) | (ts > MAX_TIMESTAMP_SECONDS)).fill_null(False)
    value_bad = ((value < MIN_VALUE) | (value > MAX_VALUE)).fill_null(False)
    pairs = seg.select(
        pl.Series("line_no", line_nos, dtype=pl.Int64),
        pl.Series("pos", positions, dtype=pl.Int32),
        pl.when(has_id).then(pl.col("id")).alias("seg_id"),
        pl.when(has_code).then(pl.col("code")).alias("seg_code"),
        pl.when(has_code & (pl.col("member_id") != 0))
        .then(pl.col("member_id"))
        .alias("seg_member_id"),
        pl.when(~exp_bad).then(exp).alias("expiration"),
        pl.when(~ts_bad & (ts != 0)).then(ts).alias("timestamp"),
        pl.when(~value_bad).then(value).alias("value"),
        pl.lit(False).alias("removal"),
        ts_bad.alias("timestamp_invalid"),
        value_bad.alias("value_invalid"),
        exp_bad.alias("expiration_invalid"),
        (~has_id & ~has_code).alias("_neither"),
    )
    bad = pairs.filter(pl.col("_neither"))["line_no"].unique()
    pairs = pairs.drop("_neither")
    if bad.len():
        pairs = pairs.filter(~pl.col("line_no").is_in(bad.implode()))
        is_bad = pl.col("line_no").is_in(bad.implode())
        lines = lines.with_columns(
            pl.when(is_bad).then(pl.lit(ERR_NO_ID_NOR_CODE)).otherwise("format_error")
            .alias("format_error"),
            *(pl.when(~is_bad).then(c).alias(c) for c in ("user_kind", "user_key", "user_error")),
        )  # fmt: skip
    return lines, pairs.cast(PAIR_SCHEMA)  # type: ignore[arg-type]


def _segments(cols: _Columns, line_no: int, segments: list[Any]) -> str | None:
    """Append one record's pairs; on a format error, append nothing and return the reason."""
    p_line, p_pos, p_id, p_code, p_member = (
        cols.p_line, cols.p_pos, cols.p_id, cols.p_code, cols.p_member
    )  # fmt: skip
    p_exp, p_ts, p_value = cols.p_exp, cols.p_ts, cols.p_value
    p_ts_bad, p_value_bad, p_exp_bad = cols.p_ts_bad, cols.p_value_bad, cols.p_exp_bad
    start = len(p_line)
    error: str | None = None
    for pos, seg in enumerate(segments):
        if type(seg) is tuple:  # a union of segment record types (return_record_name)
            seg = seg[1]
        if type(seg) is not dict:
            error = ERR_SEGMENT_NOT_RECORD
            break
        get = seg.get
        seg_id = get("id")
        if type(seg_id) is not int:
            if seg_id is None:
                seg_id = 0
            elif isinstance(seg_id, str) and seg_id.isascii() and seg_id.strip().isdigit():
                seg_id = int(seg_id)
            else:
                error = ERR_SEGMENT_ID_NOT_INT
                break
        code = get("code")
        if seg_id:
            code = None
            seg_member = None  # MEMBER_ID only goes with SEG_CODE
        else:
            seg_id = None
            if code is not None and type(code) is not str:
                code = str(code)
            if not code:
                error = ERR_NO_ID_NOR_CODE
                break
            seg_member = get("member_id") or None
            if seg_member is not None and type(seg_member) is not int:
                seg_member = None
        exp = get("expiration")
        exp_bad = False
        if exp is not None and (type(exp) is not int or exp < -2):
            exp, exp_bad = None, True
        ts = get("timestamp")
        ts_bad = False
        if ts is not None:
            if type(ts) is not int or ts < 0 or ts > MAX_TIMESTAMP_SECONDS:
                ts, ts_bad = None, True
            elif ts == 0:
                ts = None
        value = get("value")
        value_bad = False
        if value is not None and (type(value) is not int or not MIN_VALUE <= value <= MAX_VALUE):
            value, value_bad = None, True
        p_line.append(line_no)
        p_pos.append(pos)
        p_id.append(seg_id)
        p_code.append(code)
        p_member.append(seg_member)
        p_exp.append(exp)
        p_ts.append(ts)
        p_value.append(value)
        p_ts_bad.append(ts_bad)
        p_value_bad.append(value_bad)
        p_exp_bad.append(exp_bad)
    if error is not None:
        for column in cols.pair_lists():
            del column[start:]
    return error


def iter_avro_chunks(
    stream: BinaryIO,
    config: BatchSegmentConfig,
    member_id: int,
    records_per_chunk: int = 100_000,
    *,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    max_decompressed_bytes: int | None = None,
) -> Iterator[ParsedChunk]:
    """Parse an Avro object container file into chunks of up to `records_per_chunk` records.

    A chunk ends earlier when it reaches MAX_PAIRS_PER_CHUNK segment pairs or
    MAX_RAW_CHARS_PER_CHUNK characters of record JSON; no chunk is empty.

    Raises InputError: "corrupt_avro" (bad header, bad or truncated block, sync marker
    mismatch, undecodable record), "avro_schema_invalid" (no `uid` / `segments`, or a uid
    with no recognisable ID type), "unsupported_compression" (an unknown codec),
    "decompression_limit_exceeded" (a block or the file expands past the limits).
    Records already yielded stay valid: an error ends the file where it is found.
    """
    if records_per_chunk < 1:
        raise ValueError("records_per_chunk must be at least 1")
    src = _Source(stream)
    header = _read_header(src)
    plan = _plan(header.schema_json)
    budget = _Budget(max_block_bytes, max_decompressed_bytes)
    decoded = _NullCodecStream(
        _null_codec_header(header), header.sync, _iter_blocks(src, header, budget)
    )
    try:
        reader = fastavro.reader(decoded, return_record_name=True)  # type: ignore[arg-type]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(SCHEMA_INVALID, f"writer schema cannot be read: {exc}") from exc

    user_of = _user_functions(config, member_id)
    uid_is_union = plan.uid_is_union
    int_branch = plan.int_branch
    record_branches = plan.record_branches
    single_branch = plan.single_branch

    fast = plan.fast_segments
    records: Iterator[dict[str, Any]] = iter(reader)  # type: ignore[arg-type]
    line_no = 0
    while True:
        cols = _Columns()
        a_line, a_raw, a_format = cols.line_no.append, cols.raw.append, cols.format_error.append
        a_kind, a_key, a_user_err = (
            cols.user_kind.append,
            cols.user_key.append,
            cols.user_error.append,
        )
        x_line, x_pos, x_rows = cols.p_line.extend, cols.p_pos.extend, cols.s_rows.extend
        chunk_end = line_no + records_per_chunk
        pair_rows = cols.p_line
        raw_chars = 0
        exhausted = False
        failure: InputError | None = None
        # A chunk also ends early when its records are heavy (many segments, long records),
        # so that memory stays bounded whatever the records look like.
        while (
            line_no < chunk_end
            and raw_chars < MAX_RAW_CHARS_PER_CHUNK
            and len(pair_rows) < MAX_PAIRS_PER_CHUNK
        ):
            try:
                record = next(records)
            except StopIteration:
                exhausted = True
                break
            except InputError as exc:
                failure = exc
                break
            except Exception as exc:  # anything fastavro raises on damaged data
                failure = InputError(
                    CORRUPT,
                    f"Avro record {line_no + 1} cannot be decoded: {type(exc).__name__}: {exc}",
                )
                failure.__cause__ = exc
                break
            line_no += 1
            format_error: str | None = None
            kind = key = user_error = None

            uid = record.get("uid")
            branch: str | None
            if uid_is_union:
                if type(uid) is tuple:
                    name = uid[0]
                    uid = uid[1]
                    branch = record_branches.get(name)
                    record["uid"] = {branch or _short(str(name)): uid}
                elif type(uid) is int and int_branch is not None:
                    branch = "anid"
                    record["uid"] = {int_branch: uid}
                else:
                    branch = None
            else:
                branch = single_branch
            if branch is None:
                format_error = ERR_NO_UID_TYPE
            else:
                segments = record.get("segments")
                if not segments:
                    format_error = ERR_NO_SEGMENTS
                elif len(segments) > MAX_SEGMENTS_PER_LINE:
                    format_error = ERR_TOO_MANY_SEGMENTS
                elif fast:
                    count = len(segments)
                    x_rows(segments)
                    x_line([line_no] * count)
                    x_pos(range(count))
                else:
                    format_error = _segments(cols, line_no, segments)
                if format_error is None:
                    kind, key, user_error = user_of[branch](uid)

            a_line(line_no)
            raw = _to_json(record)
            raw_chars += len(raw)
            a_raw(raw)
            a_format(format_error)
            a_kind(kind)
            a_key(key)
            a_user_err(user_error)
        if cols.line_no:
            # The records read before a failure are handed over first, whatever the chunk
            # size: what is applied before an unreadable part of the file stays applied.
            lines, pairs = cols.frames()
            yield ParsedChunk(lines=lines, pairs=pairs, input_offset=src.offset)
        if failure is not None:
            raise failure
        if exhausted:
            return
