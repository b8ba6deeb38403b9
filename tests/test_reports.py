"""The segment loads report: the unique-user sketch's measured error, figures kept once per
job (a replayed job never counts twice), and the documented report flow (POST /report,
GET /report, GET /report-download) on a real server, row for row. (Real-time posts'
figures: tests/test_realtime.py.)"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy
from sqlalchemy import select, update

from bss.db import init_db, make_engine, now_s, write_tx
from bss.formats.config import BatchSegmentConfig
from bss.ingest.engine import ingest_file
from bss.jobs.models import jobs
from bss.jobs.service import JobService
from bss.jobs.worker import StoreHandle, Worker
from bss.reports.models import segment_loads
from bss.reports.service import (
    SegmentLoads,
    create_report,
    parse_report_request,
    purge_reports,
    record_loads,
    run_report,
)
from bss.reports.sketch import EXACT_LIMIT, UniqueSketch, user_hashes
from bss.segments.service import create_segment, registry_for
from bss.settings import Settings
from bss.store import JOB_SEQ_SPAN, seqs

DAY = 86400


def _anid_sketch(users: range | list[int]) -> UniqueSketch:
    keys = pl.Series([str(u) for u in users], dtype=pl.String)
    sketch = UniqueSketch()
    sketch.add(user_hashes(pl.Series([1] * len(keys), dtype=pl.UInt8), keys))
    return sketch


@pytest.mark.parametrize("n", [1, 2, 999, 1000, EXACT_LIMIT])
def test_sketch_is_exact_while_small(n):
    assert _anid_sketch(range(10**12, 10**12 + n)).count() == n


def test_sketch_error_above_the_exact_range_is_within_two_percent():
    """Measured relative error of the HyperLogLog estimate, platform IDs and device IDs."""
    errors = {}
    for n in (EXACT_LIMIT + 1, 10_000, 50_000, 200_000, 1_000_000):
        start = 7_000_000_000 + n * 13
        sketch = UniqueSketch()
        for part in np.array_split(np.arange(start, start + n), 4):  # added in pieces
            keys = pl.Series([str(u) for u in part])
            sketch.add(user_hashes(pl.Series([1] * len(part), dtype=pl.UInt8), keys))
        again = UniqueSketch.from_bytes(sketch.to_bytes())
        assert again.count() == sketch.count()
        errors[n] = abs(sketch.count() - n) / n
    keys = pl.Series([f"idfa:{i:08x}-0000-0000-0000-000000000000" for i in range(30_000)])
    devices = UniqueSketch()
    devices.add(user_hashes(pl.Series([2] * 30_000, dtype=pl.UInt8), keys))
    errors["devices 30000"] = abs(devices.count() - 30_000) / 30_000
    print("relative errors:", {k: f"{v:.3%}" for k, v in errors.items()})
    assert max(errors.values()) < 0.02, errors


def test_sketches_merge_as_unions():
    a = _anid_sketch(range(1, 30_001))
    b = _anid_sketch(range(20_001, 50_001))
    small = _anid_sketch(range(49_000, 52_000))  # exact, merged into registers
    a.merge(b)
    a.merge(small)
    assert abs(a.count() - 52_000) / 52_000 < 0.02
    exact = _anid_sketch(range(1, 101))
    exact.merge(_anid_sketch(range(51, 151)))
    assert exact.count() == 150


# --- figures kept once per job ------------------------------------------------------------


def _in_process(tmp_path):
    settings = Settings(data_dir=tmp_path, job_lease_seconds=60)
    db = make_engine(settings.resolved_database_url)
    init_db(db)
    return settings, db, JobService(db, settings)


def _figures(db) -> dict[int, tuple[int, int, int]]:
    with db.connect() as conn:
        rows = conn.execute(select(segment_loads)).mappings().all()
    return {
        r["segment_id"]: (r["loads"], r["removals"], UniqueSketch.from_bytes(r["uniques"]).count())
        for r in rows
    }


def test_a_replayed_job_never_counts_twice(tmp_path):
    settings, db, svc = _in_process(tmp_path)
    one = create_segment(db, 5, {"code": "one"})["id"]
    two = create_segment(db, 5, {"code": "two"})["id"]
    src = tmp_path / "in.txt"
    # users 1..300 into one; 1..100 also into two; 301..320 removed from two
    src.write_bytes(
        legacy(
            [f"{u},{one}:0;{two}:0" if u <= 100 else f"{u},{one}:0" for u in range(1, 301)]
            + [f"{u},\t{two}:0" for u in range(301, 321)]
        )
    )
    job = svc.submit_file(5, src, upload_source="folder", source_key="in.txt")
    stores = StoreHandle(settings.resolved_store_url)
    # worker A claims the job, applies all of it, and dies before recording the result
    row = svc.claim_next("worker-A")
    seq_base = seqs.reserve(db, JOB_SEQ_SPAN)  # as the worker does, recorded with the job
    assert svc.renew(row["id"], "worker-A", seq_base=seq_base)
    loads_a = SegmentLoads.at(now_s())
    ingest_file(
        Path(row["file_path"]),
        member_id=5,
        seq_base=seq_base,
        config=BatchSegmentConfig(),
        registry=registry_for(db),
        store=stores.get(),
        now=now_s(),
        max_decompressed_bytes=settings.max_decompressed_bytes,
        on_applied=loads_a.add,
    )
    assert loads_a.loads == {one: 300, two: 100} and loads_a.removals == {two: 20}
    with write_tx(db) as conn:  # its lease runs out
        conn.execute(update(jobs).where(jobs.c.id == row["id"]).values(claimed_until=0))
    # worker B re-claims and replays it to the end
    assert Worker(svc, stores, threading.Event(), name="worker-B").run_once()
    assert svc.get_job(job["job_id"])["phase"] == "completed"
    # A comes back and tries to record its (complete) run: refused, nothing counted
    assert not svc.finish(row["id"], "worker-A", {"phase": "completed"}, loads_a)
    assert _figures(db) == {one: (300, 0, 300), two: (100, 20, 100)}
    # the same source is never counted again, even if offered
    with write_tx(db) as conn:
        assert not record_loads(conn, loads_a, source=f"job:{row['id']}")
    assert _figures(db) == {one: (300, 0, 300), two: (100, 20, 100)}
    stores.close()


def test_monthly_and_average_daily_uniques(tmp_path):
    _settings, db, _svc = _in_process(tmp_path)
    seg = create_segment(db, 8, {"code": "m", "short_name": "Monthly"})["id"]
    feb1 = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp()) // DAY
    for day, users, source in ((feb1, range(1, 1001), "a"), (feb1 + 9, range(501, 2501), "b")):
        loads = SegmentLoads(day=day)
        loads.add(
            pl.DataFrame(
                {
                    "segment_id": [seg] * len(users),
                    "user_kind": [1] * len(users),
                    "user_key": [str(u) for u in users],
                    "removed": [False] * len(users),
                },
                schema={
                    "segment_id": pl.Int64,
                    "user_kind": pl.UInt8,
                    "user_key": pl.String,
                    "removed": pl.Boolean,
                },
            )
        )
        with write_tx(db) as conn:
            record_loads(conn, loads, source=source)
    body = {
        "report": {
            "report_type": "segment_load",
            "columns": [
                "segment_id",
                "segment_name",
                "month",
                "total_loads",
                "monthly_uniques",
                "avg_daily_uniques",
            ],
            "start_date": "2026-02-01",
            "end_date": "2026-03-01",
        }
    }
    now = int(datetime(2026, 5, 1, tzinfo=UTC).timestamp())
    spec, _stored = parse_report_request(body, now)
    rows = run_report(db, 8, BatchSegmentConfig(), spec, now)
    # 1000 + 2000 loads; 2500 distinct users; (1000 + 2000) / 28 days
    assert rows == [[seg, "Monthly", "2026-02", 3000, 2500, round(3000 / 28)]]
    body["report"]["columns"] = ["day", "total_loads", "daily_uniques"]
    spec, _stored = parse_report_request(body, now)
    assert run_report(db, 8, BatchSegmentConfig(), spec, now) == [
        ["2026-02-01", 1000, 1000],
        ["2026-02-10", 2000, 2000],
    ]


# --- the documented flow on a real server -------------------------------------------------


def _request(api: Api, member_id: int, report: dict) -> dict:
    posted = api.call("POST", "/report", params={"member_id": member_id}, json={"report": report})
    assert posted["status"] == "OK", posted
    status = api.get("/report", id=posted["report_id"])
    assert status["execution_status"] == "ready"
    assert status["report"]["url"] == f"report-download?id={posted['report_id']}"
    return status | {"id": posted["report_id"]}


def test_report_flow(server):
    api = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(61)
    api.member(62)
    api.member(63)
    a = api.segment(61, "a", short_name="Autos")["id"]
    b = api.segment(61, "b", short_name="Bikes")["id"]
    shared = api.segment(62, "shared", short_name="Shared")["id"]
    private = api.segment(63, "private")["id"]  # 61 may not write 63's segments
    api.config(61, member_segment_access=[{"segment_owner_member_id": 62}])
    lines = [f"{u},{a}:0;{b}:0" if u <= 3 else f"{u},{a}:0" for u in range(1, 6)]
    lines += [f"4,\t{b}:0", f"7,{shared}:0"]
    job = api.run(61, legacy(lines))
    assert job["phase"] == "completed" and job["num_valid"] == 10
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    columns = [
        "segment_id",
        "segment_name",
        "day",
        "total_loads",
        "total_removals",
        "daily_uniques",
    ]
    report = _request(
        api, 61, {"report_type": "segment_load", "columns": columns, "report_interval": "today"}
    )
    assert json.loads(report["report"]["json_request"])["report"]["row_per"] == [
        "segment_id",
        "segment_name",
        "day",
    ]
    csv_text = api.raw("GET", "/report-download", params={"id": report["id"]}).text
    assert csv_text == (
        "segment_id,segment_name,day,total_loads,total_removals,daily_uniques\r\n"
        f"{a},Autos,{today},5,0,5\r\n"
        f"{b},Bikes,{today},3,1,3\r\n"
    )
    as_json = api.get("/report-download", id=report["id"], format="json")["report_data"]
    assert as_json["rows"][0] == {
        "segment_id": a,
        "segment_name": "Autos",
        "day": today,
        "total_loads": 5,
        "total_removals": 0,
        "daily_uniques": 5,
    }
    # shared segments only when selected by id; someone else's never
    only_shared = _request(
        api,
        61,
        {
            "report_type": "segment_load",
            "columns": ["segment_id", "total_loads"],
            "filters": [{"segment_id": shared}],
            "format": "json",
        },
    )
    data = api.get("/report-download", id=only_shared["id"])["report_data"]
    assert data["rows"] == [{"segment_id": shared, "total_loads": 1}]
    refused = _refused(api, 61, private)
    assert (refused["_http"], refused["error_id"]) == (404, "NOTFOUND")
    assert refused["error"] == f"segment(s) [{private}] not found"


def _refused(api: Api, member_id: int, segment_id: int) -> dict:
    """POST /report for one segment, refused: the answer without its debug info."""
    report = {
        "report_type": "segment_load",
        "columns": ["segment_id"],
        "filters": [{"segment_id": segment_id}],
    }
    body = api.call("POST", "/report", params={"member_id": member_id}, json={"report": report})
    assert body["status"] == "ERROR", body
    return {k: v for k, v in body.items() if k != "dbg_info"}


def test_another_members_segment_is_refused_like_no_segment(server):
    """The same report request, naming a segment the member may not read, gets exactly the
    same answer before and after that segment is deleted."""
    api = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(64)
    api.member(65)
    theirs = api.segment(65, "theirs")["id"]
    while_it_exists = _refused(api, 64, theirs)
    api.ok("DELETE", "/segment", params={"id": theirs})
    assert while_it_exists == _refused(api, 64, theirs)


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"report_type": "network_analytics", "columns": ["day"]}, "report_type must be"),
        ({"report_type": "segment_load", "columns": []}, "columns must be a non-empty list"),
        ({"report_type": "segment_load", "columns": ["bogus"]}, "unknown column(s) ['bogus']"),
        (
            {"report_type": "segment_load", "columns": ["segment_id", "daily_uniques"]},
            "daily_uniques needs the day dimension",
        ),
        (
            {"report_type": "segment_load", "columns": ["day", "monthly_uniques"]},
            "monthly_uniques needs the month dimension, without day",
        ),
        (
            {"report_type": "segment_load", "columns": ["day"], "report_interval": "forever"},
            "report_interval must be one of",
        ),
        (
            {
                "report_type": "segment_load",
                "columns": ["day"],
                "start_date": "2026-02-10",
                "end_date": "2026-02-01",
            },
            "end_date must be after start_date",
        ),
        (
            {"report_type": "segment_load", "columns": ["day"], "filters": [{"segment_id": 2**40}]},
            "segment_id filters must be integers between 1 and 2147483647",
        ),
    ],
)
def test_bad_report_requests_are_400(admin, member_id, report, message):
    answer = admin.call("POST", "/report", params={"member_id": member_id}, json={"report": report})
    assert answer["_http"] == 400 and answer["error_id"] == "SYNTAX", answer
    assert message in answer["error"]


def test_retention_drops_old_reports_and_source_records_not_figures(tmp_path):
    _settings, db, _svc = _in_process(tmp_path)
    seg = create_segment(db, 9, {"code": "r"})["id"]
    loads = SegmentLoads(day=20_000)
    loads.loads[seg] = 4
    with write_tx(db) as conn:
        assert record_loads(conn, loads, source="job:old")
        assert record_loads(conn, loads, source=None)  # nothing to remember
    body = {"report": {"report_type": "segment_load", "columns": ["segment_id"]}}
    create_report(
        db, member_id=9, user_id=None, username=None, config=BatchSegmentConfig(), body=body
    )
    assert purge_reports(db, now_s() - 10) == 0  # nothing old yet
    assert purge_reports(db, now_s() + 10) == 2  # the report and the one source record
    assert _figures(db) == {seg: (8, 0, 0)}
