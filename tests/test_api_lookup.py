"""Lookups over HTTP: batch POST /user-segments, GET /segment-members, exact member counts,
and a deleted segment taking its memberships along (through a real server)."""

from __future__ import annotations

import csv
import io

from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy


def test_batch_lookup_mixed_kinds_unknown_users_and_bad_ids(bss_server):
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(3)
    a, b = api.segment(3, "a"), api.segment(3, "b")
    job = api.run(
        3,
        legacy(
            [
                f"11,{a['id']}:0;{b['id']}:0",
                f"12,{b['id']}:0",
            ]
        ),
    )
    assert job["num_valid"] == 3
    users = [
        {"uid": "12"},
        {"uid": "404"},
        {"device_id": "AB-CD", "domain": "idfa"},
        {"uid": "0"},
        "11",
        {"uid": 11},
        {},
    ]
    body = api.ok("POST", "/user-segments", params={"member_id": 3}, json={"users": users})
    got = body["users"]
    assert [u["user"] for u in got] == users  # request order, IDs as given
    assert [s["id"] for s in got[0]["segments"]] == [b["id"]]
    assert got[1]["segments"] == [] and got[2]["segments"] == []
    assert "0 is never a valid user" in got[3]["error"] and "segments" not in got[3]
    assert "JSON object" in got[4]["error"]
    assert [s["id"] for s in got[5]["segments"]] == [a["id"], b["id"]]
    assert got[5]["segments"][0]["code"] == "a"
    assert got[6]["error"].startswith("give one user ID")
    # Same answer as the GET for each user.
    assert [s["id"] for s in got[5]["segments"]] == sorted(api.segments_of(3, uid=11))


def test_batch_lookup_refuses_only_malformed_bodies_and_more_than_1000_users(bss_server):
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    ok = api.call("POST", "/user-segments", json={"users": [{"uid": "1"}] * 1000})
    assert ok["status"] == "OK" and len(ok["users"]) == 1000
    too_many = api.call("POST", "/user-segments", json={"users": [{"uid": "1"}] * 1001})
    assert too_many["_http"] == 400
    assert too_many["error"] == "too many users: 1001 given, at most 1000 per request"
    for body in ({"user": []}, {"users": {"uid": "1"}}, [1]):
        bad = api.call("POST", "/user-segments", json=body)
        assert bad["_http"] == 400 and bad["error"].startswith("expected a JSON body like"), bad
    bad = api.call("POST", "/user-segments", content=b"{not json")
    assert bad["_http"] == 400 and "not valid JSON" in bad["error"]


def test_segment_members_csv_for_owner_and_admin_only(bss_server):
    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(3)
    admin.member(4)
    admin.user("owner3", 3)
    admin.user("other4", 4)
    seg = admin.segment(3, "export")
    other = admin.segment(3, "other")
    job = admin.run(
        3,
        legacy(
            [f"{u},{seg['id']}:0" for u in range(1, 51)]
            + [f"7,{other['id']}:0", f"3,{seg['id']}:-1"]
        ),
    )
    assert job["num_valid"] == 52, job
    owner = Api(srv.url, "owner3", "password-123")
    resp = owner.raw("GET", "/segment-members", params={"id": seg["id"]})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert sorted(int(r["user_key"]) for r in rows) == [u for u in range(1, 51) if u != 3]
    assert {r["user_kind"] for r in rows} == {"anid"}
    assert {r["user_key"]: r["value"] for r in rows}["42"] == ""  # the file gave no value
    assert admin.raw("GET", "/segment-members", params={"id": seg["id"]}).text == resp.text
    stranger = Api(srv.url, "other4", "password-123")
    assert stranger.call("GET", "/segment-members", params={"id": seg["id"]})["_http"] == 403
    assert admin.call("GET", "/segment-members", params={"id": 999_999})["_http"] == 404
    assert admin.call("GET", "/segment-members")["_http"] == 400
    # Exact counts, no cache: a removal shows at once.
    assert admin.get("/segment", id=seg["id"])["segment"]["member_count"] == 49
    admin.run(3, legacy([f"{u},{seg['id']}:-1" for u in range(1, 11)]))
    # user 3 had left already
    assert admin.get("/segment", id=seg["id"])["segment"]["member_count"] == 40
    assert admin.get("/segment", id=other["id"])["segment"]["member_count"] == 1


def test_a_deleted_segment_takes_its_memberships_along(bss_server):
    """Member 200 uploads user 5555 to its segment 7 and deletes it; a segment later given
    id 7 (by member 100) does not show user 5555."""
    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(200)
    admin.member(100)
    first = admin.segment(200, "mine", id=7)
    assert first["id"] == 7
    assert admin.run(200, legacy(["5555,7:0"]))["num_valid"] == 1
    assert set(admin.segments_of(uid=5555)) == {7}
    deleted = admin.call("DELETE", "/segment", params={"id": 7, "member_id": 200})
    assert deleted["status"] == "OK", deleted
    assert admin.segments_of(uid=5555) == {}
    again = admin.segment(100, "theirs", id=7)
    assert again["id"] == 7
    assert admin.get("/segment", id=7)["segment"]["member_count"] == 0
    assert admin.segments_of(uid=5555) == {}
    assert admin.segments_of(100, uid=5555) == {}
    members = admin.raw("GET", "/segment-members", params={"id": 7}).text
    assert members.splitlines()[1:] == []
    assert admin.run(100, legacy(["6666,7:0"]))["num_valid"] == 1
    assert set(admin.segments_of(100, uid=6666)) == {7}
    assert admin.segments_of(uid=5555) == {}
