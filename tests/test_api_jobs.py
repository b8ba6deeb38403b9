"""Jobs end to end: exact counters, memberships via /user-segments, history paging, reports."""

from __future__ import annotations

import re

import httpx
from conftest import Api, legacy


def _setup(admin: Api, member_id: int) -> dict[str, int]:
    other = member_id + 700_000
    admin.member(other)
    ids = {
        "a": admin.segment(member_id, "a")["id"],
        "b": admin.segment(member_id, "b")["id"],
        "inactive": admin.segment(member_id, "off", state="inactive")["id"],
        "foreign": admin.segment(other, "theirs")["id"],
    }
    return ids


def test_counters_memberships_and_report(server, admin, member_id):
    s = _setup(admin, member_id)
    content = legacy(
        [
            f"111,{s['a']}:0;{s['b']}:1440",
            f"222,{s['a']}:0",
            "bad line",
            "333,999999:0",
            f"444,{s['foreign']}:0",
            f"555,{s['inactive']}:0",
            f"0,{s['a']}:0",
            f"AEBE52E7-03EE-455A-B3C4-E57283966239,{s['b']}:1440^3",
        ]
    )
    job = admin.run(member_id, content)
    assert job["phase"] == "completed", job
    counters = {k: job[k] for k in job if k.startswith("num_")}
    assert counters == {
        "num_valid": 4,
        "num_invalid_format": 1,
        "num_valid_user": 6,
        "num_invalid_user": 1,
        "num_invalid_segment": 1,
        "num_invalid_timestamp": 0,
        "num_unauth_segment": 1,
        "num_past_expiration": 0,
        "num_inactive_segment": 1,
        "num_other_error": 0,
        "num_opted_out": 0,  # the extra counter of writes refused for an opted-out ID
    }
    assert job["percent_complete"] == 100 and job["error_code"] is None
    assert re.fullmatch(r"\d+\.\d\d", job["time_to_process"])
    for key in (
        "start_time",
        "uploaded_time",
        "validated_time",
        "completed_time",
        "created_on",
        "last_modified",
    ):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", job[key]), key
    assert job["upload_source"] == "api" and job["source_key"] is None
    assert "num_invalid_format-bad line" in job["error_log_lines"]
    assert job["segment_log_lines"].startswith("added:")

    assert set(admin.segments_of(member_id, uid=111)) == {s["a"], s["b"]}
    assert set(admin.segments_of(member_id, uid=222)) == {s["a"]}
    assert admin.segments_of(member_id, uid=444) == {}
    dev = admin.segments_of(
        member_id, device_id="aebe52e7-03ee-455a-b3c4-e57283966239", domain="idfa"
    )
    assert set(dev) == {s["b"]} and dev[s["b"]]["code"] == "b"
    assert (
        admin.segments_of(member_id, device_id="AEBE52E7-03EE-455A-B3C4-E57283966239", domain="3")
        == dev
    )

    segs = {
        x["id"]: x for x in admin.ok("GET", "/segment", params={"member_id": member_id})["segments"]
    }
    assert segs[s["a"]]["member_count"] == 2 and segs[s["b"]]["member_count"] == 2

    report = admin.raw(
        "GET",
        "/batch-segment/error-report",
        params={"member_id": member_id, "job_id": job["job_id"]},
    )
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    lines = report.text.splitlines()
    assert lines[0] == "line_no,counter,reason,raw"
    assert any(line.startswith("3,num_invalid_format,") for line in lines)
    assert len(lines) == 1 + 5


def test_removal_and_values(server, admin, member_id):
    s = _setup(admin, member_id)
    admin.config(member_id, segment_fields="[SEG_ID,VALUE]")
    assert admin.run(member_id, legacy([f"900,{s['a']}:42;{s['b']}:7"]))["phase"] == "completed"
    got = admin.segments_of(member_id, uid=900)
    assert got[s["a"]]["value"] == 42 and got[s["b"]]["value"] == 7
    assert got[s["a"]]["member_id"] == member_id
    # removal after SEPARATOR4 in a later job: later jobs win
    assert admin.run(member_id, legacy([f"900,{s['a']}:43\t{s['b']}:0"]))["phase"] == "completed"
    got = admin.segments_of(member_id, uid=900)
    assert set(got) == {s["a"]} and got[s["a"]]["value"] == 43


def test_lookup_isolation(server, admin, member_id):
    s = _setup(admin, member_id)
    other = member_id + 700_000
    admin.config(member_id, member_segment_access=[{"segment_owner_member_id": other}])
    assert (
        admin.run(member_id, legacy([f"901,{s['a']};{s['foreign']}".replace(";", ":0;") + ":0"]))[
            "num_valid"
        ]
        == 2
    )
    admin.user(f"look{member_id}", member_id)
    user = Api(server.url, f"look{member_id}", "password-123")
    assert set(user.segments_of(uid=901)) == {s["a"]}  # only its own member's segments
    assert set(admin.segments_of(uid=901)) == {s["a"], s["foreign"]}  # the admin sees all
    assert user.get("/user-segments", member_id=other, uid=901)["error_id"] == "UNAUTH"
    assert user.get("/user-segments", uid=0)["error_id"] == "SYNTAX"


def test_data_provider_gets_array(server, admin, member_id):
    s = _setup(admin, member_id)
    admin.user(f"dp{member_id}", member_id, user_type="data_provider")
    dp = Api(server.url, f"dp{member_id}", "password-123")
    created = dp.ok("POST", "/batch-segment", params={"member_id": member_id})[
        "batch_segment_upload_job"
    ]
    assert isinstance(created, list) and len(created) == 1
    job = created[0]
    assert dp.upload(job, legacy([f"1,{s['a']}:0"]))["status"] == "OK"
    one = dp.ok("GET", "/batch-segment", params={"member_id": member_id, "job_id": job["job_id"]})
    assert (
        isinstance(one["batch_segment_upload_job"], list)
        and len(one["batch_segment_upload_job"]) == 1
    )
    # a member login gets a plain object
    admin.user(f"mb{member_id}", member_id)
    mb = Api(server.url, f"mb{member_id}", "password-123")
    plain = mb.ok("GET", "/batch-segment", params={"member_id": member_id, "job_id": job["job_id"]})
    assert isinstance(plain["batch_segment_upload_job"], dict)


def test_history_paging_sort_and_meta(server, admin, member_id):
    jobs = [admin.new_job(member_id) for _ in range(5)]
    ids = [j["id"] for j in jobs]
    page = admin.ok(
        "GET",
        "/batch-segment",
        params={"member_id": member_id, "num_elements": 2, "sort": "id.asc"},
    )
    assert page["count"] == 5 and page["start_element"] == 0 and page["num_elements"] == 2
    assert [j["id"] for j in page["batch_segment_upload_job"]] == ids[:2]
    page = admin.ok(
        "GET",
        "/batch-segment",
        params={"member_id": member_id, "start_element": 4, "num_elements": 2, "sort": "id.asc"},
    )
    assert [j["id"] for j in page["batch_segment_upload_job"]] == ids[4:]
    page = admin.ok(
        "GET",
        "/batch-segment",
        params={"member_id": member_id, "sort": "id.desc", "num_elements": 1000},
    )
    assert [j["id"] for j in page["batch_segment_upload_job"]] == ids[::-1] and page[
        "num_elements"
    ] == 100
    future = admin.ok(
        "GET",
        "/batch-segment",
        params={"member_id": member_id, "min_last_modified": "2999-01-01 00:00:00"},
    )
    assert future["count"] == 0 and future["batch_segment_upload_job"] == []
    past = admin.ok(
        "GET",
        "/batch-segment",
        params={"member_id": member_id, "min_last_modified": "2000-01-01+00:00:00"},
    )
    assert past["count"] == 5
    assert (
        admin.get("/batch-segment", member_id=member_id, sort="password.asc")["error_id"]
        == "SYNTAX"
    )
    meta = admin.ok("GET", "/batch-segment/meta")
    names = {f["name"]: f for f in meta["fields"]}
    assert names["last_modified"]["sort_by"] and names["min_last_modified"]["filter_by"]
    # only the newest URL is still usable: the other four are errors now
    phases = [j["phase"] for j in page["batch_segment_upload_job"]]
    assert phases == ["starting"] + ["error"] * 4


def test_bad_input_file_fails_job_with_code(server, admin, member_id):
    job = admin.run(member_id, b"BZh91AY&SY" + b"\0" * 100)  # bzip2: refused
    assert job["phase"] == "error" and job["error_code"]


def test_member_without_config_uses_defaults_and_status_needs_auth(server, admin, member_id):
    s = _setup(admin, member_id)
    job = admin.run(member_id, legacy([f"5,{s['a']}:1440"]))
    assert job["num_valid"] == 1
    anon = httpx.get(
        f"{server.url}/batch-segment", params={"member_id": member_id, "job_id": job["job_id"]}
    )
    assert anon.json()["response"]["error_id"] == "NOAUTH"


def test_metrics_count_bytes_and_pairs(server, admin, member_id):
    s = _setup(admin, member_id)
    assert admin.run(member_id, legacy([f"61,{s['a']}:0;{s['b']}:0"]))["num_valid"] == 2
    text = httpx.get(f"{server.url}/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["bss_pairs_applied_total"] >= 2
    assert values["bss_bytes_uploaded_total"] > 0
    assert values['bss_jobs{phase="completed"}'] >= 1
    assert values['bss_jobs_finished_total{phase="completed"}'] >= 1
