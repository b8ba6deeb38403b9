"""Members, users, segments and batch segment configs, and who may touch what."""

from __future__ import annotations

from conftest import Api


def test_segment_crud_and_case_insensitive_codes(server, admin, member_id):
    seg = admin.segment(member_id, "Auto_Intender", short_name="Auto", expire_minutes=1440)
    assert (
        seg["member_id"] == member_id and seg["state"] == "active" and seg["expire_minutes"] == 1440
    )
    dup = admin.call(
        "POST",
        "/segment",
        params={"member_id": member_id},
        json={"segment": {"code": "auto_INTENDER"}},
    )
    assert dup["status"] == "ERROR" and dup["error_id"] == "SYNTAX"
    got = admin.ok("GET", "/segment", params={"member_id": member_id, "code": "AUTO_intender"})[
        "segment"
    ]
    assert got["id"] == seg["id"]
    upd = admin.ok(
        "PUT", "/segment", params={"id": seg["id"]}, json={"segment": {"state": "inactive"}}
    )["segment"]
    assert upd["state"] == "inactive" and upd["code"] == "Auto_Intender"
    too_long = admin.call(
        "POST", "/segment", params={"member_id": member_id}, json={"segment": {"code": "x" * 51}}
    )
    assert too_long["error_id"] == "SYNTAX"
    lst = admin.ok("GET", "/segment", params={"member_id": member_id})
    assert lst["count"] == 1 and lst["segments"][0]["member_count"] == 0
    admin.ok("DELETE", "/segment", params={"id": seg["id"]})
    assert admin.get("/segment", id=seg["id"])["error_id"] == "NOTFOUND"


def test_same_code_in_two_members(server, admin, member_id):
    other = member_id + 500_000
    admin.member(other)
    admin.segment(member_id, "shared")
    admin.segment(other, "shared")


def test_config_defaults_validation_and_put(server, admin, member_id):
    cfg = admin.ok("GET", "/batch-segment-config", params={"member_id": member_id})[
        "batch_segment_upload_config"
    ]
    assert cfg["separator_1"] == "," and cfg["segment_fields"] == "[SEG_ID,EXPIRATION]"
    assert cfg["num_error_log_lines"] == 200 and cfg["max_concurrent_uploads"] == 1
    bad = admin.call(
        "POST",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"separator_1": "|"}},
    )
    assert bad["status"] == "ERROR" and bad["error_id"] == "SYNTAX"
    assert "separator_1" in bad["error"] and "not allowed" in bad["error"]
    bad = admin.call(
        "POST",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"segment_fields": "[SEG_ID,SEG_CODE]"}},
    )
    assert "SEG_ID or SEG_CODE" in bad["error"]
    cfg = admin.config(
        member_id,
        separator_1="\t",
        separator_3="\t",
        separator_4=None,
        segment_fields="[TIMESTAMP,SEG_ID,VALUE,EXPIRATION]",
    )
    assert cfg["segment_fields"] == "[TIMESTAMP,SEG_ID,VALUE,EXPIRATION]" and cfg["id"] is not None
    cfg = admin.ok(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"num_error_log_lines": 5}},
    )["batch_segment_upload_config"]
    assert cfg["num_error_log_lines"] == 5 and cfg["separator_1"] == "\t"


def test_non_admin_limits(server, admin, member_id):
    admin.user(f"user{member_id}", member_id)
    user = Api(server.url, f"user{member_id}", "password-123")
    assert user.call("POST", "/member", json={"member": {"name": "x"}})["error_id"] == "UNAUTH"
    assert (
        user.call("POST", "/user", json={"user": {"username": "y", "password": "zzzzzzzzz"}})[
            "error_id"
        ]
        == "UNAUTH"
    )
    body = user.call(
        "POST",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"num_error_log_lines": 5}},
    )
    assert body["error_id"] == "UNAUTH"
    # the member may read its own config and manage its own segments
    assert user.get("/batch-segment-config", member_id=member_id)["status"] == "OK"
    seg = user.segment(member_id, "mine")
    assert seg["member_id"] == member_id


def test_isolation_between_members(server, admin, member_id):
    other = member_id + 600_000
    admin.member(other)
    admin.user(f"iso{member_id}", member_id)
    admin.user(f"iso{other}", other)
    a = Api(server.url, f"iso{member_id}", "password-123")
    b = Api(server.url, f"iso{other}", "password-123")
    seg_a = a.segment(member_id, "a-only")
    job_a = a.new_job(member_id)
    # b sees none of a's things
    assert b.get("/segment", id=seg_a["id"])["error_id"] in ("NOTFOUND", "UNAUTH")
    assert (
        b.call(
            "PUT", "/segment", params={"id": seg_a["id"]}, json={"segment": {"state": "inactive"}}
        )["status"]
        == "ERROR"
    )
    assert b.call("DELETE", "/segment", params={"id": seg_a["id"]})["status"] == "ERROR"
    assert b.get("/batch-segment", member_id=member_id)["error_id"] == "UNAUTH"
    assert (
        b.get("/batch-segment", member_id=other, job_id=job_a["job_id"])["error_id"] == "NOTFOUND"
    )
    assert b.get("/batch-segment", job_id=job_a["job_id"])["error_id"] == "NOTFOUND"
    assert b.call("POST", "/batch-segment", params={"member_id": member_id})["error_id"] == "UNAUTH"
    listed = b.ok("GET", "/segment")["segments"]
    assert all(s["member_id"] == other for s in listed)
    # b's token cannot upload to a's URL
    up = b.upload(job_a, b"1,1:0\n")
    assert up["status"] == "ERROR" and up["error_id"] == "UNAUTH"
    # the admin sees both
    assert (
        admin.get("/batch-segment", member_id=member_id, job_id=job_a["job_id"])["status"] == "OK"
    )


def test_users_and_members_admin(server, admin, member_id):
    user = admin.user(f"dp{member_id}", member_id, user_type="data_provider")
    assert user["user_type"] == "data_provider" and "password" not in user
    bad = admin.call(
        "POST",
        "/user",
        json={"user": {"username": "n", "password": "short", "member_id": member_id}},
    )
    assert bad["error_id"] == "SYNTAX"
    bad = admin.call(
        "POST",
        "/user",
        json={
            "user": {
                "username": "n2",
                "password": "long-enough",
                "user_type": "x",
                "member_id": member_id,
            }
        },
    )
    assert bad["error_id"] == "SYNTAX"
    upd = admin.ok(
        "PUT", "/user", params={"id": user["id"]}, json={"user": {"password": "another-pass"}}
    )["user"]
    assert upd["id"] == user["id"]
    assert Api(server.url).login(f"dp{member_id}", "another-pass")["status"] == "OK"
    assert admin.ok("GET", "/member", params={"id": member_id})["member"]["id"] == member_id
    admin.ok("DELETE", "/user", params={"id": user["id"]})
    assert Api(server.url).login(f"dp{member_id}", "another-pass")["status"] == "ERROR"


def test_delete_member_removes_its_users_segments_and_config(server, admin, member_id):
    admin.user(f"gone{member_id}", member_id)
    user = Api(server.url, f"gone{member_id}", "password-123")
    seg = admin.segment(member_id, "gone")
    admin.config(member_id, num_error_log_lines=3)
    admin.ok("DELETE", "/member", params={"id": member_id})
    assert user.get("/auth")["error_id"] == "NOAUTH"
    assert admin.get("/segment", id=seg["id"])["error_id"] == "NOTFOUND"
    assert admin.get("/member", id=member_id)["error_id"] == "NOTFOUND"
    # the member can be created again from scratch
    admin.member(member_id)
    cfg = admin.ok("GET", "/batch-segment-config", params={"member_id": member_id})
    assert cfg["batch_segment_upload_config"]["num_error_log_lines"] == 200
