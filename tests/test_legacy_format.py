"""The legacy text format reader: seed 004's examples, every malformed case, properties."""

from __future__ import annotations

import io
import tracemalloc
from dataclasses import dataclass, field

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from bss.formats import legacy as L
from bss.formats.config import BatchSegmentConfig
from bss.formats.legacy import iter_legacy_chunks, parse_legacy_text
from bss.formats.records import (
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    MAX_VALUE,
    MIN_VALUE,
    PAIR_SCHEMA,
    REASON_ILLEGAL_FIELDS,
    UserKind,
)

MEMBER = 958
PAIR_COLS = list(PAIR_SCHEMA)


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def cfg(**kwargs) -> BatchSegmentConfig:
    return BatchSegmentConfig(**kwargs)


def parse(text: str, config: BatchSegmentConfig | None = None, *, first: int = 1, member=MEMBER):
    lines, pairs = parse_legacy_text(text, first, config or cfg(), member)
    assert lines.schema == pl.Schema(LINE_SCHEMA)
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)
    return lines, pairs


def one_line(text: str, config: BatchSegmentConfig | None = None) -> dict:
    lines, _ = parse(text, config)
    assert lines.height == 1
    return lines.row(0, named=True)


def error_of(text: str, config: BatchSegmentConfig | None = None) -> str | None:
    return one_line(text, config)["format_error"]


def pair(line_no=1, pos=0, **kw) -> dict:
    row = {
        "line_no": line_no,
        "pos": pos,
        "seg_id": None,
        "seg_code": None,
        "seg_member_id": None,
        "expiration": None,
        "timestamp": None,
        "value": None,
        "removal": False,
        "timestamp_invalid": False,
        "value_invalid": False,
        "expiration_invalid": False,
    }
    assert set(kw) <= set(row), kw
    row.update(kw)
    return row


def pairs_of(pairs: pl.DataFrame) -> list[dict]:
    return pairs.to_dicts()


def only_pair(text: str, config: BatchSegmentConfig | None = None) -> dict:
    lines, pairs = parse(text, config)
    assert lines["format_error"].to_list() == [None]
    assert pairs.height == 1
    return pairs.row(0, named=True)


def user_of(text: str, config: BatchSegmentConfig | None = None) -> tuple:
    row = one_line(text, config)
    assert row["format_error"] is None
    return row["user_kind"], row["user_key"], row["user_error"]


UUID = "AEBE52E7-03EE-455A-B3C4-E57283966239"


# ----------------------------------------------------------------------------------------
# the six examples of seed 004
# ----------------------------------------------------------------------------------------


def test_example_1_seg_id_and_expiration():
    config = cfg(
        separator_1=",", separator_2=";", separator_3=":", segment_fields="[SEG_ID,EXPIRATION]"
    )
    lines, pairs = parse("12345678900987654321,10000:1440;10001:1440;10002:-1;10003:-1\n", config)
    assert lines.to_dicts() == [
        {
            "line_no": 1,
            "raw": "12345678900987654321,10000:1440;10001:1440;10002:-1;10003:-1",
            "format_error": None,
            "user_kind": UserKind.ANID,
            "user_key": "12345678900987654321",
            "user_error": None,
        }
    ]
    assert pairs_of(pairs) == [
        pair(pos=0, seg_id=10000, expiration=1440),
        pair(pos=1, seg_id=10001, expiration=1440),
        pair(pos=2, seg_id=10002, expiration=-1),
        pair(pos=3, seg_id=10003, expiration=-1),
    ]


def test_example_2_seg_code_with_separator4_removals():
    config = cfg(
        separator_1=",",
        separator_2=";",
        separator_3=None,
        separator_4="\t",
        separator_5=None,
        segment_fields=["SEG_CODE"],
    )
    text = "12345678900987654321,auto_intender;nike_shopper\tbicycle_intender;newbalance_shopper"
    lines, pairs = parse(text, config)
    assert lines["format_error"].to_list() == [None]
    assert lines["user_key"].to_list() == ["12345678900987654321"]
    assert pairs_of(pairs) == [
        pair(pos=0, seg_code="auto_intender"),
        pair(pos=1, seg_code="nike_shopper"),
        pair(pos=2, seg_code="bicycle_intender", removal=True),
        pair(pos=3, seg_code="newbalance_shopper", removal=True),
    ]


def test_example_2_with_default_separators_too():
    config = cfg(segment_fields=["SEG_CODE"])  # separator_3 ":" unused, SEP4 TAB default
    text = "12345678900987654321,auto_intender;nike_shopper\tbicycle_intender;newbalance_shopper"
    _, pairs = parse(text, config)
    assert pairs["seg_code"].to_list() == [
        "auto_intender",
        "nike_shopper",
        "bicycle_intender",
        "newbalance_shopper",
    ]
    assert pairs["removal"].to_list() == [False, False, True, True]


def test_example_3_separator1_equals_separator3():
    config = cfg(
        separator_1="\t",
        separator_2=None,
        separator_3="\t",
        separator_4=None,
        segment_fields="[TIMESTAMP,SEG_ID,VALUE,EXPIRATION]",
    )
    text = (
        "12345678900987654321\t1320689131\t10000\t0\t0\n"
        "12345678900987654321\t1320689131\t10001\t0\t0\n"
        "12345678900987654321\t1320689131\t10002\t0\t-1\n"
    )
    lines, pairs = parse(text, config)
    assert lines["line_no"].to_list() == [1, 2, 3]
    assert lines["format_error"].to_list() == [None, None, None]
    assert lines["user_kind"].to_list() == [UserKind.ANID] * 3
    assert lines["raw"].to_list() == text.splitlines()
    assert pairs_of(pairs) == [
        pair(line_no=1, seg_id=10000, timestamp=1320689131, value=0, expiration=0),
        pair(line_no=2, seg_id=10001, timestamp=1320689131, value=0, expiration=0),
        pair(line_no=3, seg_id=10002, timestamp=1320689131, value=0, expiration=-1),
    ]


def test_example_4_external_uids():
    config = cfg(segment_fields="[SEG_ID,EXPIRATION]", use_external_uids=True)
    lines, pairs = parse("abcdefg,10000:1440;10001:1440\nabcdefg,10002:1440;10003:1440\n", config)
    assert lines.select(
        "line_no", "format_error", "user_kind", "user_key", "user_error"
    ).rows() == [
        (1, None, UserKind.EXTERNAL, f"{MEMBER}:abcdefg", None),
        (2, None, UserKind.EXTERNAL, f"{MEMBER}:abcdefg", None),
    ]
    assert pairs_of(pairs) == [
        pair(line_no=1, pos=0, seg_id=10000, expiration=1440),
        pair(line_no=1, pos=1, seg_id=10001, expiration=1440),
        pair(line_no=2, pos=0, seg_id=10002, expiration=1440),
        pair(line_no=2, pos=1, seg_id=10003, expiration=1440),
    ]


def test_example_4_external_member_uid_names_the_owner():
    config = cfg(use_external_uids=True, external_member_uid=1234)
    assert user_of("abcdefg,10000:1440", config) == (UserKind.EXTERNAL, "1234:abcdefg", None)


def test_example_5_member_id_and_seg_code():
    config = cfg(
        separator_1=",",
        separator_2=";",
        separator_3=":",
        separator_4="\t",
        segment_fields="[MEMBER_ID,SEG_CODE]",
    )
    lines, pairs = parse("12345678900987654321,400:car_like;500:bike_like\n", config)
    assert lines["format_error"].to_list() == [None]
    assert pairs_of(pairs) == [
        pair(pos=0, seg_member_id=400, seg_code="car_like"),
        pair(pos=1, seg_member_id=500, seg_code="bike_like"),
    ]


def test_example_6_idfa_device():
    config = cfg(
        separator_1=",",
        separator_2=";",
        separator_3=":",
        separator_4="\t",
        separator_5="^",
        segment_fields="[SEG_ID,EXPIRATION]",
    )
    text = f"{UUID},10000:1440;10001:1440;10002:-1;10003:-1^3"
    lines, pairs = parse(text, config)
    assert lines.row(0, named=True) == {
        "line_no": 1,
        "raw": text,
        "format_error": None,
        "user_kind": UserKind.DEVICE,
        "user_key": f"idfa:{UUID.lower()}",
        "user_error": None,
    }
    assert pairs_of(pairs) == [
        pair(pos=0, seg_id=10000, expiration=1440),
        pair(pos=1, seg_id=10001, expiration=1440),
        pair(pos=2, seg_id=10002, expiration=-1),
        pair(pos=3, seg_id=10003, expiration=-1),
    ]


# ----------------------------------------------------------------------------------------
# lines: terminators, blanks, numbering
# ----------------------------------------------------------------------------------------


def test_crlf_blank_and_whitespace_lines_and_numbering():
    text = "1,5:0\r\n\r\n   \n\t\r\n2,6:0\r\n\n\x85\xa0\n3,7:0"
    lines, pairs = parse(text, first=10)
    assert lines["line_no"].to_list() == [10, 14, 17]
    assert lines["raw"].to_list() == ["1,5:0", "2,6:0", "3,7:0"]
    assert pairs.select("line_no", "seg_id").rows() == [(10, 5), (14, 6), (17, 7)]


def test_only_one_trailing_cr_is_stripped():
    row = one_line("1,5:0\r\r\n")
    assert row["raw"] == "1,5:0\r"
    assert row["format_error"] == L.REASON_BAD_EXPIRATION


def test_empty_text():
    lines, pairs = parse("")
    assert lines.height == 0 and pairs.height == 0
    lines, pairs = parse("\n\n \r\n")
    assert lines.height == 0 and pairs.height == 0


def test_raw_keeps_latin1_text():
    config = cfg(segment_fields=["SEG_CODE"])
    lines, pairs = parse("1,caf\xe9;\xff\xfe\n", config)
    assert lines["raw"].to_list() == ["1,caf\xe9;\xff\xfe"]
    assert pairs["seg_code"].to_list() == ["caf\xe9", "\xff\xfe"]


# ----------------------------------------------------------------------------------------
# layout and SEG block errors
# ----------------------------------------------------------------------------------------

D = cfg()  # documented defaults: , ; : TAB ^ and [SEG_ID,EXPIRATION]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12345", L.REASON_NO_SEPARATOR1),
        ("12345;5:0", L.REASON_NO_SEPARATOR1),
        ("1,5:0,6:0", L.REASON_MANY_SEPARATOR1),
        ("1,5:0\t6:0\t7:0", L.REASON_MANY_SEPARATOR4),
        ("1,\t\t5:0", L.REASON_MANY_SEPARATOR4),
        ("1,5:0^3^4", L.REASON_MANY_SEPARATOR5),
        ("1,5:0^^", L.REASON_MANY_SEPARATOR5),
        ("1,5:0^", L.REASON_EMPTY_AFTER_SEPARATOR5),
        ("1,5:0^6", "device type 6 (sha1mac) is deprecated"),
        ("1,5:0^11", "unknown device type 11"),
        ("1,5:0^0", "unknown device type 0"),
        ("1,5:0^03", "unknown device type 03"),
        ("1,5:0^99999999999999999999999", "unknown device type 99999999999999999999999"),
        ("1,", "no segments"),
        ("1,\t", "no segments"),
        ("1,^3", "no segments"),
        ("1,^example.com", "no segments"),
        ("1,5:0;;6:0", "empty SEG block"),
        ("1,5:0;", "empty SEG block"),
        ("1,;5:0", "empty SEG block"),
        ("1,;", "empty SEG block"),
        ("1,5:0\t", "empty SEG block"),
        ("1,5:0\t;6:0", "empty SEG block"),
        ("1,5:0;\t6:0", "empty SEG block"),
        ("1,\t6:0;", "empty SEG block"),
        ("1,5:0;^3", "empty SEG block"),
        ("1,5", REASON_ILLEGAL_FIELDS),
        ("1,5:0:1", REASON_ILLEGAL_FIELDS),
        ("1,5:0;6", REASON_ILLEGAL_FIELDS),
        ("1,5:0\t6", REASON_ILLEGAL_FIELDS),
        ("1,0:0", "SEG_ID is not a positive integer"),
        ("1,-5:0", "SEG_ID is not a positive integer"),
        ("1,+5:0", "SEG_ID is not a positive integer"),
        ("1, 5:0", "SEG_ID is not a positive integer"),
        ("1,5 :0", "SEG_ID is not a positive integer"),
        ("1,x:0", "SEG_ID is not a positive integer"),
        ("1,:0", "SEG_ID is not a positive integer"),
        ("1,5.0:0", "SEG_ID is not a positive integer"),
        ("1,9223372036854775808:0", "SEG_ID is not a positive integer"),
        ("1,5:", "EXPIRATION is not an integer"),
        ("1,5:abc", "EXPIRATION is not an integer"),
        ("1,5:+5", "EXPIRATION is not an integer"),
        ("1,5:1.5", "EXPIRATION is not an integer"),
        ("1,5:--1", "EXPIRATION is not an integer"),
        ("1,5:-", "EXPIRATION is not an integer"),
        ("1,5:1e3", "EXPIRATION is not an integer"),
        # first problem from the left wins within the SEG blocks
        ("1,5:x;;", "EXPIRATION is not an integer"),
        ("1,5:0:0;;", REASON_ILLEGAL_FIELDS),
        ("1,5:0;0:x", "SEG_ID is not a positive integer"),
        # line shape problems come before SEG block problems
        ("1,x:0^6", "device type 6 (sha1mac) is deprecated"),
        ("1,x:0\t\t", L.REASON_MANY_SEPARATOR4),
    ],
)
def test_format_errors_with_default_separators(text, reason):
    lines, pairs = parse(text + "\n", D)
    assert lines.to_dicts() == [
        {
            "line_no": 1,
            "raw": text,
            "format_error": reason,
            "user_kind": None,
            "user_key": None,
            "user_error": None,
        }
    ]
    assert pairs.height == 0


def test_domain_after_separator5_is_accepted_and_ignored():
    lines, pairs = parse("1,5:0^example.com\n2,6:0\t7:0^www.x.org", D)
    assert lines["format_error"].to_list() == [None, None]
    assert lines["user_key"].to_list() == ["1", "2"]
    assert pairs.select("line_no", "seg_id", "removal").rows() == [
        (1, 5, False),
        (2, 6, False),
        (2, 7, True),
    ]


def test_removals_only_line():
    _, pairs = parse("1,\t5:0;6:-1", D)
    assert pairs_of(pairs) == [
        pair(pos=0, seg_id=5, expiration=0, removal=True),
        pair(pos=1, seg_id=6, expiration=-1, removal=True),
    ]


def test_segment_count_limit():
    ok = "1," + ";".join(f"{i}:0" for i in range(1, MAX_SEGMENTS_PER_LINE + 1))
    lines, pairs = parse(ok, D)
    assert lines["format_error"].to_list() == [None]
    assert pairs.height == MAX_SEGMENTS_PER_LINE
    assert pairs["pos"].to_list() == list(range(MAX_SEGMENTS_PER_LINE))
    over = ok + ";99:0"
    assert error_of(over, D) == "more than 1800 segments on one line"
    split = "1," + ";".join(f"{i}:0" for i in range(1, 1001)) + "\t"
    split += ";".join(f"{i}:0" for i in range(1001, 1802))
    assert error_of(split, D) == "more than 1800 segments on one line"


def test_separator4_and_separator5_off_make_those_characters_data():
    config = cfg(separator_4=None, separator_5=None)
    assert error_of("1,5:0\t6:0", config) == REASON_ILLEGAL_FIELDS
    assert error_of("1,5:0^3", config) == "EXPIRATION is not an integer"
    config = cfg(separator_4=None, separator_5=None, segment_fields=["SEG_CODE"], separator_3=None)
    _, pairs = parse("1,a\tb;c^3", config)
    assert pairs["seg_code"].to_list() == ["a\tb", "c^3"]


def test_separator2_off_means_one_block_per_part():
    config = cfg(separator_2=None)
    assert error_of("1,5:0;6:0", config) == REASON_ILLEGAL_FIELDS
    _, pairs = parse("1,5:0\t6:-1^3", config.model_copy(update={"use_external_uids": True}))
    assert pairs_of(pairs) == [
        pair(pos=0, seg_id=5, expiration=0),
        pair(pos=1, seg_id=6, expiration=-1, removal=True),
    ]
    assert error_of("1,5:0\t", config) == "empty SEG block"
    assert error_of("1,\t", config) == "no segments"


def test_single_field_blocks_need_no_separator3():
    config = cfg(segment_fields=["SEG_ID"], separator_3=None)
    _, pairs = parse("1,5;6\t7", config)
    assert pairs.select("seg_id", "removal").rows() == [(5, False), (6, False), (7, True)]
    # with separator_3 configured, a single-field block must not contain it
    config = cfg(segment_fields=["SEG_ID"])
    assert error_of("1,5:0", config) == REASON_ILLEGAL_FIELDS


def test_separator1_equal_to_separator3_splits_uid_at_the_first():
    config = cfg(separator_1=":", separator_3=":", separator_5=None)
    _, pairs = parse("77:5:1440;6:0", config)
    assert pairs.select("seg_id", "expiration").rows() == [(5, 1440), (6, 0)]
    assert error_of("77:5:1440:1", config) == REASON_ILLEGAL_FIELDS
    assert error_of("77", config) == L.REASON_NO_SEPARATOR1


# ----------------------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------------------


def test_seg_id_range():
    assert only_pair("1,9223372036854775807:0")["seg_id"] == 2**63 - 1
    assert only_pair("1,0007:0")["seg_id"] == 7


def test_seg_code_length():
    config = cfg(segment_fields="[SEG_CODE,EXPIRATION]")
    assert only_pair("1," + "c" * 100 + ":5", config)["seg_code"] == "c" * 100
    assert error_of("1," + "c" * 101 + ":5", config) == "SEG_CODE is longer than 100 characters"
    assert error_of("1,\xe9" * 1 + "\xe9" * 100 + ":5", config) == (
        "SEG_CODE is longer than 100 characters"
    )
    assert error_of("1,:5", config) == "SEG_CODE is empty"
    assert only_pair("1,a b+c-1:5", config)["seg_code"] == "a b+c-1"


def test_member_id():
    config = cfg(segment_fields="[MEMBER_ID,SEG_CODE]")
    assert only_pair("1,12:abc", config)["seg_member_id"] == 12
    for bad in ("0", "-1", "+1", "x", "", "9223372036854775808", "1.0"):
        assert error_of(f"1,{bad}:abc", config) == "MEMBER_ID is not a positive integer", bad


@pytest.mark.parametrize(
    ("text", "expiration", "invalid"),
    [
        ("0", 0, False),
        ("-0", 0, False),
        ("-1", -1, False),
        ("-2", -2, False),
        ("-3", None, True),
        ("1440", 1440, False),
        ("0001440", 1440, False),
        ("9223372036854775807", 2**63 - 1, False),
        ("-9223372036854775808", None, True),
        ("9223372036854775808", None, True),
        ("-99999999999999999999999", None, True),
    ],
)
def test_expiration(text, expiration, invalid):
    p = only_pair(f"1,5:{text}")
    assert (p["expiration"], p["expiration_invalid"]) == (expiration, invalid)


@pytest.mark.parametrize(
    ("text", "timestamp"),
    [
        ("0", 0),
        ("1278250469", 1278250469),
        ("01278250469", 1278250469),
        (str(MAX_TIMESTAMP_SECONDS), MAX_TIMESTAMP_SECONDS),
        (str(MAX_TIMESTAMP_SECONDS + 1), None),
        ("1278250469000", None),
        ("1278250469.5", None),
        ("-5", None),
        ("-0", None),
        ("+5", None),
        ("abc", None),
        ("", None),
        (" 1", None),
        ("99999999999999999999999", None),
    ],
)
def test_timestamp(text, timestamp):
    config = cfg(segment_fields="[SEG_ID,TIMESTAMP]")
    p = only_pair(f"1,5:{text}", config)
    assert (p["timestamp"], p["timestamp_invalid"]) == (timestamp, timestamp is None)


@pytest.mark.parametrize(
    ("text", "value", "invalid"),
    [
        ("0", 0, False),
        ("310", 310, False),
        (str(MAX_VALUE), MAX_VALUE, False),
        (str(MIN_VALUE), MIN_VALUE, False),
        (str(MAX_VALUE + 1), None, True),
        (str(MIN_VALUE - 1), None, True),
        ("9223372036854775808", None, True),
        ("-99999999999999999999999999999", None, True),
        ("9" * 200, None, True),
    ],
)
def test_value(text, value, invalid):
    config = cfg(segment_fields="[SEG_ID,VALUE]")
    p = only_pair(f"1,5:{text}", config)
    assert (p["value"], p["value_invalid"]) == (value, invalid)


@pytest.mark.parametrize("text", ["", "abc", "1.5", "+1", "--1", "-", "1 ", "0x10"])
def test_value_not_an_integer(text):
    config = cfg(segment_fields="[SEG_ID,VALUE]")
    assert error_of(f"1,5:{text}", config) == "VALUE is not an integer"


def test_fields_in_configured_order_and_absent_fields_are_null():
    config = cfg(segment_fields="[VALUE,EXPIRATION,TIMESTAMP,SEG_ID]")
    assert only_pair("1,-7:-2:1278250469:42", config) == pair(
        seg_id=42, value=-7, expiration=-2, timestamp=1278250469
    )
    config = cfg(segment_fields="[SEG_CODE]", separator_3=None)
    assert only_pair("1,code", config) == pair(seg_code="code")


def test_field_errors_follow_segment_fields_order():
    config = cfg(segment_fields="[VALUE,SEG_ID]")
    assert error_of("1,x:0", config) == "VALUE is not an integer"
    config = cfg(segment_fields="[SEG_ID,VALUE]")
    assert error_of("1,0:x", config) == "SEG_ID is not a positive integer"


# ----------------------------------------------------------------------------------------
# user IDs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "key"),
    [
        ("1", "1"),
        ("0001", "1"),
        ("5727816213491965430", "5727816213491965430"),
        ("9223372036854775808", "9223372036854775808"),
        ("18446744073709551615", "18446744073709551615"),
        ("000018446744073709551615", "18446744073709551615"),
        ("0", None),
        ("0000", None),
        ("18446744073709551616", None),
        ("99999999999999999999999", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1 ", None),
        ("abc", None),
        ("", None),
        ("1.0", None),
        (UUID, None),
    ],
)
def test_platform_user_ids(uid, key):
    lines, pairs = parse(f"{uid},5:0", D)
    row = lines.row(0, named=True)
    assert row["format_error"] is None
    if key is None:
        assert (row["user_kind"], row["user_key"], row["user_error"]) == (
            None,
            None,
            "invalid user ID",
        )
    else:
        assert (row["user_kind"], row["user_key"], row["user_error"]) == (UserKind.ANID, key, None)
    assert pairs.height == 1  # user errors keep their pairs; the engine drops them


SHA1 = "0123456789abcdefABCDEF0123456789abcdef01"
MD5 = "0123456789abcdefABCDEF0123456789"


@pytest.mark.parametrize(
    ("number", "domain", "good", "bads"),
    [
        ("3", "idfa", UUID, [SHA1, MD5, UUID + "0", UUID.replace("-", ""), "", " " + UUID]),
        ("4", "sha1udid", SHA1, [UUID, MD5, SHA1 + "0", SHA1[:-1] + "g"]),
        ("5", "md5udid", MD5, [UUID, SHA1, MD5 + "0", MD5[:-1] + "x"]),
        ("7", "openudid", SHA1, [UUID, MD5, "", "abc"]),
        ("8", "aaid", UUID.lower(), [SHA1, "x" + UUID[1:], UUID + " "]),
        ("9", "windowsadid", UUID, [MD5, "{" + UUID + "}"]),
        ("10", "rida", UUID, [SHA1, "12345"]),
    ],
)
def test_device_ids(number, domain, good, bads):
    config = cfg(use_external_uids=True)  # a device type wins over external IDs
    assert user_of(f"{good},5:0^{number}", config) == (
        UserKind.DEVICE,
        f"{domain}:{good.lower()}",
        None,
    )
    assert user_of(f"{good},5:0^{number}", D) == (UserKind.DEVICE, f"{domain}:{good.lower()}", None)
    for bad in bads:
        assert user_of(f"{bad},5:0^{number}", D) == (None, None, f"invalid {domain} device ID"), bad


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("abcdefg", True),
        ("x" * 128, True),
        ("\xe9" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("a\xa0b", False),
        ("ab\x85", False),
        ("UPPER-case_ok.+=", True),
        ("0", True),
    ],
)
def test_external_user_ids(uid, ok):
    config = cfg(use_external_uids=True)
    expected = (
        (UserKind.EXTERNAL, f"{MEMBER}:{uid}", None)
        if ok
        else (
            None,
            None,
            "invalid external user ID",
        )
    )
    assert user_of(f"{uid},5:0", config) == expected


def test_member_id_argument_names_the_external_owner():
    config = cfg(use_external_uids=True)
    lines, _ = parse_legacy_text("u1,5:0", 1, config, 42)
    assert lines["user_key"].to_list() == ["42:u1"]


def test_format_error_lines_have_no_user_and_no_pairs():
    lines, pairs = parse("abc,5:x\n7,5:0\n0,6:0", D)
    assert lines.select("format_error", "user_kind", "user_key", "user_error").rows() == [
        ("EXPIRATION is not an integer", None, None, None),
        (None, UserKind.ANID, "7", None),
        (None, None, None, "invalid user ID"),
    ]
    assert pairs.select("line_no", "seg_id").rows() == [(2, 5), (3, 6)]


# ----------------------------------------------------------------------------------------
# chunked reading
# ----------------------------------------------------------------------------------------


def concat_chunks(data: bytes, config, chunk_bytes: int):
    chunks = list(iter_legacy_chunks(io.BytesIO(data), config, MEMBER, chunk_bytes))
    offsets = [c.input_offset for c in chunks]
    assert offsets == sorted(offsets)
    if data:
        assert offsets[-1] == len(data)
    lines = pl.concat([c.lines for c in chunks]) if chunks else pl.DataFrame(schema=LINE_SCHEMA)
    pairs = pl.concat([c.pairs for c in chunks]) if chunks else pl.DataFrame(schema=PAIR_SCHEMA)
    return lines, pairs


MIXED = (
    "12345678900987654321,10000:1440;10001:1440;10002:-1;10003:-1\r\n"
    "\n"
    f"{UUID},10000:1440\t10003:-1^3\n"
    "   \n"
    "1,5:x\n"
    "0,5:0\n"
    "caf\xe9,5:0\n"
    "7,5:0;6:0^example.com"
).encode("latin-1")


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 8, 13, 64, 1 << 20])
def test_chunking_gives_the_same_frames(chunk_bytes):
    expected = parse(MIXED.decode("latin-1"), D)
    got = concat_chunks(MIXED, D, chunk_bytes)
    assert_frame_equal(got[0], expected[0])
    assert_frame_equal(got[1], expected[1])
    assert got[0]["line_no"].to_list() == [1, 3, 5, 6, 7, 8]


def test_chunks_report_offsets_of_parsed_bytes():
    data = b"1,5:0\n2,6:0\n3,7:0"
    chunks = list(iter_legacy_chunks(io.BytesIO(data), D, MEMBER, 8))
    assert [c.input_offset for c in chunks] == [6, 12, 17]
    assert [c.lines["line_no"].to_list() for c in chunks] == [[1], [2], [3]]


def test_empty_stream_yields_nothing():
    assert list(iter_legacy_chunks(io.BytesIO(b""), D, MEMBER, 16)) == []


LONG = L.MAX_LINE_BYTES


@pytest.mark.parametrize(
    "line",
    [
        "1," + "9" * (LONG + 10),
        " " * (LONG + 10),
        " " * (LONG + 10) + "x",
        " " * LONG + "\r" + " " * 10,
        "1," + "9" * (LONG - 2),  # exactly the limit: not too long
        "1," + "9" * (LONG - 2) + "\r",  # the limit plus a CR
        "1," + "9" * (LONG - 1) + "\r",  # one above the limit plus a CR
        "1," + "9" * (LONG - 2) + "\r" + "xyz",
    ],
)
def test_overlong_lines(line):
    data = ("1,5:0\n" + line + "\n2,6:0\n").encode("latin-1")
    expected = parse(data.decode("latin-1"), D)
    for chunk_bytes in (1 << 16, 100_000, LONG + 7):
        got = concat_chunks(data, D, chunk_bytes)
        assert_frame_equal(got[0], expected[0])
        assert_frame_equal(got[1], expected[1])
    stripped = line.removesuffix("\r")
    too_long = len(stripped) > LONG
    rows = expected[0].filter(pl.col("line_no") == 2)
    if stripped.strip(L.WHITESPACE) == "":
        assert rows.height == 0
    else:
        reason = L.REASON_LINE_TOO_LONG if too_long else REASON_ILLEGAL_FIELDS
        assert rows["format_error"].to_list() == [reason]
        assert rows["raw"].to_list() == [stripped[:LONG]]
    assert expected[0]["line_no"].to_list()[-1] == 3


class EndlessLine(io.RawIOBase):
    """A stream of `size` bytes without a single line break, produced on the fly."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.largest_read = max(self.largest_read, n)
        self.left -= n
        return b"7" * n


def test_memory_is_bounded_without_line_breaks():
    stream = EndlessLine(64 << 20)
    tracemalloc.start()
    try:
        chunks = list(iter_legacy_chunks(stream, D, MEMBER, 1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.left == 0
    assert stream.largest_read == 1 << 20
    assert peak < 12 << 20  # a few chunks' worth, not the 64 MiB of input
    assert [c.lines["format_error"].to_list() for c in chunks] == [[L.REASON_LINE_TOO_LONG]]
    assert chunks[-1].input_offset == 64 << 20


# ----------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------

# Separator candidates: none of them is a digit, a hex letter, '-' or a line break.
SEPARATOR_POOL = list(",;:\t^~#@!%&=_ <>'\"`§\xa0°")
CODE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_.-+ \xe9\xff~#@!%&=<>"


@st.composite
def configs(draw) -> BatchSegmentConfig:
    key = draw(st.sampled_from(["SEG_ID", "SEG_CODE"]))
    optional = ["EXPIRATION", "TIMESTAMP", "VALUE"] + (["MEMBER_ID"] if key == "SEG_CODE" else [])
    fields = [key] + draw(st.lists(st.sampled_from(optional), unique=True))
    fields = draw(st.permutations(fields))
    seps = draw(st.lists(st.sampled_from(SEPARATOR_POOL), min_size=5, max_size=5, unique=True))
    sep1, sep2, sep3, sep4, sep5 = seps
    if draw(st.booleans()):
        sep3 = sep1
    if len(fields) == 1 and draw(st.booleans()):
        sep3 = None
    return cfg(
        separator_1=sep1,
        separator_2=draw(st.sampled_from([sep2, sep2, None])),
        separator_3=sep3,
        separator_4=draw(st.sampled_from([sep4, None])),
        separator_5=draw(st.sampled_from([sep5, None])),
        segment_fields=fields,
        use_external_uids=draw(st.booleans()),
        external_member_uid=draw(st.sampled_from([None, 77])),
    )


@dataclass
class Truth:
    text: str
    format_error: str | None = None
    user: tuple = (None, None, None)
    pairs: list[dict] = field(default_factory=list)


def _separators(config: BatchSegmentConfig) -> set[str]:
    return {
        s
        for s in (
            config.separator_1,
            config.separator_2,
            config.separator_3,
            config.separator_4,
            config.separator_5,
        )
        if s is not None
    }


@st.composite
def seg_blocks(draw, config: BatchSegmentConfig) -> tuple[str, dict]:
    """One valid SEG block and the pair it must give (line_no/pos/removal filled later)."""
    seps = _separators(config)
    row = pair()
    texts = []
    for name in config.segment_fields:
        if name == "SEG_ID":
            v = draw(st.one_of(st.integers(1, 99999), st.integers(1, 2**63 - 1)))
            zeros = "0" * draw(st.integers(0, 2))
            texts.append(zeros + str(v))
            row["seg_id"] = v
        elif name == "MEMBER_ID":
            v = draw(st.integers(1, 10**6))
            texts.append(str(v))
            row["seg_member_id"] = v
        elif name == "SEG_CODE":
            alphabet = "".join(c for c in CODE_ALPHABET if c not in seps)
            code = draw(st.text(alphabet, min_size=1, max_size=100))
            assume(code.strip(L.WHITESPACE))  # keep lines from looking blank
            texts.append(code)
            row["seg_code"] = code
        elif name == "EXPIRATION":
            v = draw(
                st.one_of(
                    st.integers(-2, 259200), st.integers(-(2**70), -3), st.integers(2**63, 2**70)
                )
            )
            texts.append(str(v))
            ok = -2 <= v < 2**63
            row["expiration"] = v if ok else None
            row["expiration_invalid"] = not ok
        elif name == "VALUE":
            v = draw(st.one_of(st.integers(MIN_VALUE, MAX_VALUE), st.integers(-(2**80), 2**80)))
            texts.append(str(v))
            ok = MIN_VALUE <= v <= MAX_VALUE
            row["value"] = v if ok else None
            row["value_invalid"] = not ok
        elif name == "TIMESTAMP":
            good = st.integers(0, MAX_TIMESTAMP_SECONDS).map(lambda v: (str(v), v))
            bad = st.sampled_from(
                [
                    "1278250469000",
                    "1278250469.5",
                    "-5",
                    "abc",
                    "",
                    "+7",
                    str(MAX_TIMESTAMP_SECONDS + 1),
                ]
            ).map(lambda t: (t, None))
            t, v = draw(st.one_of(good, bad))
            t = "".join(c for c in t if c not in seps)
            if v is None and t.isdigit() and int(t) <= MAX_TIMESTAMP_SECONDS:
                v = int(t)
            texts.append(t)
            row["timestamp"] = v
            row["timestamp_invalid"] = v is None
    return (config.separator_3 or "").join(texts), row


MUTATIONS = [
    "none",
    "none",
    "none",
    "bad_user",
    "no_sep1",
    "extra_field",
    "missing_field",
    "bad_key",
    "empty_block",
    "sha1mac",
    "unknown_device",
    "empty_after_sep5",
    "no_segments",
]


@st.composite
def truths(draw, config: BatchSegmentConfig) -> Truth:
    sep1, sep2, sep3 = config.separator_1, config.separator_2, config.separator_3
    sep4, sep5 = config.separator_4, config.separator_5
    n_fields = len(config.segment_fields)
    max_part = 4 if sep2 is not None else 1
    adds = draw(st.lists(seg_blocks(config), min_size=0, max_size=max_part))
    removes = draw(st.lists(seg_blocks(config), min_size=0, max_size=max_part)) if sep4 else []
    if not adds and not removes:
        adds = [draw(seg_blocks(config))]
    mutation = draw(st.sampled_from(MUTATIONS))

    # the user
    device = None
    if sep5 is not None and draw(st.booleans()):
        number, domain = draw(st.sampled_from(sorted(L.LEGACY_DEVICE_TYPES.items())))
        device_id = draw(
            st.sampled_from([UUID, UUID.lower()])
            if domain in ("idfa", "aaid", "windowsadid", "rida")
            else st.just(SHA1 if domain in ("sha1udid", "openudid") else MD5)
        )
        uid, device = device_id, (number, domain)
        user = (UserKind.DEVICE, f"{domain}:{uid.lower()}", None)
    elif config.use_external_uids:
        alphabet = "".join(c for c in "abcXYZ019_.-+!" if c not in _separators(config))
        uid = draw(st.text(alphabet, min_size=1, max_size=128))
        owner = config.external_member_uid or MEMBER
        user = (UserKind.EXTERNAL, f"{owner}:{uid}", None)
    else:
        v = draw(st.integers(1, 2**64 - 1))
        uid = "0" * draw(st.integers(0, 2)) + str(v)
        user = (UserKind.ANID, str(v), None)
    if mutation == "bad_user":
        if device:
            uid, user = "nope", (None, None, f"invalid {device[1]} device ID")
        elif config.use_external_uids:
            uid, user = "x" * 129, (None, None, "invalid external user ID")
        else:
            uid, user = (
                draw(st.sampled_from(["0", "18446744073709551616", "abc"])),
                (
                    None,
                    None,
                    "invalid user ID",
                ),
            )

    add_texts = [t for t, _ in adds]
    remove_texts = [t for t, _ in removes]
    error = None
    if mutation in ("extra_field", "missing_field", "bad_key", "empty_block"):
        where = draw(st.integers(0, len(adds) + len(removes) - 1))
        target = add_texts if where < len(adds) else remove_texts
        i = where if where < len(adds) else where - len(adds)
        if mutation == "extra_field" and sep3 is not None:
            target[i] = target[i] + sep3 + "1"
            error = REASON_ILLEGAL_FIELDS
        elif mutation == "missing_field" and n_fields > 1:
            target[i] = target[i].rsplit(sep3, 1)[0]
            assume(target[i] != "")  # e.g. an empty TIMESTAMP left alone
            error = REASON_ILLEGAL_FIELDS
        elif mutation == "bad_key":
            fields = target[i].split(sep3) if sep3 is not None else [target[i]]
            if "SEG_ID" in config.segment_fields:
                fields[config.segment_fields.index("SEG_ID")] = draw(
                    st.sampled_from(["0", "-4", "9223372036854775808", "x"])
                )
                error = "SEG_ID is not a positive integer"
            else:
                fields[config.segment_fields.index("SEG_CODE")] = "c" * 101
                error = "SEG_CODE is longer than 100 characters"
            target[i] = (sep3 or "").join(fields)
        elif mutation == "empty_block" and sep2 is not None:
            target.insert(draw(st.integers(0, len(target))), "")
            error = "empty SEG block"
    parts = sep1 + (sep2 or "").join(add_texts)
    if remove_texts:
        parts += sep4 + (sep2 or "").join(remove_texts)
    if mutation == "no_segments":
        parts = sep1 + draw(st.sampled_from(["", sep4 or ""]))
        error = "no segments"
    tail = ""
    if device:
        tail = sep5 + device[0]
    elif sep5 is not None and draw(st.booleans()):
        alphabet = "".join(c for c in "example.comXYZ" if c not in _separators(config))
        tail = sep5 + draw(st.text(alphabet, min_size=1, max_size=10))
    if sep5 is not None and mutation in ("sha1mac", "unknown_device", "empty_after_sep5"):
        number = {
            "sha1mac": "6",
            "unknown_device": draw(st.sampled_from(["0", "1", "2", "11", "03"])),
            "empty_after_sep5": "",
        }[mutation]
        tail = sep5 + number
        error = {
            "sha1mac": "device type 6 (sha1mac) is deprecated",
            "unknown_device": f"unknown device type {number}",
            "empty_after_sep5": "empty value after SEPARATOR5",
        }[mutation]
    if mutation == "no_sep1" and sep1 not in uid:
        line = uid + tail  # nothing but the user: no SEPARATOR1 at all
        error = L.REASON_NO_SEPARATOR1
    else:
        line = uid + parts + tail
    if error is not None:
        return Truth(line, format_error=error)
    expected = []
    for pos, (_, row) in enumerate(adds + removes):
        expected.append({**row, "pos": pos, "removal": pos >= len(adds)})
    return Truth(line, user=user, pairs=expected)


@st.composite
def files(draw):
    config = draw(configs())
    truths_ = draw(st.lists(truths(config), min_size=1, max_size=8))
    blank = draw(
        st.lists(
            st.sampled_from([None, None, "", " ", "\t", "\r", " \r", "\xa0"]),
            min_size=len(truths_),
            max_size=len(truths_),
        )
    )
    crlf = draw(st.booleans())
    return config, truths_, blank, crlf


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files())
def test_parser_recovers_the_generated_truth(case):
    config, truths_, blanks, crlf = case
    end = "\r\n" if crlf else "\n"
    text_lines, numbers = [], []
    for truth, blank in zip(truths_, blanks, strict=True):
        if blank is not None:
            text_lines.append(blank)
        text_lines.append(truth.text)
        numbers.append(len(text_lines))
    text = end.join(text_lines) + end
    lines, pairs = parse(text, config)
    assert lines["line_no"].to_list() == numbers
    assert lines["raw"].to_list() == [t.text for t in truths_]
    assert lines["format_error"].to_list() == [t.format_error for t in truths_]
    users = [t.user if t.format_error is None else (None, None, None) for t in truths_]
    assert lines.select("user_kind", "user_key", "user_error").rows() == users
    expected = [
        {**row, "line_no": n}
        for t, n in zip(truths_, numbers, strict=True)
        if t.format_error is None
        for row in t.pairs
    ]
    assert pairs.to_dicts() == expected
    # and the same through the chunked reader with a small chunk size
    data = text.encode("latin-1")
    got = concat_chunks(data, config, 7)
    assert_frame_equal(got[0], lines)
    assert_frame_equal(got[1], pairs)


LATIN1 = st.characters(min_codepoint=0, max_codepoint=255)
STRUCTURED = st.sampled_from(
    list(",;:\t^ \r\n-+0123456789abcdefABCDEF\xa0\x85é") + [UUID, "18446744073709551616"]
)


@settings(max_examples=300, deadline=None)
@given(
    configs(),
    st.one_of(st.text(LATIN1, max_size=300), st.lists(STRUCTURED, max_size=120).map("".join)),
    st.integers(1, 10**6),
)
def test_arbitrary_text_never_raises(config, text, first):
    lines, pairs = parse(text, config, first=first)
    physical = text.split("\n")
    expected = [
        (first + i, line.removesuffix("\r"))
        for i, line in enumerate(physical)
        if line.removesuffix("\r").strip(L.WHITESPACE)
    ]
    assert lines.select("line_no", "raw").rows() == expected
    good = set(lines.filter(pl.col("format_error").is_null())["line_no"].to_list())
    assert set(pairs["line_no"].to_list()) == good
    # every well-formed line has its blocks at positions 0..n-1
    counts = pairs.group_by("line_no").agg(pl.len(), pl.col("pos").max())
    assert all(n == top + 1 for n, top in counts.select("len", "pos").rows())
    bad = lines.filter(pl.col("format_error").is_not_null())
    assert bad["user_kind"].null_count() == bad.height
    assert bad["user_error"].null_count() == bad.height
    users = lines.filter(pl.col("format_error").is_null())
    assert all(
        (kind is None) == (key is None) == (err is not None)
        for kind, key, err in users.select("user_kind", "user_key", "user_error").rows()
    )


@settings(max_examples=200, deadline=None)
@given(
    configs(),
    st.lists(STRUCTURED, max_size=200).map("".join),
    st.integers(1, 40),
)
def test_chunking_invariance(config, text, chunk_bytes):
    data = text.encode("latin-1")
    lines, pairs = parse(text, config)
    got = concat_chunks(data, config, chunk_bytes)
    assert_frame_equal(got[0], lines)
    assert_frame_equal(got[1], pairs)


@pytest.mark.parametrize("pieces", [2, 3, 5])
def test_parallel_pieces_give_the_same_frames(monkeypatch, pieces):
    text = (MIXED.decode("latin-1") + "\n") * 40 + "\n\n9,9:9"
    expected = parse(text, D, first=5)
    monkeypatch.setattr(L, "PARALLEL_MIN_CHARS", 64)
    monkeypatch.setattr(L, "PARALLEL_PIECES", pieces)
    assert len(L._cut(text, pieces)) == pieces
    got = parse(text, D, first=5)
    assert_frame_equal(got[0], expected[0])
    assert_frame_equal(got[1], expected[1])
    assert got[0]["line_no"].to_list()[-1] == 5 + text.count("\n")


@settings(max_examples=100, deadline=None)
@given(st.lists(STRUCTURED, max_size=200).map("".join), st.integers(1, 6))
def test_cut_keeps_every_character_and_cuts_after_line_breaks(text, n):
    saved = L.PARALLEL_MIN_CHARS
    L.PARALLEL_MIN_CHARS = 0
    try:
        pieces = L._cut(text, n)
    finally:
        L.PARALLEL_MIN_CHARS = saved
    assert "".join(pieces) == text
    assert 1 <= len(pieces) <= max(n, 1)
    assert all(p.endswith("\n") for p in pieces[:-1])
    assert all(pieces) or text == ""


def test_many_small_pieces_on_few_threads(monkeypatch):
    text = (MIXED.decode("latin-1") + "\n") * 30
    expected = parse(text, D)
    monkeypatch.setattr(L, "PARALLEL_MIN_CHARS", 64)
    monkeypatch.setattr(L, "PARALLEL_PIECES", 2)
    monkeypatch.setattr(L, "PIECE_CHARS", 100)
    got = parse(text, D)
    assert_frame_equal(got[0], expected[0])
    assert_frame_equal(got[1], expected[1])


class Trickle(io.RawIOBase):
    """A raw stream that returns at most `step` bytes per read, like a pipe or a decompressor."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.step = step
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        n = self.step if n < 0 else min(n, self.step)
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_short_reads_are_gathered_into_full_chunks():
    data = MIXED * 20
    stream = Trickle(data, 3)
    chunks = list(iter_legacy_chunks(stream, D, MEMBER, 400))
    # one chunk per 400 bytes read, plus the last line (no final line break) on its own
    assert len(chunks) == -(-len(data) // 400) + 1
    expected = parse(data.decode("latin-1"), D)
    assert_frame_equal(pl.concat([c.lines for c in chunks]), expected[0])
    assert_frame_equal(pl.concat([c.pairs for c in chunks]), expected[1])
