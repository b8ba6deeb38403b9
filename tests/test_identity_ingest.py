"""Link files read in bulk (bss.identity.ingest): a block of plain CSV is parsed vectorised,
every other block by the csv module one record at a time. Both readings of one file must
come to the same counters, error report and stored links."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import lmdb
import pytest

import bss.identity.ingest as ingest
from bss.store.keyvalue import LmdbStore

MEMBER = 7
IDS = [
    "uid=1",
    "uid=12345",
    "uid=0",
    "uid=007",
    "uid=18446744073709551615",
    "uid=18446744073709551616",
    " uid=5",
    "UID=6",
    "device=idfa:abc-def",
    "device=IDFA:ABC",
    "device=idfa:ABC",
    "ifa=idfa:Xy",
    "device=3:abc",
    "device=idfa:00000000-0000",
    "device=foo:x",
    "ifa=idfa:xyz",
    "ifa=IDFA:Xy",
    "ifa=tifa:a:b",
    f"ext={MEMBER}:PS123",
    f"ext=0{MEMBER}:ps",
    f"ext={MEMBER}:NULL",
    f"ext={MEMBER}:a b",
    f"ext={MEMBER}:é",
    "eid=liveramp.com:XY1",
    "eid=LiveRamp.com:XY1",
    "eid=src:Unknown",
    "xfa=1:2:10.0.0.1",
    "garbage",
    "",
    "uid=9" + "9" * 600,
    f"ext={MEMBER}:" + "x" * 5000,
    *(f"uid={i}" for i in range(1, 40)),
    *(f"device=idfa:{i:x}-ab" for i in range(20)),
]
SHAPES = (
    ["{a},{b}"] * 6 + ["{a},{b},-1"] * 2 + ["{a},{b}, -1 ", "{a},{b},5", "{a}", "", "{a},{b},-1,x"]
)


def _block(rng: random.Random, lines: int, end: bytes) -> bytes:
    text = [rng.choice(SHAPES).format(a=rng.choice(IDS), b=rng.choice(IDS)) for _ in range(lines)]
    return end.join(t.encode() for t in text) + end


def _link_file(path: Path) -> Path:
    rng = random.Random(5)
    parts = [
        _block(rng, 3000, b"\n"),
        _block(rng, 500, b"\r\n"),  # CRLF line ends
        _block(rng, 300, b"\n").replace(b"\n", b"\r", 3),  # a few bare CRs
        _block(rng, 300, b"\n").replace(b"uid=12345", b"uid=12\xff45"),  # not UTF-8
        _block(rng, 2000, b"\n"),
        b'"ext=7:Q,1",uid=3\n"uid=4",\n',  # quotes: the csv module reads on from here
        _block(rng, 1000, b"\n"),
    ]
    path.write_bytes(b"".join(parts)[:-1])  # the last line without its end
    return path


def _ingest(path: Path, store_dir: Path, report: Path) -> tuple[dict, list, bytes]:
    store = LmdbStore(store_dir)
    try:
        result = ingest.ingest_links_file(
            path,
            member_id=MEMBER,
            seq_base=1000,
            store=store,
            asserted_at=1_700_000_000,
            ttl_days=180,
            max_decompressed_bytes=1 << 30,
            error_report_path=report,
            log_limit=10_000,
        )
    finally:
        store.close()
    env = lmdb.open(str(store_dir), readonly=True, lock=False, max_dbs=16)
    try:
        links = env.open_db(b"links", create=False)
        with env.begin() as txn:
            rows = list(txn.cursor(db=links))
    finally:
        env.close()
    return asdict(result), rows, report.read_bytes()


def test_bulk_and_record_by_record_readings_agree(tmp_path: Path, monkeypatch) -> None:
    path = _link_file(tmp_path / "links.csv")
    monkeypatch.setattr(ingest, "BLOCK_BYTES", 8192)  # many blocks, lines cut at their ends
    bulk = _ingest(path, tmp_path / "bulk", tmp_path / "bulk.csv")
    monkeypatch.setattr(ingest, "_plain_block", lambda text, first_line: None)
    one_by_one = _ingest(path, tmp_path / "csv", tmp_path / "csv.csv")
    assert bulk[0] == one_by_one[0]
    assert bulk[1] == one_by_one[1]
    assert bulk[2] == one_by_one[2]
    counters = bulk[0]["counters"]
    assert counters["num_valid"] > 1000 and counters["num_invalid_user"] > 1000
    assert counters["num_invalid_format"] > 500
    assert len(bulk[1]) > 1000


@pytest.mark.parametrize("block_bytes", [64, 1000])
def test_a_plain_file_reads_the_same_in_any_block_size(
    tmp_path: Path, monkeypatch, block_bytes: int
) -> None:
    rng = random.Random(9)
    path = tmp_path / "plain.csv"
    path.write_bytes(_block(rng, 2000, b"\n"))
    whole = _ingest(path, tmp_path / "whole", tmp_path / "whole.csv")
    monkeypatch.setattr(ingest, "BLOCK_BYTES", block_bytes)
    cut = _ingest(path, tmp_path / "cut", tmp_path / "cut.csv")
    assert whole == cut
