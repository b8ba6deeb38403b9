"""The reference Avro record reader: fastavro decodes each record, the rules run per record.

It reads every file the format allows (any writer schema, unions of segment records, text
segment IDs); the native reader (avro_native) is faster and falls back to this one for
what it cannot take. `raw`, the record as compact JSON, is built here for every record.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import polars as pl

from bss.formats.avro_container import (
    CORRUPT,
    Header,
    NullCodecStream,
    null_codec_header,
)
from bss.formats.avro_rules import (
    ERR_NO_ID_NOR_CODE,
    ERR_NO_SEGMENTS,
    ERR_NO_UID_TYPE,
    ERR_SEGMENT_ID_NOT_INT,
    ERR_SEGMENT_NOT_RECORD,
    ERR_TOO_MANY_SEGMENTS,
    SEGMENT_INPUT,
    user_functions,
    vectorized_pairs,
)
from bss.formats.avro_schema import SCHEMA_INVALID, ReadPlan, short_name
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError
from bss.formats.records import (
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    MAX_VALUE,
    MIN_VALUE,
    PAIR_SCHEMA,
    ParsedChunk,
)

#: A chunk ends before `records_per_chunk` records once it holds this many segment pairs
#: or this much record JSON (records with up to 1800 segments would otherwise make a chunk
#: of 100,000 records take gigabytes).
MAX_PAIRS_PER_CHUNK = 500_000
MAX_RAW_CHARS_PER_CHUNK = 64 << 20


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


to_json = _json_encoder()


def normalize_uid(record: dict[str, Any], plan: ReadPlan) -> tuple[str | None, Any]:
    """The record's uid branch short name (None if unrecognised) and value; writes a union's
    uid back as {branch: value}, the form `raw` shows it in."""
    uid = record.get("uid")
    if not plan.uid_is_union:
        return plan.single_branch, uid
    if type(uid) is tuple:
        name, value = uid
        branch = plan.record_branches.get(name)
        record["uid"] = {branch or short_name(str(name)): value}
        return branch, value
    if type(uid) is int and plan.int_branch is not None:
        record["uid"] = {plan.int_branch: uid}
        return "anid", uid
    return None, uid


def open_records(header: Header, blocks: Iterator[tuple[int, bytes]]) -> Iterator[dict[str, Any]]:
    """fastavro's records of these (checked, decompressed) blocks, union records named."""
    decoded = NullCodecStream(null_codec_header(header), header.sync, blocks)
    try:
        reader = fastavro.reader(decoded, return_record_name=True)  # type: ignore[arg-type]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(SCHEMA_INVALID, f"writer schema cannot be read: {exc}") from exc
    return iter(reader)  # type: ignore[arg-type]


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
            seg = pl.DataFrame(self.s_rows, schema=SEGMENT_INPUT).with_columns(
                line_no=pl.Series(self.p_line, dtype=pl.Int64),
                pos=pl.Series(self.p_pos, dtype=pl.Int32),
            )
            return vectorized_pairs(lines, seg)
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


def _segments(cols: _Columns, line_no: int, segments: list[Any]) -> str | None:  # noqa: C901, PLR0915  the plain reference decoder the native reader is checked against: the segment rules in spec order
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


def _encoding(buffer: io.BytesIO, writer_schema: Any, record: dict[str, Any]) -> bytes:
    """The record's canonical encoding, what the native reader hashes for it."""
    buffer.seek(0)
    buffer.truncate()
    try:
        fastavro.schemaless_writer(buffer, writer_schema, record)
    except Exception:  # not seen (fastavro encodes what it decoded), but never fail on it:
        return to_json(record).encode()  # repeats among these records are still found
    return buffer.getvalue()


def reference_chunks(  # noqa: PLR0915  the plain reference reader's loop, kept whole as the model the native reader is checked against
    header: Header,
    plan: ReadPlan,
    blocks: Iterator[tuple[int, bytes]],
    config: BatchSegmentConfig,
    member_id: int,
    records_per_chunk: int,
    *,
    first_line_no: int = 0,
    input_offset: Callable[[], int],
    hash_bytes: bool = False,
) -> Iterator[ParsedChunk]:
    """The records of these blocks, in chunks of up to `records_per_chunk` records, numbered
    from `first_line_no` + 1.

    A chunk ends earlier when it reaches MAX_PAIRS_PER_CHUNK segment pairs or
    MAX_RAW_CHARS_PER_CHUNK characters of record JSON; no chunk is empty. An InputError from
    the blocks or an undecodable record ends the records there, after the chunk of those
    read before it.

    With `hash_bytes` (taking over from the native reader) the chunks carry the native
    reader's line hashes, of each record's encoding, so that a record repeating one read
    natively is found a duplicate as it is when the whole file is read here.
    """
    user_of = user_functions(config, member_id)
    fast = plan.fast_segments
    records = open_records(header, blocks)
    line_no = first_line_no
    writer_schema = fastavro.parse_schema(json.loads(header.schema_json)) if hash_bytes else None
    buffer = io.BytesIO()
    while True:
        cols = _Columns()
        encoded: list[bytes] = []
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
            if writer_schema is not None:  # before normalize_uid rewrites the uid
                encoded.append(_encoding(buffer, writer_schema, record))

            branch, uid = normalize_uid(record, plan)
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
            raw = to_json(record)
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
            hashes = pl.Series(encoded, dtype=pl.Binary).hash(seed=0) if hash_bytes else None
            yield ParsedChunk(
                lines=lines, pairs=pairs, input_offset=input_offset(), line_hashes=hashes
            )
        if failure is not None:
            raise failure
        if exhausted:
            return
