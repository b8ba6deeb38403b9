"""The legacy text format: one user per line, SEG blocks joined by configurable separators.

    UID SEP1 SEG (SEP2 SEG)* [SEP4 SEG (SEP2 SEG)*] [SEP5 DOMAIN-or-device-type]
    SEG = FIELD (SEP3 FIELD)*   in the order of the member's `segment_fields`

Everything here is vectorized with Polars expressions: a chunk of text becomes one row per
line (`LINE_SCHEMA`) and one row per SEG block of every well-formed line (`PAIR_SCHEMA`)
without a Python loop per line or per block.

Reasons are reported the way a left-to-right reader would meet them: first the line's
shape (SEPARATOR1, counts of SEPARATOR4 / SEPARATOR5, what follows SEPARATOR5, no blocks,
too many blocks), then the first bad SEG block in file order (empty block, wrong number of
fields, then its fields in `segment_fields` order). The user ID is only judged on lines
without a format error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import BinaryIO, Final

import polars as pl
from polars.expr.whenthen import ChainedThen, Then

from bss.formats.config import BatchSegmentConfig
from bss.formats.records import (
    LEGACY_DEVICE_TYPES,
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    MAX_VALUE,
    MIN_VALUE,
    PAIR_SCHEMA,
    REASON_ILLEGAL_FIELDS,
    ParsedChunk,
    UserKind,
)

__all__ = [
    "MAX_LINE_BYTES",
    "iter_legacy_chunks",
    "DEVICE_ID_DOMAINS",
    "parse_legacy_text",
    "parse_user_ids",
]

#: A line longer than this (in bytes, i.e. Latin-1 characters, without its terminator) is a
#: format error and its `raw` is cut to this length. The longest sensible line (1800 blocks
#: of six fields and a 100-character SEG_CODE) is far below it. It bounds the reader's memory
#: when a file has no line breaks.
MAX_LINE_BYTES = 1 << 20
MAX_SEG_CODE_CHARS = 100
MAX_EXTERNAL_UID_CHARS = 128

# Format errors (the text is what the job's error log shows after the raw line).
REASON_LINE_TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes"
REASON_NO_SEPARATOR1 = "missing SEPARATOR1"
REASON_MANY_SEPARATOR1 = "more than one SEPARATOR1"
REASON_MANY_SEPARATOR4 = "more than one SEPARATOR4"
REASON_MANY_SEPARATOR5 = "more than one SEPARATOR5"
REASON_EMPTY_AFTER_SEPARATOR5 = "empty value after SEPARATOR5"
REASON_SHA1MAC = "device type 6 (sha1mac) is deprecated"
REASON_UNKNOWN_DEVICE_TYPE = "unknown device type "  # followed by the number as written
REASON_NO_SEGMENTS = "no segments"
REASON_EMPTY_BLOCK = "empty SEG block"
REASON_TOO_MANY_SEGMENTS = f"more than {MAX_SEGMENTS_PER_LINE} segments on one line"
REASON_BAD_SEG_ID = "SEG_ID is not a positive integer"
REASON_EMPTY_SEG_CODE = "SEG_CODE is empty"
REASON_LONG_SEG_CODE = f"SEG_CODE is longer than {MAX_SEG_CODE_CHARS} characters"
REASON_BAD_MEMBER_ID = "MEMBER_ID is not a positive integer"
REASON_BAD_EXPIRATION = "EXPIRATION is not an integer"
REASON_BAD_VALUE = "VALUE is not an integer"

# User errors.
USER_ERROR_ANID = "invalid user ID"
USER_ERROR_EXTERNAL = "invalid external user ID"
USER_ERROR_DEVICE = "invalid {domain} device ID"
_DEVICE_ERROR_HEAD, _DEVICE_ERROR_TAIL = USER_ERROR_DEVICE.split("{domain}")

#: What counts as whitespace (blank lines, user IDs): Unicode White_Space, which within
#: Latin-1 is TAB, LF, VT, FF, CR, SPACE, NEL (0x85) and NBSP (0xA0).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0"
_WHITESPACE_BYTES = WHITESPACE.encode("latin-1")

_HEX = "[0-9A-Fa-f]"
_UUID_RE = f"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}$"
_DEVICE_ID_RE = {
    "idfa": _UUID_RE,
    "aaid": _UUID_RE,
    "windowsadid": _UUID_RE,
    "rida": _UUID_RE,
    "sha1udid": f"^{_HEX}{{40}}$",
    "openudid": f"^{_HEX}{{40}}$",
    "md5udid": f"^{_HEX}{{32}}$",
}
#: Device ID domains the legacy format (and the real-time API) accepts.
DEVICE_ID_DOMAINS = frozenset(_DEVICE_ID_RE)
#: Pieces are already parsed in parallel, one per thread; within a piece the in-memory engine
#: has less overhead than the streaming one (measured: about 5% less CPU).
_ENGINE: Final = "in-memory"

_INT_RE = r"^-?[0-9]+$"
_DIGITS_RE = r"^[0-9]+$"


def parse_legacy_text(
    text: str, first_line_no: int, config: BatchSegmentConfig, member_id: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse complete lines (decoded as Latin-1) into (lines, pairs).

    `first_line_no` is the physical number of the first line of `text`; blank lines count
    for numbering but give no row. A large text is cut at line breaks into pieces of at most
    about PIECE_CHARS, parsed concurrently on as many threads as Polars has (Polars releases
    the GIL); the result is the same as parsing it in one piece.
    """
    threads = PARALLEL_PIECES or pl.thread_pool_size()
    pieces = _cut(text, max(threads, -(-len(text) // PIECE_CHARS)))
    if len(pieces) == 1:
        return _parse_text(text, first_line_no, config, member_id)
    firsts = [first_line_no]
    for piece in pieces[:-1]:
        firsts.append(firsts[-1] + piece.count("\n"))
    with ThreadPoolExecutor(min(threads, len(pieces))) as pool:
        parts = list(pool.map(_parse_text, pieces, firsts, repeat(config), repeat(member_id)))
    lines = pl.concat([p[0] for p in parts], rechunk=False)
    pairs = pl.concat([p[1] for p in parts], rechunk=False)
    return lines, pairs


#: Below this size a text is parsed in one piece.
PARALLEL_MIN_CHARS = 1 << 20
#: How many pieces a large text is parsed in at once; None: one per Polars thread.
PARALLEL_PIECES: int | None = None
#: Pieces are at most about this long, which bounds the parser's working memory (the
#: intermediate columns are many times the size of the text they come from).
PIECE_CHARS = 4 << 20


def _cut(text: str, n: int) -> list[str]:
    """Cut `text` just after line breaks into at most `n` pieces of similar size."""
    if n < 2 or len(text) < PARALLEL_MIN_CHARS:
        return [text]
    pieces, start = [], 0
    for k in range(1, n):
        cut = text.find("\n", max(start, len(text) * k // n))
        if cut < 0 or cut + 1 >= len(text):
            break
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def _parse_text(
    text: str, first_line_no: int, config: BatchSegmentConfig, member_id: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    raw = pl.Series("raw", [text], dtype=pl.String).str.split("\n").explode()
    raw_col = pl.col("raw").str.strip_suffix("\r") if "\r" in text else pl.col("raw")
    frame = (
        pl.DataFrame([raw])
        .lazy()
        .with_row_index("line_no")
        .select((pl.col("line_no").cast(pl.Int64) + first_line_no).alias("line_no"), raw_col)
        .filter(pl.col("raw").str.contains(r"\S"))
    )
    # A separator that does not occur in the text changes nothing: skip its work.
    sep4, sep5 = config.separator_4, config.separator_5
    return _parse_lines(
        frame,
        config,
        member_id,
        sep4=sep4 if sep4 is not None and sep4 in text else None,
        sep5=sep5 if sep5 is not None and sep5 in text else None,
        may_be_long=len(text) > MAX_LINE_BYTES,
        has_plus="+" in text,
    )


def iter_legacy_chunks(  # noqa: PLR0915  the read loop: chunk boundaries and the bounded carry of a cut line, in one place
    stream: BinaryIO, config: BatchSegmentConfig, member_id: int, chunk_bytes: int
) -> Iterator[ParsedChunk]:
    """Read `stream` `chunk_bytes` at a time and parse each run of complete lines.

    Memory stays bounded by `chunk_bytes` plus one line of at most MAX_LINE_BYTES: the part
    of an overlong line beyond that is skipped (the line is then a format error anyway).
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    carry = bytearray()
    # While an overlong line is being skipped: whether its skipped part had non-whitespace.
    skipping = False
    skipped_non_blank = False
    next_line_no = 1
    consumed = 0

    def flush(piece: bytes, offset: int) -> ParsedChunk:
        nonlocal next_line_no
        lines, pairs = parse_legacy_text(piece.decode("latin-1"), next_line_no, config, member_id)
        next_line_no += piece.count(b"\n")
        return ParsedChunk(lines=lines, pairs=pairs, input_offset=offset)

    while True:
        data = _read_full(stream, chunk_bytes)
        if not data:
            break
        base = consumed
        consumed += len(data)
        start = 0
        if skipping:
            end = data.find(b"\n")
            rest = data if end < 0 else data[:end]
            skipped_non_blank = skipped_non_blank or bool(rest.translate(None, _WHITESPACE_BYTES))
            if end < 0:
                continue
            # The overlong line ends here: its kept head plus one stand-in character that
            # says whether anything non-blank was cut off.
            carry += b"x" if skipped_non_blank else b" "
            skipping = False
            start = end
        cut = data.rfind(b"\n", start)
        if cut < 0:
            carry += data[start:] if start else data
            if len(carry) > MAX_LINE_BYTES + 1:
                skipped_non_blank = bool(carry[MAX_LINE_BYTES:].translate(None, _WHITESPACE_BYTES))
                del carry[MAX_LINE_BYTES:]
                skipping = True
            continue
        if carry:
            carry += data[start : cut + 1]
            piece = bytes(carry)
        else:
            piece = data[start : cut + 1] if (start or cut + 1 < len(data)) else data
        carry = bytearray(data[cut + 1 :])
        if len(carry) > MAX_LINE_BYTES + 1:
            skipped_non_blank = bool(carry[MAX_LINE_BYTES:].translate(None, _WHITESPACE_BYTES))
            del carry[MAX_LINE_BYTES:]
            skipping = True
        yield flush(piece, base + cut + 1)
    if skipping:
        carry += b"x" if skipped_non_blank else b" "
    if carry:
        yield flush(bytes(carry), consumed)


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at the end (a raw stream may return short reads)."""
    data = stream.read(size)
    if not data or len(data) >= size:
        return data or b""
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# The vectorized parser
# --------------------------------------------------------------------------------------


def _splitn2(frame: pl.LazyFrame, expr: pl.Expr, sep: str, names: tuple[str, str]) -> pl.LazyFrame:
    """Add columns `names`: before the first `sep`, and after it (null when there is none).

    The split is materialized once (an expression used twice would be evaluated twice).
    """
    parts = expr.str.splitn(sep, 2).struct.rename_fields(list(names)).alias("_parts")
    return frame.with_columns(parts).unnest("_parts")


def _lit(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


def _parse_lines(
    frame: pl.LazyFrame,
    config: BatchSegmentConfig,
    member_id: int,
    *,
    sep4: str | None,
    sep5: str | None,
    may_be_long: bool,
    has_plus: bool,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The legacy line rules as one lazy query plan, in stages: UID and rest, the device
    type after SEPARATOR5, the SEG blocks, the line's format error, the user ID; then the
    SEG blocks' own rules on the collected lines."""
    raw = pl.col("raw")
    frame, too_long = _uid_and_rest(frame, config, sep4=sep4, sep5=sep5, may_be_long=may_be_long)
    frame = _device_type(frame, sep5)
    frame, no_segments = _seg_blocks(frame, config.separator_2, sep4)
    format_error = _format_error(config, too_long, no_segments, sep4=sep4, sep5=sep5)
    frame, kind, key, uerr = _user_id(
        frame, config, member_id, has_plus=has_plus, with_domain=sep5 is not None
    )
    frame = frame.with_columns(
        format_error.alias("format_error"),
        kind.alias("user_kind"),
        key.alias("user_key"),
        uerr.alias("user_error"),
        (
            pl.when(too_long).then(raw.str.slice(0, MAX_LINE_BYTES)).otherwise(raw)
            if may_be_long
            else raw
        ).alias("raw"),
    )
    lines = frame.select(
        "line_no",
        "raw",
        "format_error",
        "user_kind",
        "user_key",
        "user_error",
        "_blocks",
        "_n_adds",
    ).collect(engine=_ENGINE)
    pairs, block_errors = _parse_blocks(lines, config, has_plus=has_plus)
    return _with_block_errors(lines, pairs, block_errors)


def _uid_and_rest(
    frame: pl.LazyFrame,
    config: BatchSegmentConfig,
    *,
    sep4: str | None,
    sep5: str | None,
    may_be_long: bool,
) -> tuple[pl.LazyFrame, pl.Expr]:
    """Stage 1: `uid` and `rest` (split at the first SEPARATOR1) and the separator counts
    the format errors need; also the line-too-long test."""
    sep1, sep3 = config.separator_1, config.separator_3
    raw = pl.col("raw")
    frame = _splitn2(frame, raw, sep1, ("uid", "rest"))
    rest = pl.col("rest")
    stage1 = []
    too_long = pl.lit(False)
    if may_be_long:
        stage1.append(raw.str.len_bytes().alias("_len"))
        too_long = pl.col("_len") > MAX_LINE_BYTES
    if sep1 != sep3:
        # the UID ends at the first SEPARATOR1: another one is in the rest
        stage1.append(rest.str.contains(sep1, literal=True).alias("_more1"))
    if sep4 is not None:
        stage1.append(raw.str.count_matches(sep4, literal=True).alias("_n4"))
    if sep5 is not None:
        stage1.append(raw.str.count_matches(sep5, literal=True).alias("_n5"))
    if stage1:
        frame = frame.with_columns(stage1)
    return frame, too_long


def _device_type(frame: pl.LazyFrame, sep5: str | None) -> pl.LazyFrame:
    """Stage 2: `_body`, the rest before SEPARATOR5, and after it `_tail`, the device type
    (`_domain`, its name, or null)."""
    rest = pl.col("rest")
    if sep5 is None:
        return frame.with_columns(rest.alias("_body"))
    has5 = pl.col("_n5") > 0
    frame = _splitn2(frame, pl.when(has5).then(rest), sep5, ("_body", "_tail"))
    frame = frame.with_columns(pl.coalesce("_body", rest).alias("_body"))
    tail = pl.col("_tail")
    domain = tail.replace_strict(LEGACY_DEVICE_TYPES, default=None, return_dtype=pl.String)
    return frame.with_columns(
        domain.alias("_domain"),
        tail.str.contains(_DIGITS_RE).alias("_tail_digits"),
    )


def _seg_blocks(
    frame: pl.LazyFrame, sep2: str | None, sep4: str | None
) -> tuple[pl.LazyFrame, pl.Expr]:
    """Stage 3: `_blocks`, the SEG blocks (adds first, then removals), `_n_blocks` and
    `_n_adds`; and the no-segments test.

    Blocks are split at SEPARATOR2, or at a newline (never inside a line) when there is none, so
    that a SEPARATOR4 can be turned into a block boundary by one replace."""
    split_at = sep2 if sep2 is not None else "\n"
    body = pl.col("_body")
    if sep4 is None:
        frame = frame.with_columns(body.str.split(split_at).alias("_blocks"))
        frame = frame.with_columns(pl.col("_blocks").list.len().cast(pl.Int32).alias("_n_blocks"))
        return frame.with_columns(pl.col("_n_blocks").alias("_n_adds")), body == ""
    has4 = pl.col("_n4") > 0
    lead = body.str.starts_with(sep4)  # nothing to add, only removals
    no_segments = (body == "") | (body == sep4)
    # (masked first, so that the string work is only done on lines with a SEPARATOR4)
    with_sep4 = pl.when(has4).then(body)
    joined = pl.coalesce(
        with_sep4.str.strip_prefix(sep4).str.replace(sep4, split_at, literal=True, n=1), body
    )
    frame = frame.with_columns(joined.str.split(split_at).alias("_blocks"))
    frame = frame.with_columns(pl.col("_blocks").list.len().cast(pl.Int32).alias("_n_blocks"))
    adds = pl.when(has4 & ~lead).then(body).str.splitn(sep4, 2).struct.field("field_0")
    frame = frame.with_columns(adds.alias("_adds"))
    adds = pl.col("_adds")
    n_adds_before_sep4 = (
        adds.str.count_matches(split_at, literal=True) + 1 if sep2 is not None else pl.lit(1)
    )
    n_adds = (
        pl.when(lead)
        .then(pl.lit(0, dtype=pl.Int32))
        .when(adds.is_not_null())
        .then(n_adds_before_sep4.cast(pl.Int32))
        .otherwise(pl.col("_n_blocks"))
    )
    return frame.with_columns(n_adds.alias("_n_adds")), no_segments


def _format_error(
    config: BatchSegmentConfig,
    too_long: pl.Expr,
    no_segments: pl.Expr,
    *,
    sep4: str | None,
    sep5: str | None,
) -> pl.Expr:
    """A line's format error (or null), the first in the order a reader meets them."""
    err: Then | ChainedThen = pl.when(too_long).then(_lit(REASON_LINE_TOO_LONG))
    err = err.when(pl.col("rest").is_null()).then(_lit(REASON_NO_SEPARATOR1))
    if config.separator_1 != config.separator_3:
        err = err.when(pl.col("_more1")).then(_lit(REASON_MANY_SEPARATOR1))
    if sep4 is not None:
        err = err.when(pl.col("_n4") > 1).then(_lit(REASON_MANY_SEPARATOR4))
    if sep5 is not None:
        tail = pl.col("_tail")
        err = (
            err.when(pl.col("_n5") > 1)
            .then(_lit(REASON_MANY_SEPARATOR5))
            .when(tail == "")
            .then(_lit(REASON_EMPTY_AFTER_SEPARATOR5))
            .when(tail == "6")
            .then(_lit(REASON_SHA1MAC))
            .when(pl.col("_tail_digits") & pl.col("_domain").is_null())
            .then(pl.concat_str(_lit(REASON_UNKNOWN_DEVICE_TYPE), tail))
        )
    return (
        err.when(no_segments)
        .then(_lit(REASON_NO_SEGMENTS))
        .when(pl.col("_n_blocks") > MAX_SEGMENTS_PER_LINE)
        .then(_lit(REASON_TOO_MANY_SEGMENTS))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _with_block_errors(
    lines: pl.DataFrame, pairs: pl.DataFrame, block_errors: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A SEG block's error is its line's format error (when the line had none before), and
    such a line keeps no pairs and no user."""
    if block_errors.height:
        lines = lines.join(block_errors, on="line_no", how="left", maintain_order="left")
        lines = lines.with_columns(
            pl.coalesce("format_error", "_block_error").alias("format_error")
        )
        pairs = pairs.filter(~pl.col("line_no").is_in(block_errors.get_column("line_no").implode()))
    bad = pl.col("format_error").is_not_null()
    null_str = pl.lit(None, dtype=pl.String)
    lines = lines.select(
        "line_no",
        "raw",
        "format_error",
        pl.when(bad)
        .then(pl.lit(None, dtype=pl.UInt8))
        .otherwise(pl.col("user_kind"))
        .alias("user_kind"),
        pl.when(bad).then(null_str).otherwise(pl.col("user_key")).alias("user_key"),
        pl.when(bad).then(null_str).otherwise(pl.col("user_error")).alias("user_error"),
    )
    return lines.cast(pl.Schema(LINE_SCHEMA)), pairs.select(list(PAIR_SCHEMA)).cast(
        pl.Schema(PAIR_SCHEMA)
    )


def _user_id(
    frame: pl.LazyFrame,
    config: BatchSegmentConfig,
    member_id: int,
    *,
    has_plus: bool,
    with_domain: bool,
) -> tuple[pl.LazyFrame, pl.Expr, pl.Expr, pl.Expr]:
    """The user ID rules: column `uid` (and `_domain`, a device domain name or null, when
    `with_domain`) -> expressions for user_kind, user_key, user_error."""
    uid = pl.col("uid")
    null_str = pl.lit(None, dtype=pl.String)
    # When/Then chains; the device ID rules below wrap them in a further .otherwise().
    kind: pl.Expr
    key: pl.Expr
    if config.use_external_uids:
        owner = config.external_member_uid or member_id
        ok = uid.str.len_chars().is_between(1, MAX_EXTERNAL_UID_CHARS) & ~uid.str.contains(r"\s")
        frame = frame.with_columns(ok.alias("_uid_ok"))
        ok = pl.col("_uid_ok")
        kind = pl.when(ok).then(pl.lit(int(UserKind.EXTERNAL), dtype=pl.UInt8))
        key = pl.when(ok).then(pl.concat_str(_lit(f"{owner}:"), uid))
        uerr = pl.when(ok).then(null_str).otherwise(_lit(USER_ERROR_EXTERNAL))
    else:
        frame = frame.with_columns(uid.cast(pl.UInt64, strict=False).alias("_anid"))
        anid = pl.col("_anid")
        ok = anid.is_not_null() & (anid > 0)
        if has_plus:
            ok = ok & ~uid.str.starts_with("+")
        frame = frame.with_columns(ok.alias("_uid_ok"))
        ok = pl.col("_uid_ok")
        kind = pl.when(ok).then(pl.lit(int(UserKind.ANID), dtype=pl.UInt8))
        # the canonical decimal differs from the text only when it has leading zeros
        canonical = pl.when(uid.str.starts_with("0")).then(anid).cast(pl.String)
        key = pl.when(ok).then(pl.coalesce(canonical, uid))
        uerr = pl.when(ok).then(null_str).otherwise(_lit(USER_ERROR_ANID))
    if with_domain:
        domain = pl.col("_domain")
        dev_uid = pl.when(domain.is_not_null()).then(uid)
        dev_ok = pl.lit(False)
        for regex in sorted(set(_DEVICE_ID_RE.values())):
            names = [d for d, r in _DEVICE_ID_RE.items() if r == regex]
            dev_ok = (
                pl.when(domain.is_in(names)).then(dev_uid.str.contains(regex)).otherwise(dev_ok)
            )
        frame = frame.with_columns(dev_ok.fill_null(False).alias("_dev_ok"))
        dev_ok = pl.col("_dev_ok")
        is_dev = domain.is_not_null()
        kind = (
            pl.when(is_dev)
            .then(pl.when(dev_ok).then(pl.lit(int(UserKind.DEVICE), dtype=pl.UInt8)))
            .otherwise(kind)
        )
        key = (
            pl.when(is_dev)
            .then(
                pl.when(dev_ok).then(pl.concat_str(domain, _lit(":"), dev_uid.str.to_lowercase()))
            )
            .otherwise(key)
        )
        uerr = (
            pl.when(is_dev)
            .then(
                pl.when(dev_ok)
                .then(null_str)
                .otherwise(
                    pl.concat_str(_lit(_DEVICE_ERROR_HEAD), domain, _lit(_DEVICE_ERROR_TAIL))
                )
            )
            .otherwise(uerr)
        )

    return frame, kind, key, uerr


def parse_user_ids(
    uids: list[str], domains: list[str | None], config: BatchSegmentConfig, member_id: int
) -> pl.DataFrame:
    """The batch format's user ID rules for IDs given one by one (the real-time API):
    a row of user_kind, user_key, user_error per ID. A domain names a device ID type
    (DEVICE_ID_DOMAINS); null means a platform (or, per config, external) user ID."""
    frame = pl.LazyFrame(
        {"uid": uids, "_domain": domains}, schema={"uid": pl.String, "_domain": pl.String}
    )
    frame, kind, key, uerr = _user_id(frame, config, member_id, has_plus=True, with_domain=True)
    return frame.select(
        kind.alias("user_kind"), key.alias("user_key"), uerr.alias("user_error")
    ).collect()


def _plus(text: pl.Expr, has_plus: bool) -> pl.Expr:
    """Whether `text` starts with '+' (which the Int64 cast accepts and the format does not)."""
    return text.str.starts_with("+") if has_plus else pl.lit(False)


def _int_syntax(text: pl.Expr, parsed: pl.Expr, has_plus: bool) -> pl.Expr:
    """Optional '-' then digits (any number of them). `parsed` is `text` cast to Int64."""
    # The Int64 cast accepts exactly [+-]?[0-9]+ that fits; only overflow needs the regex.
    overflow = pl.when(parsed.is_null()).then(text).str.contains(_INT_RE).fill_null(False)
    return (parsed.is_not_null() & ~_plus(text, has_plus)) | overflow


def _parse_blocks(
    lines: pl.DataFrame, config: BatchSegmentConfig, *, has_plus: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Explode the SEG blocks of well-formed lines; return (pairs, first block error per line)."""
    exploded = _exploded_blocks(lines, config)
    block = pl.col("_blocks")
    # (condition, reason) in the order they are checked; the first that holds is the reason
    checks: list[tuple[pl.Expr, str]] = [
        (block == "", REASON_EMPTY_BLOCK),
        (pl.col("_count_err"), REASON_ILLEGAL_FIELDS),
    ]
    field_checks, out, casts = _field_rules(config.segment_fields, has_plus)
    checks += field_checks
    any_bad = pl.any_horizontal([cond.fill_null(False) for cond, _ in checks])
    if casts:
        exploded = exploded.with_columns(casts)
    blocks = exploded.with_columns(
        any_bad.alias("_bad"),
        (pl.col("pos") >= pl.col("_n_adds")).alias("removal"),
        *[expr.alias(name) for name, expr in out.items()],
    ).collect(engine=_ENGINE)

    # The reasons are only worked out for the (usually few) bad blocks.
    first_error: Then | ChainedThen = pl.when(checks[0][0]).then(_lit(checks[0][1]))
    for cond, message in checks[1:]:
        first_error = first_error.when(cond).then(_lit(message))
    errors = (
        blocks.lazy()
        .filter(pl.col("_bad"))
        .unique(subset="line_no", keep="first", maintain_order=True)
        .select("line_no", first_error.alias("_block_error"))
        .collect(engine=_ENGINE)
    )
    return blocks.select(list(PAIR_SCHEMA)), errors


def _exploded_blocks(lines: pl.DataFrame, config: BatchSegmentConfig) -> pl.LazyFrame:
    """One row per SEG block of the well-formed lines: its position in its line (`pos`),
    its fields (`_f0`, `_f1`, ...) and whether it has another number of them (`_count_err`)."""
    n_fields = len(config.segment_fields)
    sep3 = config.separator_3
    good = (
        lines.lazy()
        .filter(pl.col("format_error").is_null())
        .select("line_no", "_blocks", "_n_adds")
    )
    good = good.with_columns(
        (pl.col("_blocks").list.len().cum_sum() - pl.col("_blocks").list.len())
        .cast(pl.Int64)
        .alias("_start")
    )
    exploded = good.explode("_blocks").with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64) - pl.col("_start")).cast(pl.Int32).alias("pos")
    )
    block = pl.col("_blocks")
    if n_fields > 1:
        exploded = exploded.with_columns(block.str.split(sep3).alias("_fields"))
        parts = pl.col("_fields")
        return exploded.with_columns(
            [parts.list.get(i, null_on_oob=True).alias(f"_f{i}") for i in range(n_fields)]
            + [(parts.list.len() != n_fields).alias("_count_err")]
        )
    exploded = exploded.with_columns(block.alias("_f0"))
    count_err = block.str.contains(sep3, literal=True) if sep3 is not None else pl.lit(False)
    return exploded.with_columns(count_err.alias("_count_err"))


def _field_rules(
    fields: Sequence[str], has_plus: bool
) -> tuple[list[tuple[pl.Expr, str]], dict[str, pl.Expr], list[pl.Expr]]:
    """Per SEG field (in the config's order): its (condition, reason) checks, the pair
    columns it gives, and the integer casts (`_n0`, ...) they read."""
    checks: list[tuple[pl.Expr, str]] = []
    out: dict[str, pl.Expr] = {
        "seg_id": pl.lit(None, dtype=pl.Int64),
        "seg_code": pl.lit(None, dtype=pl.String),
        "seg_member_id": pl.lit(None, dtype=pl.Int64),
        "expiration": pl.lit(None, dtype=pl.Int64),
        "timestamp": pl.lit(None, dtype=pl.Int64),
        "value": pl.lit(None, dtype=pl.Int64),
        "timestamp_invalid": pl.lit(False),
        "value_invalid": pl.lit(False),
        "expiration_invalid": pl.lit(False),
    }
    casts = []
    for i, name in enumerate(fields):
        text = pl.col(f"_f{i}")
        num = pl.col(f"_n{i}")
        if name != "SEG_CODE":
            casts.append(text.cast(pl.Int64, strict=False).alias(f"_n{i}"))
        if name in ("SEG_ID", "MEMBER_ID"):
            bad = num.is_null() | (num <= 0) | _plus(text, has_plus)
            reason = REASON_BAD_SEG_ID if name == "SEG_ID" else REASON_BAD_MEMBER_ID
            checks.append((bad, reason))
            out["seg_id" if name == "SEG_ID" else "seg_member_id"] = num
        elif name == "SEG_CODE":
            length = text.str.len_chars()
            checks.append((length == 0, REASON_EMPTY_SEG_CODE))
            checks.append((length > MAX_SEG_CODE_CHARS, REASON_LONG_SEG_CODE))
            out["seg_code"] = text
        elif name in ("EXPIRATION", "VALUE"):
            syntax = _int_syntax(text, num, has_plus)
            is_value = name == "VALUE"
            checks.append((~syntax, REASON_BAD_VALUE if is_value else REASON_BAD_EXPIRATION))
            ok = num.is_between(MIN_VALUE, MAX_VALUE) if is_value else num >= -2
            column = "value" if is_value else "expiration"
            out[column] = pl.when(ok).then(num)
            out[f"{column}_invalid"] = ~ok.fill_null(False)
        elif name == "TIMESTAMP":
            ok = (
                (num >= 0)
                & (num <= MAX_TIMESTAMP_SECONDS)
                & ~_plus(text, has_plus)
                # "-0" casts to 0 but is not digits only
                & ~pl.when(num == 0).then(text).str.starts_with("-").fill_null(False)
            ).fill_null(False)
            out["timestamp"] = pl.when(ok).then(num)
            out["timestamp_invalid"] = ~ok
        else:  # pragma: no cover - config validation rejects unknown names
            raise ValueError(f"unknown SEG field {name!r}")
    return checks, out, casts
