"""The native Avro reader (DuckDB's avro extension) against the reference reader (fastavro).

Generated files (every uid branch, every codec, other schemas, duplicates, damaged bytes)
are read both ways; the lines, pairs, raw records, duplicates, errors and, through the
engine, the counters, logs, error report and applied memberships must be identical.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fastavro
import polars as pl
import pyarrow as pa
import pytest
from avro_util import schema, write_apache, write_fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bss.formats.avro as avro_format
from bss.formats import open_input, read_chunks
from bss.formats.avro import iter_avro_chunks
from bss.formats.avro_native import extension_path, has_boolean
from bss.formats.avro_schema import plan_reading
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError
from bss.ingest.engine import ingest_file
from bss.ingest.registry import SegmentRegistry

MEMBER = 958
CONFIG = BatchSegmentConfig()
NOW = 1_700_000_000

pytestmark = pytest.mark.skipif(
    extension_path() is None, reason="duckdb-extension-avro for the installed duckdb is missing"
)


# --------------------------------------------------------------------------------------
# Writer schemas: the published one and members' own
# --------------------------------------------------------------------------------------


def _reordered() -> dict[str, Any]:
    """Branches in another order, another namespace, extra fields at both levels."""
    s = schema()
    s["namespace"] = "com.acme.segments"
    s["name"] = "member_record"
    uid, segments = s["fields"]
    uid["type"] = list(reversed(uid["type"]))
    items = segments["type"]["items"]
    items["fields"].insert(2, {"name": "weight", "type": "long", "default": 0})
    s["fields"] = [
        {"name": "batch", "type": "string", "default": ""},
        uid,
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        segments,
    ]
    return s


_DEVICE_TEXT_DOMAIN = {
    "type": "record",
    "name": "device_id",
    "fields": [{"name": "id", "type": "string"}, {"name": "domain", "type": "string"}],
}
_EXTERNAL_NULLABLE = {
    "type": "record",
    "name": "external_id",
    "fields": [
        {"name": "id", "type": ["null", "string"], "default": None},
        {"name": "member_id", "type": ["null", "long"], "default": None},
    ],
}
_IFA = {
    "type": "record",
    "name": "ifa",
    "fields": [{"name": "id", "type": "string"}],  # no `type` field: always a user error
}


def _nullable() -> dict[str, Any]:
    """A null branch, text domains (any value), nullable fields, a branch missing a field."""
    return {
        "type": "record",
        "name": "user",
        "namespace": "org.example",
        "fields": [
            {
                "name": "uid",
                "type": ["null", _DEVICE_TEXT_DOMAIN, "long", _EXTERNAL_NULLABLE, _IFA],
            },
            {
                "name": "segments",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "seg",
                        "fields": [
                            {"name": "code", "type": ["null", "string"], "default": None},
                            {"name": "id", "type": ["null", "long"], "default": None},
                            {"name": "value", "type": "long", "default": 0},
                        ],
                    },
                },
            },
        ],
    }


def _single() -> dict[str, Any]:
    s = schema()
    s["fields"][0]["type"] = "long"
    return s


SCHEMAS = {"published": schema(), "reordered": _reordered(), "nullable": _nullable()}
SCHEMAS["single"] = _single()

TEXT = ["", "", "abc", "AbC-9", "İstanbul", "straße", "ΣΑΣ", 'q"\\\n\x01', "😀x"]
DOMAINS_TEXT = ["idfa", "IDFA", "aaid", "bogus", "", "Ünknown", "rida"]
DOMAINS_ENUM = [
    "idfa", "sha1udid", "md5udid", "openudid", "aaid", "windowsadid", "rida", "tifa",
    "vida", "lgudid",
]  # fmt: skip
ANIDS = [0, 1, -1, 12345, 2**63 - 1, -(2**63)]


def _branch_names(s: dict[str, Any]) -> list[str]:
    uid = s["fields"][[f["name"] for f in s["fields"]].index("uid")]["type"]
    if not isinstance(uid, list):
        return ["long"]
    return ["null" if b == "null" else b if isinstance(b, str) else b["name"] for b in uid]


@st.composite
def uid_st(draw: st.DrawFn, schema_name: str) -> Any:
    s = SCHEMAS[schema_name]
    names = _branch_names(s)
    name = draw(st.sampled_from(names))
    text = st.sampled_from(TEXT)
    small = st.sampled_from([0, 0, 7, -1, 2**31 - 1])
    ns = s.get("namespace", "")
    if name in ("long",) or (name == "anid"):
        return draw(st.sampled_from(ANIDS))
    if name == "null":
        return None
    if schema_name == "nullable":
        if name == "device_id":
            value = {"id": draw(text), "domain": draw(st.sampled_from(DOMAINS_TEXT))}
        elif name == "external_id":
            value = {
                "id": draw(st.one_of(st.none(), text)),
                "member_id": draw(st.sampled_from([None, 0, 5, 2**40])),
            }
        else:
            value = {"id": draw(text)}
        return (f"{ns}.{name}", value)
    value = {
        "ifa": lambda: {"id": draw(text), "type": draw(text)},
        "xfa": lambda: {
            "device_model_id": draw(small),
            "device_make_id": draw(small),
            "ip": draw(text),
        },  # fmt: skip
        "external_id": lambda: {"id": draw(text), "member_id": draw(small)},
        "device_id": lambda: {"id": draw(text), "domain": draw(st.sampled_from(DOMAINS_ENUM))},
        "eid": lambda: {"source": draw(text), "id": draw(text)},
    }[name]()
    return (f"{ns}.{name}", value)


@st.composite
def segment_st(draw: st.DrawFn, schema_name: str) -> dict[str, Any]:
    if schema_name == "nullable":
        return {
            "code": draw(st.sampled_from([None, "", "c", "Auto"])),
            "id": draw(st.sampled_from([None, 0, 5, 2**40])),
            "value": draw(st.sampled_from([0, 2**31, -(2**31) - 1, 7])),
        }
    seg = {
        "id": draw(st.sampled_from([0, 0, 5, 7, -3])),
        "code": draw(st.sampled_from(["", "c", "Auto", "ü"])),
        "member_id": draw(st.sampled_from([0, 0, 9])),
        "expiration": draw(st.sampled_from([-3, -2, -1, 0, 60])),
        "timestamp": draw(st.sampled_from([0, -1, 10**10, NOW])),
        "value": draw(st.sampled_from([0, 2**31 - 1, -(2**31)])),
    }
    if schema_name == "reordered":
        seg["weight"] = draw(st.sampled_from([0, 3]))
    return seg


@st.composite
def file_st(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    schema_name = draw(st.sampled_from(sorted(SCHEMAS)))
    record = st.fixed_dictionaries(
        {
            "uid": uid_st(schema_name),
            "segments": st.lists(segment_st(schema_name), max_size=4),
        }
    )
    records = draw(st.lists(record, min_size=1, max_size=40))
    repeats = draw(st.lists(st.integers(0, len(records) - 1), max_size=6))
    records += [records[i] for i in repeats]
    if schema_name == "reordered":
        for r in records:
            r["batch"] = draw(st.sampled_from(["", "b1"]))
            r["note"] = draw(st.sampled_from([None, "n"]))
            r["tags"] = draw(st.sampled_from([[], ["t"], ["t", "u"]]))
    return schema_name, records


def read_both(data: bytes, **kwargs: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(lines, pairs, hashes, error) natively and by reference; small batches natively."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(avro_format, "BATCH_BYTES", 700)
        native = _read(data, native=True, **kwargs)
    return native, _read(data, native=False, **kwargs)


def _read(data: bytes, **kwargs: Any) -> tuple[Any, ...]:
    chunks = []
    error = None
    try:
        for chunk in iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER, **kwargs):
            chunks.append(chunk)
    except InputError as exc:
        error = (exc.error_code, exc.message)
    if not chunks:
        return None, None, None, error
    lines = pl.concat([c.with_raw() for c in chunks])
    pairs = pl.concat([c.pairs for c in chunks])
    hashes = [c.line_hashes for c in chunks]
    return lines, pairs, hashes, error


def assert_same(native: tuple[Any, ...], reference: tuple[Any, ...]) -> None:
    n_lines, n_pairs, hashes, n_error = native
    r_lines, r_pairs, _, r_error = reference
    assert n_error == r_error
    if r_lines is None:
        assert n_lines is None
        return
    assert n_lines.equals(r_lines), (n_lines, r_lines)
    assert n_pairs.equals(r_pairs)
    # The duplicate-line identity: equal hashes exactly where the raw texts are equal.
    if hashes and all(h is not None for h in hashes):
        frame = n_lines.with_columns(h=pl.concat(hashes)).filter(pl.col("format_error").is_null())
        by_raw = frame.group_by("raw").agg(pl.col("h").n_unique())
        assert by_raw["h"].max() in (None, 1)
        assert frame["h"].n_unique() == frame["raw"].n_unique()


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    file=file_st(),
    codec=st.sampled_from(["null", "deflate", "snappy", "bzip2", "xz"]),
    sync_interval=st.sampled_from([100, 400, 16000]),
)
def test_native_matches_the_reference(file, codec, sync_interval):
    schema_name, records = file
    data = write_fastavro(
        records, codec=codec, writer_schema=SCHEMAS[schema_name], sync_interval=sync_interval
    )
    assert plan_reading(__import__("json").dumps(SCHEMAS[schema_name]).encode()).not_native is None
    native, reference = read_both(data)
    assert_same(native, reference)
    assert all(h is not None for h in native[2])  # read natively, every batch


CORRUPTION_FILE = write_fastavro(
    [
        {"uid": ("xandr.avro.device_id", {"id": f"D{i}", "domain": "idfa"}), "segments": []}
        if i % 7 == 3
        else {
            "uid": i * 1_000_003,
            "segments": [
                {
                    "id": 5 + i % 3 * 2,
                    "code": "",
                    "member_id": 0,
                    "expiration": 0,
                    "timestamp": 0,
                    "value": i,
                }
            ],
        }  # fmt: skip
        for i in range(60)
    ],
    sync_interval=300,
)


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.floats(0.05, 1), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.floats(0.05, 1)),
)
def test_damaged_files_give_the_same_records_and_error(flips, cut):
    """What came before the damage is handed over, the same error (and record number) after."""
    data = bytearray(CORRUPTION_FILE)
    for where, mask in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= mask
    if cut is not None:
        data = data[: int(len(data) * cut)]
    native, reference = read_both(bytes(data))
    assert_same(native, reference)


def test_every_writer_and_codec_of_the_apache_package():
    records = [
        {
            "uid": 10 + i,
            "segments": [
                {
                    "id": i + 1,
                    "code": "",
                    "member_id": 0,
                    "expiration": 0,
                    "timestamp": 0,
                    "value": 0,
                }
            ],
        }  # fmt: skip
        for i in range(30)
    ]
    for codec in ("null", "deflate", "snappy", "bzip2"):
        native, reference = read_both(write_apache(records, codec=codec))
        assert_same(native, reference)
        assert native[0].height == 30
        assert all(h is not None for h in native[2])


def test_schemas_the_native_reader_cannot_take_are_read_by_the_reference():
    s = schema()
    s["fields"].insert(1, {"name": "score", "type": "double", "default": 0.0})
    plan = plan_reading(__import__("json").dumps(s).encode())
    assert plan.not_native == "field score: type double"
    records = [
        {"uid": 5, "score": -0.0, "segments": [{"id": 1}]},
        {"uid": 5, "score": 0.0, "segments": [{"id": 1}]},
    ]
    data = write_fastavro(
        [
            {**r, "segments": [{**schema_defaults(), **seg} for seg in r["segments"]]}
            for r in records
        ],
        writer_schema=s,
    )
    chunks = list(iter_avro_chunks(io.BytesIO(data), CONFIG, MEMBER))
    assert all(c.render_raw is None for c in chunks)
    assert '"score":-0.0' in chunks[0].lines["raw"][0]


def schema_defaults() -> dict[str, Any]:
    return {"id": 0, "code": "", "member_id": 0, "expiration": 0, "timestamp": 0, "value": 0}


def test_gzip_wrapped_avro_takes_the_native_path(tmp_path: Path):
    records = [
        {"uid": 1 + i, "segments": [{**schema_defaults(), "id": i % 3 + 1}]} for i in range(50)
    ]
    path = tmp_path / "upload.avro.gz"
    path.write_bytes(gzip.compress(write_fastavro(records, codec="bzip2", sync_interval=200)))
    with open_input(path, 10 << 20) as source:
        chunks = list(read_chunks(source, config=CONFIG, member_id=MEMBER, chunk_bytes=1 << 20))
    assert all(c.render_raw is not None for c in chunks)
    assert pl.concat([c.lines for c in chunks])["user_key"].to_list() == [
        str(1 + i) for i in range(50)
    ]


# --------------------------------------------------------------------------------------
# Through the engine: counters, logs, the error report and the memberships
# --------------------------------------------------------------------------------------


class RecordingStore:
    """A membership store that keeps every applied batch, to compare two runs exactly."""

    def __init__(self) -> None:
        self.batches: list[pa.Table] = []

    def apply(self, batch: pa.Table) -> None:
        self.batches.append(batch)

    def apply_many(
        self,
        batches: Iterable[pa.Table],
        progress: Callable[[float], None] | None = None,
        written: object = None,
    ) -> None:
        for batch in batches:
            self.apply(batch)

    def applied(self) -> list[dict[str, Any]]:
        if not self.batches:
            return []
        return pa.concat_tables(self.batches).sort_by("seq").to_pylist()


REGISTRY = SegmentRegistry.from_records(
    [
        {"id": 5, "member_id": MEMBER},
        {"id": 7, "member_id": MEMBER, "state": "inactive"},
        {"id": 9, "code": "c", "member_id": MEMBER, "expire_minutes": 30},
        {"id": 10, "code": "auto", "member_id": 9},
    ]
)


def ingest(path: Path, tmp_path: Path, native: bool, config: BatchSegmentConfig = CONFIG):
    report = tmp_path / f"errors-{native}.csv"
    store = RecordingStore()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(avro_format, "BATCH_BYTES", 700)
        if not native:
            mp.setattr(avro_format, "extension_path", lambda: None)
        result = ingest_file(
            path,
            member_id=MEMBER,
            seq_base=3_000,
            config=config,
            registry=REGISTRY,
            store=store,  # type: ignore[arg-type]
            now=NOW,
            error_report_path=report,
            max_decompressed_bytes=1 << 30,
        )
    return result, report.read_text(), store.applied()


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    file=file_st(),
    codec=st.sampled_from(["null", "deflate", "xz"]),
    limit=st.sampled_from([None, 5]),
)
def test_engine_results_are_identical(tmp_path_factory, file, codec, limit):
    schema_name, records = file
    tmp_path = tmp_path_factory.mktemp("engine")
    path = tmp_path / "in.avro"
    path.write_bytes(
        write_fastavro(records, codec=codec, writer_schema=SCHEMAS[schema_name], sync_interval=300)
    )
    config = BatchSegmentConfig(num_invalid_before_error=limit, num_error_log_lines=50)
    native = ingest(path, tmp_path, True, config)
    reference = ingest(path, tmp_path, False, config)
    assert native[0] == reference[0]
    assert native[1] == reference[1]
    assert native[2] == reference[2]


def _undecodable_record() -> tuple[bytes, str]:
    """The corruption file with one byte changed two thirds in, so that a record there
    cannot be decoded (the framing around it intact); and the reference's error message."""
    reader = fastavro.reader(io.BytesIO(CORRUPTION_FILE))
    sync = reader._header["sync"]  # noqa: SLF001
    body = CORRUPTION_FILE.index(sync) + len(sync)
    for pos in range(body + (len(CORRUPTION_FILE) - body) * 2 // 3, len(CORRUPTION_FILE)):
        data = bytearray(CORRUPTION_FILE)
        data[pos] ^= 0xFF
        error = _read(bytes(data), native=False)[3]
        if error and "cannot be decoded" in error[1]:
            return bytes(data), error[1]
    raise AssertionError("no single byte makes a record undecodable")


def test_engine_results_are_identical_for_a_damaged_file(tmp_path):
    data, message = _undecodable_record()
    assert message.startswith("Avro record ")
    path = tmp_path / "in.avro"
    path.write_bytes(data)
    native, reference = ingest(path, tmp_path, True), ingest(path, tmp_path, False)
    assert (native[0].error_code, native[0].error_message) == ("corrupt_avro", message)
    assert native[0].counters.num_valid > 0
    assert native == reference


def test_duplicates_across_the_hand_over_to_the_reference(tmp_path):
    """Records read natively, then repeated in the batch the reference reader takes over
    (a damaged record after them): the repeats are duplicates on both paths alike."""
    records = [
        {"uid": 1_000 + i, "segments": [{**schema_defaults(), "id": 5, "value": i}]}
        for i in range(150)
    ]
    data = write_fastavro(records + records[:8] + records[:8], sync_interval=150)
    reader = fastavro.reader(io.BytesIO(data))
    sync = reader._header["sync"]  # noqa: SLF001
    last_block = data.rindex(sync, 0, len(data) - len(sync)) + len(sync)
    for pos in range(len(data) - len(sync) - 1, last_block, -1):
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        error = _read(bytes(damaged), native=False)[3]
        if error and "cannot be decoded" in error[1]:
            break
    else:
        raise AssertionError("no single byte makes a record of the last block undecodable")
    path = tmp_path / "in.avro"
    path.write_bytes(bytes(damaged))
    native, reference = ingest(path, tmp_path, True), ingest(path, tmp_path, False)
    assert reference[0].error_code == "corrupt_avro"
    assert reference[0].counters.num_invalid_format >= 8  # the repeats before the damage
    assert native == reference


def test_a_schema_with_booleans_keeps_duckdbs_hash():
    """A boolean byte 2 reads as true, as 1 does: there the records' bytes are no key for
    the duplicate check, and DuckDB hashes the decoded records instead."""
    s = schema()
    s["fields"].append({"name": "flag", "type": "boolean", "default": False})
    records = [
        {"uid": 1 + i % 5, "segments": [{**schema_defaults(), "id": 5}], "flag": i % 3 == 0}
        for i in range(30)
    ]
    data = write_fastavro(records, writer_schema=s, sync_interval=200)
    plan = plan_reading(__import__("json").dumps(s).encode())
    assert has_boolean(plan.record_schema, plan.named)
    published = plan_reading(__import__("json").dumps(schema()).encode())
    assert not has_boolean(published.record_schema, published.named)
    native, reference = read_both(data)
    assert_same(native, reference)
    assert all(h is not None for h in native[2])
