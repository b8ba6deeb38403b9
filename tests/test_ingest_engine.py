"""The ingest engine end to end: files in, exact counters, reports and memberships out."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bss.formats.config import BatchSegmentConfig, load_config
from bss.formats.records import UserKind
from bss.ingest.engine import MAX_LIFETIME_SECONDS, TOO_MANY_INVALID, ingest_file
from bss.ingest.registry import SegmentRegistry
from bss.ingest.result import IngestResult
from bss.store.base import JOB_SEQ_SPAN
from bss.store.keyvalue import LmdbStore

NOW = 1_700_000_000
MEMBER = 958
MAX_EXPIRY = NOW + MAX_LIFETIME_SECONDS
UID = "12345678900987654321"


def registry(*segments: dict) -> SegmentRegistry:
    return SegmentRegistry.from_records(segments)


def seg(id_: int, code: str | None = None, member: int = MEMBER, **extra) -> dict:
    return {"id": id_, "code": code, "member_id": member, **extra}


@pytest.fixture
def store(tmp_path: Path):
    s = LmdbStore(tmp_path / "m.lmdb")
    yield s
    s.close()


class Runner:
    def __init__(self, tmp_path: Path, store: LmdbStore) -> None:
        self.tmp = tmp_path
        self.store = store
        self.job_no = 0

    def __call__(
        self,
        content: str | bytes,
        reg: SegmentRegistry,
        config: BatchSegmentConfig | None = None,
        *,
        member: int = MEMBER,
        chunk_bytes: int = 4 << 20,
    ) -> IngestResult:
        self.job_no += 1
        path = self.tmp / f"job{self.job_no}"
        path.write_bytes(content.encode("latin-1") if isinstance(content, str) else content)
        return ingest_file(
            path,
            member_id=member,
            seq_base=self.job_no * JOB_SEQ_SPAN,
            config=config or BatchSegmentConfig(),
            registry=reg,
            store=self.store,
            now=NOW,
            error_report_path=self.tmp / f"job{self.job_no}.errors.csv",
            max_decompressed_bytes=1 << 30,
            chunk_bytes=chunk_bytes,
        )

    def segments_of(self, kind: UserKind, key: str) -> dict[int, tuple[int | None, int, int]]:
        return {
            m.segment_id: (m.value, m.timestamp, m.expires_at)
            for m in self.store.user_segments(kind, key, NOW)
        }


@pytest.fixture
def run(tmp_path: Path, store: LmdbStore) -> Runner:
    return Runner(tmp_path, store)


# -- the six examples of the legacy format seed -------------------------------------------


def test_seed_example_1_adds_and_removes(run: Runner) -> None:
    reg = registry(seg(10000), seg(10001), seg(10002), seg(10003))
    run(f"{UID},10002:0;10003:0\n", reg)
    assert set(run.segments_of(UserKind.ANID, UID)) == {10002, 10003}
    result = run(f"{UID},10000:1440;10001:1440;10002:-1;10003:-1\n", reg)
    assert result.error_code is None
    assert result.counters.num_valid == 4 and result.counters.num_valid_user == 1
    assert run.segments_of(UserKind.ANID, UID) == {
        10000: (None, NOW, NOW + 1440 * 60),
        10001: (None, NOW, NOW + 1440 * 60),
    }
    assert result.segment_log_lines == "added:\n10000:1\n10001:1\nremoved:\n10002:1\n10003:1"


def test_seed_example_2_codes_and_separator_4(run: Runner) -> None:
    cfg = load_config({"segment_fields": "[SEG_CODE]", "separator_3": None})
    reg = registry(
        seg(1, "auto_intender", expire_minutes=60),
        seg(2, "nike_shopper"),
        seg(3, "bicycle_intender"),
        seg(4, "newbalance_shopper"),
    )
    run(f"{UID},bicycle_intender;newbalance_shopper\n", reg, cfg)
    result = run(
        f"{UID},auto_intender;NIKE_shopper\tbicycle_intender;newbalance_shopper\n", reg, cfg
    )
    assert result.counters.num_valid == 4
    # Default expiration: the segment's expire_minutes, else the config's (0: maximum).
    assert run.segments_of(UserKind.ANID, UID) == {
        1: (None, NOW, NOW + 3600),
        2: (None, NOW, MAX_EXPIRY),
    }


def test_seed_example_3_one_segment_per_line_tab_separated(run: Runner) -> None:
    cfg = load_config(
        {
            "separator_1": "\t",
            "separator_3": "\t",
            "separator_4": None,
            "segment_fields": "[TIMESTAMP,SEG_ID,VALUE,EXPIRATION]",
        }
    )
    reg = registry(seg(10000), seg(10001), seg(10002))
    run(f"{UID}\t1320689131\t10002\t0\t0\n", reg, cfg)
    result = run(
        f"{UID}\t1320689131\t10000\t0\t0\n{UID}\t1320689131\t10001\t0\t0\n{UID}\t1320689131\t10002\t0\t-1\n",
        reg,
        cfg,
    )
    assert result.counters.num_valid == 3
    assert result.counters.num_past_expiration == 0
    # EXPIRATION 0: the maximum lifetime from processing, whatever the (2011) TIMESTAMP.
    assert run.segments_of(UserKind.ANID, UID) == {
        10000: (0, 1320689131, MAX_EXPIRY),
        10001: (0, 1320689131, MAX_EXPIRY),
    }


def test_seed_example_4_external_uids_and_cross_segments(run: Runner) -> None:
    cfg = load_config(
        {"use_external_uids": True, "member_segment_access": [{"segment_owner_member_id": 959}]}
    )
    reg = registry(seg(10000), seg(10001), seg(10002, member=959), seg(10003, member=959))
    result = run("abcdefg,10000:1440;10001:1440\nabcdefg,10002:1440;10003:1440\n", reg, cfg)
    assert result.counters.num_valid == 4 and result.counters.num_valid_user == 2
    assert set(run.segments_of(UserKind.EXTERNAL, f"{MEMBER}:abcdefg")) == {
        10000,
        10001,
        10002,
        10003,
    }
    # Without access to member 959, its segments are unauthorized (deduplicated per segment).
    result = run(
        "abcdefg,10002:1440;10003:1440\nxyz,10002:1440\n",
        reg,
        load_config({"use_external_uids": True}),
    )
    assert result.counters.num_unauth_segment == 2
    assert result.counters.num_valid == 0


def test_seed_example_5_member_id_with_codes(run: Runner) -> None:
    cfg = load_config(
        {
            "segment_fields": "[MEMBER_ID,SEG_CODE]",
            "member_segment_access": [
                {"segment_owner_member_id": 400},
                {"segment_owner_member_id": 500},
            ],
        }
    )
    reg = registry(
        seg(41, "car_like", member=400), seg(51, "bike_like", member=500), seg(61, "car_like")
    )
    result = run(f"{UID},400:car_like;500:bike_like\n", reg, cfg)
    assert result.counters.num_valid == 2
    assert set(run.segments_of(UserKind.ANID, UID)) == {41, 51}
    denied = run(
        f"{UID},400:car_like;500:bike_like\n",
        reg,
        load_config({"segment_fields": "[MEMBER_ID,SEG_CODE]"}),
    )
    assert denied.counters.num_unauth_segment == 2


def test_seed_example_6_mobile_device_ids(run: Runner) -> None:
    reg = registry(seg(10000), seg(10001), seg(10002), seg(10003))
    idfa = "AEBE52E7-03EE-455A-B3C4-E57283966239"
    run(f"{idfa},10002:0^3\n", reg)
    result = run(f"{idfa},10000:1440;10001:1440;10002:-1;10003:-1^3\n", reg)
    assert result.counters.num_valid == 4
    assert set(run.segments_of(UserKind.DEVICE, f"idfa:{idfa.lower()}")) == {10000, 10001}
    assert run.segments_of(UserKind.ANID, idfa) == {}


# -- counters, reports, limits ------------------------------------------------------------


def test_every_counter_and_both_logs_exactly(run: Runner, tmp_path: Path) -> None:
    reg = registry(seg(1), seg(2), seg(3, member=777), seg(4, state="inactive"), seg(5))
    content = "\n".join(
        [
            "1001,1:0;2:1440",  # 2 valid
            "1001,1:0;2:1440",  # duplicate line -> invalid format
            "1002,1:0:9",  # illegal number of fields -> invalid format
            "0,1:0",  # invalid user
            "1003,99:0;98:0",  # two unknown segments
            "1004,99:0;3:0",  # unknown again (deduplicated) + unauthorized
            "1005,4:0;5:-1",  # inactive + a valid removal
            "",  # blank: ignored
            "1006,1:-7",  # illegal expiration -> other error
        ]
    )
    result = run(content + "\r\n", reg)
    c = result.counters
    assert (c.num_valid, c.num_invalid_format, c.num_valid_user, c.num_invalid_user) == (3, 2, 5, 1)
    assert (c.num_invalid_segment, c.num_unauth_segment, c.num_inactive_segment) == (2, 1, 1)
    assert (c.num_other_error, c.num_invalid_timestamp, c.num_past_expiration) == (1, 0, 0)
    assert result.error_log_lines == "\n".join(
        [
            "num_invalid_format-1001,1:0;2:1440 duplicate line",
            "num_invalid_format-1002,1:0:9 failed with an illegal number of fields",
            "num_invalid_user-0,1:0 invalid user ID",
            "num_invalid_segment-1003,99:0;98:0 segment 99 does not exist",
            "num_invalid_segment-1003,99:0;98:0 segment 98 does not exist",
            "num_invalid_segment-1004,99:0;3:0 segment 99 does not exist",
            "num_unauth_segment-1004,99:0;3:0 segment 3 is not yours to write",
            "num_inactive_segment-1005,4:0;5:-1 segment 4 is inactive",
            "num_other_error-1006,1:-7 EXPIRATION below -2",
        ]
    )
    assert result.segment_log_lines == "added:\n1:1\n2:1\nremoved:\n5:1"
    report = (tmp_path / "job1.errors.csv").read_text().splitlines()
    assert report[0] == "line_no,counter,reason,raw"
    assert report[1] == '2,num_invalid_format,duplicate line,"1001,1:0;2:1440"'
    assert len(report) == 1 + 9


def test_error_log_is_capped_but_the_report_is_not(run: Runner, tmp_path: Path) -> None:
    reg = registry(seg(1))
    lines = "".join(f"{i},1:0:0\n" for i in range(1, 501))
    result = run(lines, reg, load_config({"num_error_log_lines": 7}))
    assert result.counters.num_invalid_format == 500
    assert result.error_log_lines is not None
    assert len(result.error_log_lines.splitlines()) == 7
    assert len((tmp_path / "job1.errors.csv").read_text().splitlines()) == 501


def test_timestamps_values_and_past_expiration(run: Runner) -> None:
    cfg = load_config({"segment_fields": "[SEG_ID,EXPIRATION,TIMESTAMP,VALUE]"})
    reg = registry(seg(1), seg(2), seg(3), seg(4), seg(5), seg(6))
    content = "\n".join(
        [
            f"7,1:60:{NOW - 7200}:5",  # started 2 h ago for 1 h: already expired
            f"7,2:60:{NOW - 7200}000:5",  # milliseconds: invalid timestamp
            "7,3:60:1278250469.5:5",  # not whole seconds: invalid timestamp
            f"7,4:60:{NOW}:2147483648",  # VALUE too large: other error
            f"7,5:0:{NOW + 600}:2147483647",  # starts in 10 minutes
            f"7,6:999999999:{NOW}:-3",  # capped at the 180-day maximum
        ]
    )
    result = run(content, reg, cfg)
    c = result.counters
    assert (c.num_valid, c.num_past_expiration, c.num_invalid_timestamp, c.num_other_error) == (
        2,
        1,
        2,
        1,
    )
    assert run.segments_of(UserKind.ANID, "7") == {6: (-3, NOW, MAX_EXPIRY)}
    later = {m.segment_id for m in run.store.user_segments(UserKind.ANID, "7", NOW + 600)}
    assert later == {5, 6}


def test_num_invalid_before_error_stops_and_keeps_what_was_applied(run: Runner) -> None:
    reg = registry(seg(1))
    content = "1,1:0\nbad\n2,1:0\nbad2\n3,1:0\n4,1:0\n"
    result = run(content, reg, load_config({"num_invalid_before_error": 1}))
    assert result.error_code == TOO_MANY_INVALID
    assert result.counters.num_invalid_format == 2
    assert result.counters.num_valid == 2
    assert set(run.segments_of(UserKind.ANID, "2")) == {1}
    assert run.segments_of(UserKind.ANID, "3") == {}


def test_chunking_does_not_change_the_outcome(tmp_path: Path) -> None:
    reg = registry(seg(1), seg(2), seg(3, state="inactive"))
    lines = [f"{i + 1},{i % 3 + 1}:{(i % 4) - 1};{(i + 1) % 3 + 1}:0" for i in range(400)]
    lines += lines[:30]  # duplicates, spread across chunk borders
    content = "\n".join(lines) + "\n"
    outcomes = []
    for chunk_bytes in (64, 1000, 1 << 20):
        s = LmdbStore(tmp_path / f"{chunk_bytes}.lmdb")
        r = Runner(tmp_path / str(chunk_bytes), s)
        (tmp_path / str(chunk_bytes)).mkdir()
        result = r(content, reg, chunk_bytes=chunk_bytes)
        members = {u: r.segments_of(UserKind.ANID, str(u)) for u in range(1, 401)}
        outcomes.append(
            (result.counters, result.error_log_lines, result.segment_log_lines, members)
        )
        s.close()
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[0][0].num_invalid_format == 30


def test_corrupt_gzip_fails_the_job_not_the_process(run: Runner) -> None:
    reg = registry(seg(1))
    blob = gzip.compress("".join(f"{i},1:0\n" for i in range(1, 300_000)).encode())
    result = run(blob[: len(blob) // 2], reg, chunk_bytes=1 << 16)
    assert result.error_code == "corrupt_gzip"
    assert result.error_message
    # What was read before the damage is applied, as with num_invalid_before_error.
    assert result.counters.num_valid > 0
    assert set(run.segments_of(UserKind.ANID, "1")) == {1}


def test_a_job_stopped_mid_file_applies_nothing_more_and_leaves_no_runs(
    tmp_path: Path, store: LmdbStore
) -> None:
    """A worker giving a job up (lost lease, shutdown) raises out of the progress callback:
    the batches the store held back for its sorted write are dropped, with their files; the
    job is replayed from the start later."""
    path = tmp_path / "job.txt"
    path.write_text("".join(f"{i},1:0\n" for i in range(1, 20_000)))
    calls = []

    def progress(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 5:
            raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        ingest_file(
            path,
            member_id=MEMBER,
            seq_base=JOB_SEQ_SPAN,
            config=BatchSegmentConfig(),
            registry=registry(seg(1)),
            store=store,
            now=NOW,
            max_decompressed_bytes=1 << 30,
            chunk_bytes=1 << 12,
            progress=progress,
        )
    assert store.segment_member_counts(NOW) == {}
    assert store.user_segments(UserKind.ANID, "1", NOW) == []
    assert list((tmp_path / "m.lmdb" / "runs").iterdir()) == []


def test_the_store_reports_its_writing_after_the_file_is_read(
    tmp_path: Path, store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded store writes a job once its file is read; `write_progress` hears how far
    (the worker shows it as the `processing` phase's percent_complete). Stopping there (a
    lost lease) keeps what was written and raises."""
    monkeypatch.setattr("bss.store.keyvalue.MERGE_ROWS", 5_000)
    path = tmp_path / "job.txt"
    path.write_text("".join(f"{i},1:0\n" for i in range(1, 20_001)))
    read: list[float] = []
    written: list[tuple[int, float]] = []

    def write_progress(fraction: float) -> None:
        written.append((len(read), fraction))

    def run(write: Callable[[float], None]) -> IngestResult:
        return ingest_file(
            path,
            member_id=MEMBER,
            seq_base=JOB_SEQ_SPAN,
            config=BatchSegmentConfig(),
            registry=registry(seg(1)),
            store=store,
            now=NOW,
            max_decompressed_bytes=1 << 30,
            chunk_bytes=1 << 14,
            progress=read.append,
            write_progress=write,
        )

    assert run(write_progress).counters.num_valid == 20_000
    assert read[-1] == 1.0
    # 20,000 pairs in ranges of about 5,000, written twice (the entries, then the segment
    # index): a few steps up to 1.0, all after the reading.
    fractions = [f for _, f in written]
    assert {n for n, _ in written} == {len(read)}
    assert 6 <= len(fractions) <= 10 and fractions[-1] == 1.0
    assert fractions == sorted(set(fractions))

    def lose_lease(fraction: float) -> None:
        if fraction >= 0.25:
            raise RuntimeError("lease lost")

    store.close()
    store = LmdbStore(tmp_path / "again.lmdb")
    with pytest.raises(RuntimeError, match="lease lost"):
        run(lose_lease)
    # Entries written up to the range that reached half of them, nothing after.
    users = [(UserKind.ANID, str(i)) for i in range(1, 20_001)]
    kept = sum(1 for found in store.users_segments(users, NOW) if found)
    assert 10_000 <= kept < 20_000
    # The segment's index comes after the entries: the replay of the job completes both.
    assert len(list(store.segment_members(1, NOW))) < kept
    assert run(lambda _fraction: None).counters.num_valid == 20_000
    assert sum(1 for found in store.users_segments(users, NOW) if found) == 20_000
    assert sorted(int(key) for _kind, key, _m in store.segment_members(1, NOW)) == list(
        range(1, 20_001)
    )
    store.close()


def test_refused_compression_is_a_job_error(run: Runner) -> None:
    import bz2

    result = run(bz2.compress(b"1,1:0\n"), registry(seg(1)))
    assert result.error_code == "unsupported_compression"
    assert result.counters.num_valid == 0


def test_replaying_a_job_gives_the_same_store(tmp_path: Path) -> None:
    """A crashed job is run again with its seqs; later jobs' writes are never undone."""
    reg = registry(seg(1), seg(2))
    first = "1,1:0;2:0\n2,1:0\n"
    second = "1,1:-1\n"
    s = LmdbStore(tmp_path / "a.lmdb")
    r = Runner(tmp_path, s)
    r(first, reg)
    r(second, reg)
    expected = {u: r.segments_of(UserKind.ANID, str(u)) for u in (1, 2)}
    # Job 1 is replayed (as after a crash) after job 2 completed.
    path = tmp_path / "job1"
    ingest_file(
        path,
        member_id=MEMBER,
        seq_base=JOB_SEQ_SPAN,
        config=BatchSegmentConfig(),
        registry=reg,
        store=s,
        now=NOW,
        max_decompressed_bytes=1 << 30,
    )
    assert {u: r.segments_of(UserKind.ANID, str(u)) for u in (1, 2)} == expected
    assert set(expected[1]) == {2}
    s.close()


def test_bss_validate_command(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("1,1:0;2:0\n1,1:0;2:0\n2,9:0\n")
    (tmp_path / "segments.json").write_text(json.dumps([seg(1), seg(2)]))
    (tmp_path / "config.json").write_text(
        json.dumps({"batch_segment_upload_config": {"num_error_log_lines": 5}})
    )
    base = [
        sys.executable,
        "-m",
        "bss",
        "validate",
        str(tmp_path / "f.txt"),
        "--segments",
        str(tmp_path / "segments.json"),
        "--member-id",
        str(MEMBER),
    ]
    out = subprocess.run(
        [*base, "--config", str(tmp_path / "config.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    fields = json.loads(out.stdout)
    assert fields["phase"] == "completed"
    assert (fields["num_valid"], fields["num_invalid_format"], fields["num_invalid_segment"]) == (
        2,
        1,
        1,
    )
    assert not (tmp_path / "data").exists()
    subprocess.run(
        [*base, "--apply", "--data-dir", str(tmp_path / "data")], capture_output=True, check=True
    )
    s = LmdbStore(tmp_path / "data" / "memberships.lmdb")
    import time

    assert {m.segment_id for m in s.user_segments(UserKind.ANID, "1", int(time.time()))} == {1, 2}
    s.close()
    bad = subprocess.run(
        [*base, "--config", str(tmp_path / "segments.json")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid config" in bad.stderr
    bad = subprocess.run(
        [*base[:-4], "--segments", str(tmp_path / "f.txt"), "--member-id", "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid segments file" in bad.stderr
    (tmp_path / "f.bz2").write_bytes(bz2.compress(b"1,1:0\n"))
    failed = subprocess.run(
        [*base[:4], str(tmp_path / "f.bz2"), *base[5:]], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["phase"] == "error"
    assert "unsupported_compression" in failed.stderr


# -- Avro through the engine ----------------------------------------------------------------


def test_every_avro_uid_branch_lands_in_the_store(run: Runner) -> None:
    from avro_util import segment, user, write_fastavro

    reg = registry(seg(10), seg(11), seg(12, "shoppers"), seg(13, member=959))
    segs = [segment(id=10, expiration=1440, value=3), segment(code="shoppers", expiration=-2)]
    records = [
        user("anid", -1, segs),  # the same 64 bits as 18446744073709551615
        user("ifa", {"id": "AEBE52E7-03EE-455A-B3C4-E57283966239", "type": "idfa"}, segs),
        user("xfa", {"device_model_id": 7, "device_make_id": 3, "ip": "10.1.2.3"}, segs),
        user("external_id", {"id": "crm-42", "member_id": 0}, segs),
        user("device_id", {"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "domain": "aaid"}, segs),
        user(
            "eid",
            {"source": "liveramp.com", "id": "XY123"},
            [*segs, segment(id=13), segment(id=11, expiration=-1)],
        ),
        user("anid", 0, segs),  # 0 is never a valid user
    ]
    result = run(write_fastavro(records, codec="deflate"), reg)
    c = result.counters
    assert (c.num_valid, c.num_valid_user, c.num_invalid_user, c.num_unauth_segment) == (
        13,
        6,
        1,
        1,
    )
    expected = {10: (3, NOW, NOW + 1440 * 60), 12: (0, NOW, MAX_EXPIRY)}
    for kind, key in [
        (UserKind.ANID, "18446744073709551615"),
        (UserKind.IFA, "idfa:aebe52e7-03ee-455a-b3c4-e57283966239"),
        (UserKind.XFA, "3:7:10.1.2.3"),
        (UserKind.EXTERNAL, f"{MEMBER}:crm-42"),
        (UserKind.DEVICE, "aaid:0f8fad5b-d9cb-469f-a165-70867728950e"),
        (UserKind.EID, "liveramp.com:XY123"),
    ]:
        assert run.segments_of(kind, key) == expected, (kind, key)
    assert "segment 13 is not yours to write" in (result.error_log_lines or "")


def test_avro_without_uid_fails_the_job(run: Runner) -> None:
    import io

    import fastavro

    schema = {
        "type": "record",
        "name": "user",
        "fields": [{"name": "segments", "type": {"type": "array", "items": "long"}}],
    }
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), [{"segments": [1]}])
    result = run(gzip.compress(buf.getvalue()), registry(seg(1)))
    assert result.error_code == "avro_schema_invalid"
    assert result.counters.num_valid == 0
