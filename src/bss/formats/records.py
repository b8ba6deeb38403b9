"""The contract between the format readers (bytes -> records) and the ingest engine.

A reader turns a stretch of the input into a `ParsedChunk`: one row per input line (or
Avro record) in `lines`, and one row per SEG block of every well-formed line in `pairs`.
Readers decide syntax (invalid format, invalid user ID, unparseable timestamp); the engine
decides meaning (segment registry, authorization, expirations, duplicates, counters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import polars as pl


class UserKind(IntEnum):
    """The kinds of user identifier a membership can be keyed by.

    The store keys a user by (kind, key); the key's text form per kind is fixed here so that
    a legacy line, an Avro record and an HTTP lookup all name the same user the same way.
    """

    ANID = 1  # platform user ID, unsigned 64-bit, decimal text: "12345678900987654321"
    DEVICE = 2  # mobile device ID: "<domain>:<id lowercased>", domain e.g. "idfa"
    IFA = 3  # Avro ifa: "<type>:<id lowercased>"
    EXTERNAL = 4  # member's own ID: "<owner member_id>:<id>"
    EID = 5  # extended ID: "<source>:<id>"
    XFA = 6  # synthetic ID: "<device_make_id>:<device_model_id>:<ip>"


#: Legacy SEPARATOR5 device type numbers -> device_id domain names (6, sha1mac, is deprecated).
LEGACY_DEVICE_TYPES: dict[str, str] = {
    "3": "idfa",
    "4": "sha1udid",
    "5": "md5udid",
    "7": "openudid",
    "8": "aaid",
    "9": "windowsadid",
    "10": "rida",
}
#: Avro device_id domains (the published enum plus the newer additions).
DEVICE_DOMAINS = frozenset(
    {
        "idfa",
        "sha1udid",
        "md5udid",
        "openudid",
        "aaid",
        "windowsadid",
        "rida",
        "tifa",
        "vida",
        "lgudid",
    }
)

MAX_SEGMENTS_PER_LINE = 1800
MAX_UID = 2**64 - 1
MAX_VALUE = 2_147_483_647
MIN_VALUE = -2_147_483_648
#: A TIMESTAMP is whole UNIX seconds; anything above this (year 2286) is taken as milliseconds.
MAX_TIMESTAMP_SECONDS = 9_999_999_999

EXPIRATION_REMOVE = -1
EXPIRATION_MEMBER_DEFAULT = -2

# Reasons a reader gives for a rejected line. Texts are part of the report format.
REASON_ILLEGAL_FIELDS = "failed with an illegal number of fields"
REASON_DUPLICATE = "duplicate line"

LINE_SCHEMA: dict[str, pl.DataType] = {
    "line_no": pl.Int64(),  # 1-based physical line number (Avro: 1-based record number)
    "raw": pl.String(),  # the line as uploaded, without its terminator (Avro: record as JSON)
    "format_error": pl.String(),  # reason the line is invalid format; null when well formed
    "user_kind": pl.UInt8(),  # UserKind; null when format_error or user_error is set
    "user_key": pl.String(),  # text form per UserKind; null when invalid
    "user_error": pl.String(),  # reason the user ID is invalid; null when valid
}

PAIR_SCHEMA: dict[str, pl.DataType] = {
    "line_no": pl.Int64(),
    "pos": pl.Int32(),  # 0-based position of the SEG block in its line (file order)
    "seg_id": pl.Int64(),  # exactly one of seg_id / seg_code is set
    "seg_code": pl.String(),
    "seg_member_id": pl.Int64(),  # MEMBER_ID given with SEG_CODE; null = uploading member
    "expiration": pl.Int64(),  # minutes; null = not given; -1 remove; -2 member default
    "timestamp": pl.Int64(),  # UNIX seconds; null = not given (0 is "now" too)
    "value": pl.Int64(),  # null = not given
    "removal": pl.Boolean(),  # listed after SEPARATOR4
    "timestamp_invalid": pl.Boolean(),  # TIMESTAMP given but not whole seconds
    "value_invalid": pl.Boolean(),  # VALUE outside the signed 32-bit range
    "expiration_invalid": pl.Boolean(),  # EXPIRATION below -2 or beyond 64 bits
}


@dataclass(slots=True)
class ParsedChunk:
    """One stretch of the input, parsed. `lines` has LINE_SCHEMA, `pairs` PAIR_SCHEMA.

    `pairs` holds rows only for lines whose format_error is null (user errors included; the
    engine drops those). `input_offset` is how far into the (decompressed) input the reader
    has got after this chunk, in bytes, for progress reporting.

    A reader may leave `raw` null and give `render_raw` instead (the Avro reader does: the
    JSON text of every record costs more than reading it); then `line_hashes` holds, per
    line, a 64-bit hash that is equal for two well-formed lines exactly when their `raw`
    would be (the duplicate-line check), and `render_raw` gives the `raw` of chosen lines
    (by line_no) for the error report, while the chunk is being processed.
    """

    lines: pl.DataFrame
    pairs: pl.DataFrame
    input_offset: int
    line_hashes: pl.Series | None = None
    render_raw: Callable[[pl.Series], pl.Series] | None = None

    def with_raw(self) -> pl.DataFrame:
        """`lines` with `raw` filled in for every line."""
        if self.render_raw is None:
            return self.lines
        return self.lines.with_columns(raw=self.render_raw(self.lines["line_no"]))


def empty_lines() -> pl.DataFrame:
    return pl.DataFrame(schema=LINE_SCHEMA)


def empty_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema=PAIR_SCHEMA)
