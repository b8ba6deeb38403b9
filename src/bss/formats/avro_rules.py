"""The rules of the Avro format, record by record: user IDs and segments.

The per-record functions are the reference; `vectorized_pairs` applies the segment rules to
a whole chunk at once, and the native reader applies the user rules the same way (the tests
compare them with these).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from bss.formats.config import BatchSegmentConfig
from bss.formats.records import (
    DEVICE_DOMAINS,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    MAX_UID,
    MAX_VALUE,
    MIN_VALUE,
    PAIR_SCHEMA,
    UserKind,
)

ERR_NO_UID_TYPE = "uid has no recognised ID type"
ERR_NO_SEGMENTS = "no segments"
ERR_TOO_MANY_SEGMENTS = f"more than {MAX_SEGMENTS_PER_LINE} segments"
ERR_NO_ID_NOR_CODE = "segment has neither id nor code"
ERR_SEGMENT_NOT_RECORD = "segment is not a record"
ERR_SEGMENT_ID_NOT_INT = "segment id is not an integer"

KIND_ANID = int(UserKind.ANID)
KIND_IFA = int(UserKind.IFA)
KIND_XFA = int(UserKind.XFA)
KIND_EXTERNAL = int(UserKind.EXTERNAL)
KIND_DEVICE = int(UserKind.DEVICE)
KIND_EID = int(UserKind.EID)


def text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def int_of(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(value)


UserResult = tuple[int | None, str | None, str | None]


def _anid(value: Any) -> UserResult:
    if type(value) is not int:
        return None, None, "anid is not an integer"
    if value == 0:
        return None, None, "anid 0 is not a valid user ID"
    return KIND_ANID, str(value & MAX_UID), None


def _ifa(value: Any) -> UserResult:
    if type(value) is not dict:
        return None, None, "ifa is not a record"
    ident, kind = text_of(value.get("id")), text_of(value.get("type"))
    if not ident or not kind:
        return None, None, "ifa id is empty" if not ident else "ifa type is empty"
    return KIND_IFA, f"{kind.lower()}:{ident.lower()}", None


def _device_id(value: Any) -> UserResult:
    if type(value) is not dict:
        return None, None, "device_id is not a record"
    ident, domain = text_of(value.get("id")), text_of(value.get("domain")).lower()
    if not ident:
        return None, None, "device_id id is empty"
    if domain not in DEVICE_DOMAINS:
        return None, None, f"device_id domain {domain!r} is not supported"
    return KIND_DEVICE, f"{domain}:{ident.lower()}", None


def _eid(value: Any) -> UserResult:
    if type(value) is not dict:
        return None, None, "eid is not a record"
    source, ident = text_of(value.get("source")), text_of(value.get("id"))
    if not source or not ident:
        return None, None, "eid source is empty" if not source else "eid id is empty"
    return KIND_EID, f"{source.lower()}:{ident}", None


def _xfa(value: Any) -> UserResult:
    if type(value) is not dict:
        return None, None, "xfa is not a record"
    ip = text_of(value.get("ip"))
    if not ip:
        return None, None, "xfa ip is empty"
    make, model = value.get("device_make_id"), value.get("device_model_id")
    make = 0 if make is None else make
    model = 0 if model is None else model
    return KIND_XFA, f"{make}:{model}:{ip}", None


def user_functions(config: BatchSegmentConfig, member_id: int) -> dict[str, Any]:
    """uid branch name -> function(branch value) -> (user_kind, user_key, user_error)."""
    default_owner = config.external_member_uid or member_id

    def external_id(value: Any) -> UserResult:
        if type(value) is not dict:
            return None, None, "external_id is not a record"
        ident = text_of(value.get("id"))
        if not ident:
            return None, None, "external_id id is empty"
        try:
            owner = int_of(value.get("member_id")) or default_owner
        except TypeError:
            return None, None, "external_id member_id is not an integer"
        return KIND_EXTERNAL, f"{owner}:{ident}", None

    return {
        "anid": _anid,
        "ifa": _ifa,
        "xfa": _xfa,
        "external_id": external_id,
        "device_id": _device_id,
        "eid": _eid,
    }


SEGMENT_INPUT = {
    "id": pl.Int64(),
    "code": pl.String(),
    "member_id": pl.Int64(),
    "expiration": pl.Int64(),
    "timestamp": pl.Int64(),
    "value": pl.Int64(),
}


def vectorized_pairs(lines: pl.DataFrame, seg: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The segment rules of `_segments`, applied to a whole chunk at once.

    `seg` has `line_no`, `pos` and the SEGMENT_INPUT columns, one row per segment of the
    well-formed records. Only for writer schemas whose segment fields decode to int / str /
    None (see `fast_segments_ok`); the reference's per-segment rules are what the tests
    compare this with.
    """
    has_id = pl.col("id").fill_null(0) != 0
    has_code = ~has_id & (pl.col("code").fill_null("") != "")
    exp, ts, value = pl.col("expiration"), pl.col("timestamp"), pl.col("value")
    exp_bad = (exp < -2).fill_null(False)
    ts_bad = ((ts < 0) | (ts > MAX_TIMESTAMP_SECONDS)).fill_null(False)
    value_bad = ((value < MIN_VALUE) | (value > MAX_VALUE)).fill_null(False)
    pairs = seg.select(
        pl.col("line_no").cast(pl.Int64),
        pl.col("pos").cast(pl.Int32),
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
