"""The Avro reader: files written by fastavro and by the Apache `avro` package, every uid
branch, the segment rules, custom schemas, corrupt files and chunking.

Java avro-tools is not available in this environment, so no file here is written by it;
the Apache Python package writes the same container format (and its bzip2/deflate codecs).
"""

from __future__ import annotations

import functools
import gzip
import io
import json

import fastavro
import polars as pl
import pytest
from avro_util import segment, user, write_apache, write_fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bss.formats import open_input, read_chunks
from bss.formats.avro import (
    DEFAULT_MAX_BLOCK_BYTES,
    iter_avro_chunks,
    published_schema,
)
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError
from bss.formats.records import (
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
    MAX_TIMESTAMP_SECONDS,
    PAIR_SCHEMA,
    UserKind,
)

MEMBER = 958
CONFIG = BatchSegmentConfig()


def parse(data: bytes, config: BatchSegmentConfig = CONFIG, **kwargs) -> tuple[pl.DataFrame, ...]:
    chunks = list(iter_avro_chunks(io.BytesIO(data), config, MEMBER, **kwargs))
    lines = (
        pl.concat([c.with_raw() for c in chunks]) if chunks else pl.DataFrame(schema=LINE_SCHEMA)
    )
    pairs = pl.concat([c.pairs for c in chunks]) if chunks else pl.DataFrame(schema=PAIR_SCHEMA)
    return lines, pairs


def error_of(data: bytes, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        parse(data, **kwargs)
    return info.value


def custom_schema(uid_branches: list, segment_fields: list | None = None, extra=()) -> dict:
    """A member's own schema: a subset of uid branches, optional extra fields."""
    seg_fields = segment_fields or [
        {"name": "id", "type": "int", "default": 0},
        {"name": "code", "type": "string", "default": ""},
        {"name": "member_id", "type": "int", "default": 0},
        {"name": "expiration", "type": "int", "default": 0},
        {"name": "timestamp", "type": "long", "default": 0},
        {"name": "value", "type": "int", "default": 0},
    ]
    return {
        "type": "record",
        "name": "member_user",
        "namespace": "com.example",
        "fields": [
            {"name": "uid", "type": uid_branches},
            *extra,
            {
                "name": "segments",
                "type": {
                    "type": "array",
                    "items": {"type": "record", "name": "segment", "fields": seg_fields},
                },
            },
        ],
    }


IFA = {"type": "record", "name": "ifa", "fields": [
    {"name": "id", "type": "string"}, {"name": "type", "type": "string"}]}  # fmt: skip
EID = {"type": "record", "name": "eid", "fields": [
    {"name": "source", "type": "string"}, {"name": "id", "type": "string"}]}  # fmt: skip


# --------------------------------------------------------------------------------------
# The published schema
# --------------------------------------------------------------------------------------


def test_published_schema_is_shipped_and_valid():
    s = published_schema()
    assert (s["namespace"], s["name"], s["type"]) == ("xandr.avro", "user", "record")
    uid, segments = s["fields"]
    assert uid["name"] == "uid" and segments["name"] == "segments"
    assert uid["type"][0]["type"] == "long"  # anid is a plain long branch
    names = [b.get("name") for b in uid["type"]]
    assert names == ["anid", "ifa", "xfa", "external_id", "device_id", "eid"]
    items = segments["type"]["items"]
    defaults = {f["name"]: f["default"] for f in items["fields"]}
    assert defaults == {
        "id": 0, "code": "", "member_id": 0, "expiration": 0, "timestamp": 0, "value": 0,
    }  # fmt: skip
    fastavro.parse_schema(s)
    import avro.schema

    avro.schema.parse(json.dumps(s))


# --------------------------------------------------------------------------------------
# Every uid branch, with every writer and codec
# --------------------------------------------------------------------------------------

ALL_BRANCHES = [
    # (branch, value, expected kind, expected key)
    ("anid", 12345678900987654, UserKind.ANID, "12345678900987654"),
    ("anid", -1, UserKind.ANID, "18446744073709551615"),
    ("anid", -6101027440228797295, UserKind.ANID, str(-6101027440228797295 + 2**64)),
    ("ifa", {"id": "AEBE52E7-03EE-455A-B3C4-E57283966239", "type": "IDFA"}, UserKind.IFA,
     "idfa:aebe52e7-03ee-455a-b3c4-e57283966239"),
    ("xfa", {"device_model_id": 41, "device_make_id": 7, "ip": "203.0.113.9"}, UserKind.XFA,
     "7:41:203.0.113.9"),
    ("external_id", {"id": "CustomerABC", "member_id": 1234}, UserKind.EXTERNAL,
     "1234:CustomerABC"),
    ("external_id", {"id": "CustomerABC", "member_id": 0}, UserKind.EXTERNAL,
     f"{MEMBER}:CustomerABC"),
    ("device_id", {"id": "958CBA26-F338-43F3-8BB0-ED821582DAAE", "domain": "idfa"},
     UserKind.DEVICE, "idfa:958cba26-f338-43f3-8bb0-ed821582daae"),
    ("device_id", {"id": "Abc", "domain": "lgudid"}, UserKind.DEVICE, "lgudid:abc"),
    ("eid", {"source": "LiveRamp.com", "id": "XY1000aBc"}, UserKind.EID,
     "liveramp.com:XY1000aBc"),
]  # fmt: skip

WRITERS = [
    ("fastavro", "null"),
    ("fastavro", "deflate"),
    ("fastavro", "snappy"),
    ("fastavro", "bzip2"),
    ("fastavro", "xz"),
    ("apache", "null"),
    ("apache", "deflate"),
    ("apache", "snappy"),
    ("apache", "bzip2"),
]


def write(writer: str, records: list, codec: str, **kwargs) -> bytes:
    if writer == "fastavro":
        return write_fastavro(records, codec=codec, **kwargs)
    return write_apache(records, codec=codec, **kwargs)


@pytest.mark.parametrize(("writer", "codec"), WRITERS)
def test_every_uid_branch(writer, codec):
    records = [
        user(branch, value, [segment(id=100 + i, expiration=1440), segment(code=f"c{i}")])
        for i, (branch, value, _, _) in enumerate(ALL_BRANCHES)
    ]
    lines, pairs = parse(write(writer, records, codec))
    assert lines.schema == pl.Schema(LINE_SCHEMA)
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)
    assert lines["line_no"].to_list() == list(range(1, len(ALL_BRANCHES) + 1))
    assert lines["format_error"].to_list() == [None] * len(ALL_BRANCHES)
    assert lines["user_error"].to_list() == [None] * len(ALL_BRANCHES)
    assert lines["user_kind"].to_list() == [int(k) for _, _, k, _ in ALL_BRANCHES]
    assert lines["user_key"].to_list() == [key for _, _, _, key in ALL_BRANCHES]
    expected_pairs = []
    for i in range(len(ALL_BRANCHES)):
        expected_pairs.append(
            {"line_no": i + 1, "pos": 0, "seg_id": 100 + i, "seg_code": None,
             "seg_member_id": None, "expiration": 1440, "timestamp": None, "value": 0,
             "removal": False, "timestamp_invalid": False, "value_invalid": False,
             "expiration_invalid": False}
        )  # fmt: skip
        expected_pairs.append(
            {"line_no": i + 1, "pos": 1, "seg_id": None, "seg_code": f"c{i}",
             "seg_member_id": None, "expiration": 0, "timestamp": None, "value": 0,
             "removal": False, "timestamp_invalid": False, "value_invalid": False,
             "expiration_invalid": False}
        )  # fmt: skip
    assert pairs.to_dicts() == expected_pairs


def test_raw_is_compact_json_of_the_record():
    records = [
        user("anid", 12345, [segment(id=123)]),
        user("device_id", {"id": "958cba26", "domain": "aaid"}, [segment(code="x", member_id=5)]),
    ]
    lines, _ = parse(write_fastavro(records))
    seg = '"code":"","member_id":0,"expiration":0,"timestamp":0,"value":0'
    assert lines["raw"].to_list() == [
        '{"uid":{"long":12345},"segments":[{"id":123,' + seg + "}]}",
        '{"uid":{"device_id":{"id":"958cba26","domain":"aaid"}},"segments":[{"id":0,'
        '"code":"x","member_id":5,"expiration":0,"timestamp":0,"value":0}]}',
    ]


def test_external_id_owner_defaults_to_external_member_uid():
    config = BatchSegmentConfig(external_member_uid=777, use_external_uids=True)
    records = [
        user("external_id", {"id": "u1", "member_id": 0}, [segment(id=1)]),
        user("external_id", {"id": "u2", "member_id": 55}, [segment(id=1)]),
    ]
    lines, _ = parse(write_fastavro(records), config=config)
    assert lines["user_key"].to_list() == ["777:u1", "55:u2"]


@pytest.mark.parametrize(
    ("branch", "value", "error"),
    [
        ("anid", 0, "anid 0 is not a valid user ID"),
        ("ifa", {"id": "", "type": "idfa"}, "ifa id is empty"),
        ("ifa", {"id": "abc", "type": ""}, "ifa type is empty"),
        ("xfa", {"device_model_id": 1, "device_make_id": 2, "ip": ""}, "xfa ip is empty"),
        ("external_id", {"id": "", "member_id": 3}, "external_id id is empty"),
        ("device_id", {"id": "", "domain": "idfa"}, "device_id id is empty"),
        ("eid", {"source": "", "id": "x"}, "eid source is empty"),
        ("eid", {"source": "netid.de", "id": ""}, "eid id is empty"),
    ],
)
def test_invalid_user_ids_are_user_errors(branch, value, error):
    lines, pairs = parse(write_fastavro([user(branch, value, [segment(id=9)])]))
    row = lines.row(0, named=True)
    assert (row["format_error"], row["user_kind"], row["user_key"]) == (None, None, None)
    assert row["user_error"] == error
    assert pairs["seg_id"].to_list() == [9]  # pairs kept: the engine drops user errors


def test_device_domain_outside_the_known_set_is_a_user_error():
    device = {"type": "record", "name": "device_id", "fields": [
        {"name": "id", "type": "string"},
        {"name": "domain", "type": {"type": "enum", "name": "domain",
                                    "symbols": ["idfa", "sha1mac", "RIDA"]}}]}  # fmt: skip
    s = custom_schema([device])
    records = [
        {"uid": {"id": "A", "domain": "sha1mac"}, "segments": [segment(id=1)]},
        {"uid": {"id": "B", "domain": "RIDA"}, "segments": [segment(id=1)]},
    ]
    lines, _ = parse(write_fastavro(records, writer_schema=s))
    assert lines["user_error"].to_list() == ["device_id domain 'sha1mac' is not supported", None]
    assert lines["user_key"].to_list() == [None, "rida:b"]


# --------------------------------------------------------------------------------------
# Segment rules
# --------------------------------------------------------------------------------------


def test_segment_fields():
    segs = [
        segment(id=5, code="ignored", member_id=77, expiration=-1, timestamp=1320689131, value=7),
        segment(code="auto_intender", member_id=400, expiration=-2),
        segment(code="own_code", expiration=0, value=-2_147_483_648),
        segment(id=6, expiration=-3),
        segment(id=7, timestamp=-1),
        segment(id=8, timestamp=MAX_TIMESTAMP_SECONDS),
        segment(id=9, value=2_147_483_647),
    ]
    lines, pairs = parse(write_fastavro([user("anid", 42, segs)]))
    assert lines["format_error"].to_list() == [None]
    cols = ["seg_id", "seg_code", "seg_member_id", "expiration", "timestamp", "value",
            "removal", "timestamp_invalid", "value_invalid", "expiration_invalid"]  # fmt: skip
    assert pairs.select(cols).rows() == [
        (5, None, None, -1, 1320689131, 7, False, False, False, False),
        (None, "auto_intender", 400, -2, None, 0, False, False, False, False),
        (None, "own_code", None, 0, None, -2_147_483_648, False, False, False, False),
        (6, None, None, None, None, 0, False, False, False, True),
        (7, None, None, 0, None, 0, False, True, False, False),
        (8, None, None, 0, MAX_TIMESTAMP_SECONDS, 0, False, False, False, False),
        (9, None, None, 0, None, 2_147_483_647, False, False, False, False),
    ]  # fmt: skip
    assert pairs["pos"].to_list() == list(range(7))


def test_wide_custom_types_flag_out_of_range_values():
    fields = [
        {"name": "id", "type": "long", "default": 0},
        {"name": "expiration", "type": "long", "default": 0},
        {"name": "timestamp", "type": "long", "default": 0},
        {"name": "value", "type": ["null", "long"], "default": None},
    ]
    s = custom_schema(["long"], segment_fields=fields)
    segs = [
        {"id": 1, "expiration": 5, "timestamp": MAX_TIMESTAMP_SECONDS + 1, "value": 2**31},
        {"id": 2, "expiration": -(2**40), "timestamp": 10, "value": -(2**31) - 1},
        {"id": 3, "expiration": 2**40, "timestamp": 0, "value": None},
    ]
    _, pairs = parse(write_fastavro([{"uid": 1, "segments": segs}], writer_schema=s))
    cols = ["seg_id", "seg_code", "expiration", "timestamp", "value", "timestamp_invalid",
            "value_invalid", "expiration_invalid"]  # fmt: skip
    assert pairs.select(cols).rows() == [
        (1, None, 5, None, None, True, True, False),
        (2, None, None, 10, None, False, True, True),
        (3, None, 2**40, None, None, False, False, False),
    ]


def test_absent_segment_fields_are_null():
    s = custom_schema(["long"], segment_fields=[{"name": "code", "type": "string"}])
    _, pairs = parse(write_fastavro([{"uid": 1, "segments": [{"code": "abc"}]}], writer_schema=s))
    assert pairs.row(0, named=True) == {
        "line_no": 1, "pos": 0, "seg_id": None, "seg_code": "abc", "seg_member_id": None,
        "expiration": None, "timestamp": None, "value": None, "removal": False,
        "timestamp_invalid": False, "value_invalid": False, "expiration_invalid": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("segs", "error"),
    [
        ([], "no segments"),
        ([segment(id=1), segment(expiration=5)], "segment has neither id nor code"),
        (
            [segment(id=1)] * (MAX_SEGMENTS_PER_LINE + 1),
            f"more than {MAX_SEGMENTS_PER_LINE} segments",
        ),
    ],
)
def test_format_errors_drop_the_whole_record(segs, error):
    records = [
        user("anid", 1, [segment(id=3)]),
        user("anid", 2, segs),
        user("anid", 3, [segment(id=4)]),
    ]
    lines, pairs = parse(write_fastavro(records))
    assert lines["format_error"].to_list() == [None, error, None]
    assert lines["user_kind"].to_list() == [1, None, 1]
    assert lines["user_key"].to_list() == ["1", None, "3"]
    assert pairs.select("line_no", "seg_id").rows() == [(1, 3), (3, 4)]


def test_max_segments_per_record_is_accepted():
    segs = [segment(id=i + 1) for i in range(MAX_SEGMENTS_PER_LINE)]
    lines, pairs = parse(write_fastavro([user("anid", 1, segs)]))
    assert lines["format_error"].to_list() == [None]
    assert pairs.height == MAX_SEGMENTS_PER_LINE
    assert pairs["pos"].to_list() == list(range(MAX_SEGMENTS_PER_LINE))


# --------------------------------------------------------------------------------------
# Custom schemas
# --------------------------------------------------------------------------------------


def test_custom_schema_with_extra_fields_and_a_subset_of_branches():
    seg_fields = [
        {"name": "note", "type": "string", "default": ""},
        {"name": "code", "type": ["null", "string"], "default": None},
        {"name": "id", "type": ["null", "int"], "default": None},
        {"name": "expiration", "type": "int", "default": 0},
        {"name": "weight", "type": "double", "default": 1.5},
    ]
    extra = [
        {"name": "source_file", "type": "string"},
        {"name": "attrs", "type": {"type": "map", "values": "bytes"}},
    ]
    s = custom_schema(["null", EID, IFA], segment_fields=seg_fields, extra=extra)
    records = [
        {"uid": ("com.example.eid", {"source": "NetID.de", "id": "Q1"}), "source_file": "a",
         "attrs": {"k": b"\x00\xff"},
         "segments": [{"note": "n", "code": None, "id": 10, "expiration": 60, "weight": 2.0}]},
        {"uid": ("com.example.ifa", {"id": "X", "type": "aaid"}), "source_file": "b", "attrs": {},
         "segments": [{"note": "", "code": "cc", "id": None, "expiration": -1, "weight": 0.0}]},
        {"uid": None, "source_file": "c", "attrs": {}, "segments": [{"id": 1}]},
    ]  # fmt: skip
    lines, pairs = parse(write_fastavro(records, writer_schema=s))
    assert lines["user_kind"].to_list() == [UserKind.EID, UserKind.IFA, None]
    assert lines["user_key"].to_list() == ["netid.de:Q1", "aaid:x", None]
    assert lines["format_error"].to_list() == [None, None, "uid has no recognised ID type"]
    assert json.loads(lines["raw"][0])["uid"] == {"eid": {"source": "NetID.de", "id": "Q1"}}
    assert json.loads(lines["raw"][0])["attrs"] == {"k": str(b"\x00\xff")}
    assert pairs.select("line_no", "seg_id", "seg_code", "expiration", "value").rows() == [
        (1, 10, None, 60, None),
        (2, None, "cc", -1, None),
    ]


def test_uid_that_is_a_single_record_or_a_plain_long():
    lines, _ = parse(write_fastavro([{"uid": {"id": "a", "type": "T"}, "segments": [segment(id=1)]}],
                                    writer_schema=custom_schema(IFA)))  # fmt: skip
    assert lines.select("user_kind", "user_key").row(0) == (UserKind.IFA, "t:a")
    lines, _ = parse(write_fastavro([{"uid": -2, "segments": [segment(id=1)]}],
                                    writer_schema=custom_schema("long")))  # fmt: skip
    assert lines.select("user_kind", "user_key").row(0) == (UserKind.ANID, str(2**64 - 2))
    assert json.loads(lines["raw"][0])["uid"] == -2


def test_unknown_uid_branch_is_a_format_error():
    other = {"type": "record", "name": "cookie", "fields": [{"name": "v", "type": "string"}]}
    s = custom_schema(["long", other, "string"])
    records = [
        {"uid": ("com.example.cookie", {"v": "x"}), "segments": [segment(id=1)]},
        {"uid": "abc", "segments": [segment(id=1)]},
        {"uid": 5, "segments": [segment(id=1)]},
    ]
    lines, pairs = parse(write_fastavro(records, writer_schema=s))
    assert lines["format_error"].to_list() == ["uid has no recognised ID type"] * 2 + [None]
    assert json.loads(lines["raw"][0])["uid"] == {"cookie": {"v": "x"}}
    assert pairs["line_no"].to_list() == [3]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ([{"name": "segments", "type": {"type": "array", "items": "int"}}], "no `uid` field"),
        ([{"name": "uid", "type": "long"}], "no `segments` field"),
        ([{"name": "x", "type": "long"}], "no `uid` field and no `segments` field"),
        ([{"name": "uid", "type": "string"},
          {"name": "segments", "type": {"type": "array", "items": "int"}}], "no recognised ID"),
        ([{"name": "uid", "type": "long"}, {"name": "segments", "type": "string"}],
         "array of records"),
        ([{"name": "uid", "type": "long"},
          {"name": "segments", "type": {"type": "array", "items": {
              "type": "record", "name": "s", "fields": [{"name": "v", "type": "int"}]}}}],
         "neither an `id` nor a `code`"),
    ],
)  # fmt: skip
def test_schema_without_uid_or_segments_is_rejected(fields, needle):
    s = {"type": "record", "name": "other", "fields": fields}
    err = error_of(write_fastavro([], writer_schema=s))
    assert err.error_code == "avro_schema_invalid"
    assert needle in err.message


def test_non_record_schema_is_rejected():
    buf = io.BytesIO()
    fastavro.writer(buf, {"type": "array", "items": "long"}, [[1, 2]])
    assert error_of(buf.getvalue()).error_code == "avro_schema_invalid"


# --------------------------------------------------------------------------------------
# Corrupt files
# --------------------------------------------------------------------------------------


def sample_records(n: int = 60) -> list:
    out = []
    for i in range(n):
        branch, value, _, _ = ALL_BRANCHES[i % len(ALL_BRANCHES)]
        out.append(user(branch, value, [segment(id=i + 1, value=i), segment(code=f"s{i}")]))
    return out


def header_length(data: bytes) -> int:
    """Offset of the first block: the header ends with the first sync marker."""
    reader = fastavro.reader(io.BytesIO(data))
    sync = reader._header["sync"]  # noqa: SLF001
    return data.index(sync) + len(sync)


def test_not_avro_and_empty():
    assert error_of(b"").error_code == "corrupt_avro"
    assert error_of(b"Obj").error_code == "corrupt_avro"
    assert error_of(b"12345,1:2\n").error_code == "corrupt_avro"
    assert parse(write_fastavro([]))[0].height == 0  # a valid file without records


def test_sync_marker_mismatch():
    data = bytearray(write_fastavro(sample_records(), sync_interval=200))
    last_sync = data.rindex(data[header_length(data) - 16 : header_length(data)])
    data[last_sync + 3] ^= 0xFF
    err = error_of(bytes(data))
    assert err.error_code == "corrupt_avro"
    assert "sync marker" in err.message


def test_snappy_checksum_is_verified():
    data = bytearray(write_fastavro(sample_records(5), codec="snappy"))
    data[-17] ^= 0x01  # last byte of the only block's CRC
    err = error_of(bytes(data))
    assert (err.error_code, "checksum" in err.message) == ("corrupt_avro", True)


def test_unknown_codec_is_refused():
    data = write_fastavro(sample_records(3), codec="deflate").replace(b"deflate", b"brotlix", 1)
    err = error_of(data)
    assert err.error_code == "unsupported_compression"
    assert "brotlix" in err.message


def test_decompression_bomb_is_bounded():
    bomb = [user("anid", 1, [segment(code="x" * 100_000)])] * 20  # ~2 MB, compresses to kB
    data = write_fastavro(bomb, codec="deflate", sync_interval=10**9)
    assert len(data) < 100_000
    assert error_of(data, max_block_bytes=1 << 20).error_code == "decompression_limit_exceeded"
    err = error_of(data, max_decompressed_bytes=1 << 20)
    assert err.error_code == "decompression_limit_exceeded"
    assert parse(data)[0].height == 20  # within the default limit of DEFAULT_MAX_BLOCK_BYTES
    assert DEFAULT_MAX_BLOCK_BYTES >= 64 << 20


def test_block_claiming_more_records_than_bytes():
    data = bytearray(write_fastavro(sample_records(3)))
    start = header_length(data)
    assert data[start] == 6  # the record count, zig-zag encoded: 3
    data[start : start + 1] = bytes([0xFE, 0xFF, 0x3F])  # 524287 records
    err = error_of(bytes(data))
    assert err.error_code == "corrupt_avro"
    assert "claims 524287 records" in err.message


SMALL_FILES = {
    codec: write_fastavro(sample_records(12), codec=codec, sync_interval=300)
    for codec in ("null", "deflate", "snappy")
}


@functools.cache
def small_file_raws(codec: str) -> list[str]:
    return parse(SMALL_FILES[codec])[0]["raw"].to_list()


def boundary_cuts(data: bytes) -> list[int]:
    """Cuts where the reader meets something new: in the magic and the header, and at, just
    before and just after each sync marker and the next block's count and size."""
    sync = data[header_length(data) - 16 : header_length(data)]
    marks = [i for i in range(len(data)) if data[i : i + 16] == sync]
    cuts = {0, 1, 3, 4, 5, len(data) // 3, len(data) - 1}
    for mark in marks:
        cuts |= {mark + d for d in (-2, -1, 0, 1, 8, 15, 16, 17, 18, 19)}
    return sorted(cut for cut in cuts if 0 <= cut < len(data))


@pytest.mark.parametrize("codec", sorted(SMALL_FILES))
def test_truncated_at_each_boundary_of_a_small_file(codec):
    data = SMALL_FILES[codec]
    for cut in boundary_cuts(data):
        check_prefix_or_corrupt(data[:cut], small_file_raws(codec))


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(sorted(SMALL_FILES)), draw=st.data())
def test_truncated_at_generated_offsets_of_a_small_file(codec, draw):
    """Any offset (every offset was tried once; the cuts above are where outcomes change)."""
    data = SMALL_FILES[codec]
    head = header_length(data)
    # half the cuts among the blocks, where the reader has the most to get wrong
    cut = draw.draw(
        st.one_of(st.integers(0, len(data) - 1), st.integers(head - 16, len(data) - 1)),
        label="cut",
    )
    check_prefix_or_corrupt(data[:cut], small_file_raws(codec))


def parse_until_error(data: bytes, **kwargs) -> tuple[list[str], InputError | None]:
    """The raw records handed over before the reader stopped, and its error if any."""
    raws: list[str] = []
    try:
        for chunk in iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER, **kwargs):
            raws.extend(chunk.with_raw()["raw"].to_list())
    except InputError as exc:
        return raws, exc
    return raws, None


def check_prefix_or_corrupt(data: bytes, raws: list[str]) -> None:
    """A cut file gives a prefix of the records, then (unless cut between blocks) an error."""
    got, error = parse_until_error(data, records_per_chunk=5)
    if error is not None:
        assert error.error_code == "corrupt_avro", error.message
    assert got == raws[: len(got)]


CORRUPTION_FILES = {
    codec: write_fastavro(sample_records(40), codec=codec, sync_interval=400)
    for codec in ("null", "deflate", "snappy")
}
CORRUPTION_FILES["apache-deflate"] = write_apache(sample_records(40), codec="deflate")


@functools.cache
def corruption_file_raws(name: str) -> list[str]:
    return parse(CORRUPTION_FILES[name])[0]["raw"].to_list()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CORRUPTION_FILES)),
    cut=st.floats(0, 1),
)
def test_truncated_files_parse_a_prefix_or_fail_cleanly(name, cut):
    data = CORRUPTION_FILES[name]
    check_prefix_or_corrupt(data[: int(len(data) * cut)], corruption_file_raws(name))


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CORRUPTION_FILES)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_flipped_bytes_fail_cleanly(name, flips, cut):
    data = bytearray(CORRUPTION_FILES[name])
    head = header_length(bytes(data))
    positions = []
    for where, mask in flips:
        pos = min(int(where * len(data)), len(data) - 1)
        data[pos] ^= mask
        positions.append(pos)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    try:
        lines, pairs = parse(bytes(data))
    except InputError as exc:
        allowed = {"corrupt_avro"}
        if min(positions) < head:  # the header, schema and codec included, was damaged
            allowed |= {"avro_schema_invalid", "unsupported_compression"}
        assert exc.error_code in allowed, (exc.error_code, exc.message)
        return
    assert lines.schema == pl.Schema(LINE_SCHEMA)
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)


def test_records_before_a_corrupt_block_are_handed_over():
    records = sample_records(40)
    data = bytearray(write_fastavro(records, sync_interval=400))
    full = parse(bytes(data))[0]["raw"].to_list()
    sync = data[header_length(data) - 16 : header_length(data)]
    third = [i for i in range(len(data)) if data[i : i + 16] == sync][3]
    data[third + 5] ^= 0xFF  # damage the sync marker after the third block
    results = [parse_until_error(bytes(data), records_per_chunk=n) for n in (1, 7, 100_000)]
    for got, error in results:
        assert error is not None and "sync marker" in error.message
        assert got == results[0][0]
    assert 0 < len(results[0][0]) < len(full)
    assert results[0][0] == full[: len(results[0][0])]


def test_heavy_records_end_a_chunk_early(monkeypatch):
    import bss.formats.avro_reference as reference

    monkeypatch.setattr(reference, "MAX_PAIRS_PER_CHUNK", 10)
    records = [user("anid", i + 1, [segment(id=j + 1) for j in range(4)]) for i in range(9)]
    data = write_fastavro(records)
    chunks = list(iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER, native=False))
    assert [c.pairs.height for c in chunks] == [12, 12, 12]
    monkeypatch.setattr(reference, "MAX_PAIRS_PER_CHUNK", 10**9)
    monkeypatch.setattr(reference, "MAX_RAW_CHARS_PER_CHUNK", 1)
    chunks = list(iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER, native=False))
    assert [c.lines.height for c in chunks] == [1] * 9


@pytest.mark.parametrize("native", [False, True])
def test_reading_is_streamed(native, monkeypatch):
    class Counting(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)
            self.consumed = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            n = self.inner.readinto(buffer)
            self.consumed += n
            return n

    records = [user("anid", i + 1, [segment(id=1, code="x" * 200)]) for i in range(30_000)]
    data = write_fastavro(records)
    stream = Counting(data)
    if native:  # a batch of blocks per chunk, the first about 1,000 records of ~220 bytes
        import bss.formats.avro as avro_format

        monkeypatch.setattr(avro_format, "BATCH_BYTES", 4 * 220_000)  # the first: a quarter
    chunks = iter_avro_chunks(stream, CONFIG, MEMBER, records_per_chunk=1000, native=native)
    first = next(chunks)
    assert first.lines.height == 1000 if not native else 900 < first.lines.height < 1200
    assert stream.consumed < len(data) // 2  # not the whole file
    assert 0 < first.input_offset <= stream.consumed
    offsets = [first.input_offset] + [c.input_offset for c in chunks]
    assert offsets == sorted(offsets) and offsets[-1] == len(data)


# --------------------------------------------------------------------------------------
# Chunking, and the way in through read_chunks (gzip)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_chunking_invariance(codec):
    records = sample_records(57)
    records[10] = user("anid", 0, [segment(id=1)])
    records[20] = user("anid", 5, [])
    data = write_fastavro(records, codec=codec, sync_interval=500)

    def chunks_of(n: int) -> list:
        return list(iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER, n, native=False))

    one, big, seven = chunks_of(1), chunks_of(100_000), chunks_of(7)
    assert [c.lines.height for c in one] == [1] * 57
    assert len(big) == 1 and len(seven) == 9
    for chunks in (one, seven):
        assert pl.concat([c.lines for c in chunks]).equals(big[0].lines)
        assert pl.concat([c.pairs for c in chunks]).equals(big[0].pairs)
    assert one[-1].input_offset == big[0].input_offset == len(data)


def test_gzipped_avro_through_read_chunks(tmp_path):
    records = sample_records(25)
    path = tmp_path / "upload.avro.gz"
    path.write_bytes(gzip.compress(write_fastavro(records, codec="deflate")))
    with open_input(path, 10 << 20) as source:
        assert source.kind == "avro"
        chunks = list(read_chunks(source, config=CONFIG, member_id=MEMBER, chunk_bytes=1 << 20))
    lines = pl.concat([c.lines for c in chunks])
    assert lines.height == 25
    assert lines["user_key"].to_list()[:2] == [ALL_BRANCHES[0][3], ALL_BRANCHES[1][3]]


# --------------------------------------------------------------------------------------
# The vectorized segment rules agree with the per-segment reference implementation
# --------------------------------------------------------------------------------------

WIDE_SEGMENT = [
    {"name": "id", "type": "long", "default": 0},
    {"name": "code", "type": ["null", "string"], "default": None},
    {"name": "member_id", "type": "long", "default": 0},
    {"name": "expiration", "type": "long", "default": 0},
    {"name": "timestamp", "type": "long", "default": 0},
    {"name": "value", "type": ["null", "long"], "default": None},
]
segments_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from([0, 0, 1, 77, 2**31 - 1, -5, 2**62]),
            "code": st.sampled_from([None, "", "", "a", "Auto_Intender"]),
            "member_id": st.sampled_from([0, 0, 7, -1]),
            "expiration": st.sampled_from([-(2**40), -3, -2, -1, 0, 1440, 2**40]),
            "timestamp": st.sampled_from([-1, 0, 0, 1, MAX_TIMESTAMP_SECONDS, 2**40]),
            "value": st.sampled_from([None, 0, -(2**31) - 1, -(2**31), 2**31 - 1, 2**31]),
        }
    ),
    max_size=4,
)


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.tuples(st.sampled_from([0, 1, 2**63 - 1, -(2**63)]), segments_strategy), max_size=25
    ),
    per_chunk=st.integers(1, 30),
)
def test_vectorized_segments_match_the_reference(records, per_chunk):
    import bss.formats.avro_schema as avro_schema

    s = custom_schema(["null", "long"], segment_fields=WIDE_SEGMENT)
    data = write_fastavro([{"uid": u, "segments": segs} for u, segs in records], writer_schema=s)
    fast = parse(data, records_per_chunk=per_chunk, native=False)
    native = parse(data)
    original = avro_schema.fast_segments_ok
    avro_schema.fast_segments_ok = lambda fields, named: False
    try:
        slow = parse(data, records_per_chunk=per_chunk)
    finally:
        avro_schema.fast_segments_ok = original
    assert native[0].equals(slow[0])
    assert native[1].equals(slow[1])
    assert fast[0].equals(slow[0])
    assert fast[1].equals(slow[1])


def test_fast_path_is_chosen_only_for_plain_segment_types():
    from bss.formats.avro_schema import plan_reading as _plan

    def plan_of(seg_fields):
        return _plan(json.dumps(custom_schema(["long"], segment_fields=seg_fields)).encode())

    assert plan_of(WIDE_SEGMENT).fast_segments
    assert _plan(json.dumps(published_schema()).encode()).fast_segments
    assert not plan_of([{"name": "id", "type": "string"}]).fast_segments
    assert not plan_of(
        [{"name": "id", "type": {"type": "int", "logicalType": "date"}}]
    ).fast_segments
    assert not plan_of(
        [{"name": "code", "type": {"type": "string", "logicalType": "uuid"}}]
    ).fast_segments


def test_segments_as_a_union_of_records_use_the_reference_rules():
    seg = {"type": "record", "name": "seg", "fields": [
        {"name": "id", "type": "int", "default": 0}, {"name": "code", "type": "string"}]}  # fmt: skip
    s = {
        "type": "record",
        "name": "u",
        "fields": [
            {"name": "uid", "type": "long"},
            {"name": "segments", "type": {"type": "array", "items": ["null", seg]}},
        ],
    }
    records = [
        {"uid": 1, "segments": [("seg", {"id": 5, "code": ""}), ("seg", {"id": 0, "code": "c"})]},
        {"uid": 2, "segments": [("seg", {"id": 5, "code": ""}), None]},
        {"uid": 3, "segments": [("seg", {"id": 0, "code": ""})]},
    ]
    lines, pairs = parse(write_fastavro(records, writer_schema=s))
    assert lines["format_error"].to_list() == [
        None,
        "segment is not a record",
        "segment has neither id nor code",
    ]
    assert pairs.select("line_no", "pos", "seg_id", "seg_code").rows() == [
        (1, 0, 5, None),
        (1, 1, None, "c"),
    ]


def test_segment_id_given_as_text_in_a_custom_schema():
    s = custom_schema(["long"], segment_fields=[{"name": "id", "type": "string"}])
    records = [
        {"uid": 1, "segments": [{"id": "123"}]},
        {"uid": 2, "segments": [{"id": "12a"}]},
        {"uid": 3, "segments": [{"id": ""}]},
    ]
    lines, pairs = parse(write_fastavro(records, writer_schema=s))
    assert lines["format_error"].to_list() == [
        None,
        "segment id is not an integer",
        "segment id is not an integer",
    ]
    assert pairs["seg_id"].to_list() == [123]
