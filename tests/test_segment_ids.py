"""Existing segment ids (issue 9.1): explicit ids, bulk creation, automatic ids never reused,
on SQLite and on PostgreSQL, against a real `bss serve`."""

from __future__ import annotations

from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc, legacy
from test_api_postgres import _database


def _post(api: Api, member_id: int, body: dict) -> dict:
    return api.call("POST", "/segment", params={"member_id": member_id}, json=body)


def test_explicit_ids_bulk_and_no_reuse(server, admin, member_id):
    other = member_id + 400_000
    admin.member(other)
    first = admin.segment(member_id, "first")
    explicit = admin.segment(member_id, "kept-id", id=first["id"] + 100)
    assert explicit["id"] == first["id"] + 100
    assert admin.segment(member_id, "after")["id"] == first["id"] + 101
    taken = _post(admin, other, {"segment": {"code": "x", "id": explicit["id"]}})
    assert taken["_http"] == 400 and taken["error_id"] == "SYNTAX"
    assert taken["error"] == f"segment id {explicit['id']} is already taken; choose another id"
    for bad in (0, -1, 2**31, 2**63, "abc", 1.5, True):
        resp = _post(admin, member_id, {"segment": {"code": "bad", "id": bad}})
        assert resp["_http"] == 400 and resp["error_id"] == "SYNTAX", (bad, resp)

    # Automatic ids are never reused: the newest deleted id is not handed out again...
    newest = admin.segment(member_id, "newest")
    admin.ok("DELETE", "/segment", params={"id": newest["id"]})
    assert admin.segment(member_id, "next")["id"] == newest["id"] + 1
    # ...but a deleted segment's id may be taken again explicitly.
    assert admin.segment(member_id, "revived", id=newest["id"])["id"] == newest["id"]

    # Bulk: all or nothing.
    base = first["id"] + 1000
    bulk = [{"id": base + i, "code": f"bulk-{i}", "expire_minutes": 60} for i in range(3)]
    bulk.append({"code": "bulk-auto"})
    failing = [*bulk, {"code": "BULK-1"}]  # the same code twice (case-insensitive)
    resp = _post(admin, member_id, {"segments": failing})
    assert resp["error_id"] == "SYNTAX" and resp["error"].startswith("segments[4]: ")
    resp = _post(admin, member_id, {"segments": [*bulk, {"code": "z", "id": explicit["id"]}]})
    assert resp["error"] == f"segment id {explicit['id']} is already taken; choose another id"
    assert admin.get("/segment", member_id=member_id, code="bulk-0")["error_id"] == "NOTFOUND"
    created = admin.ok("POST", "/segment", params={"member_id": member_id}, json={"segments": bulk})
    assert created["count"] == 4
    ids = [s["id"] for s in created["segments"]]
    assert ids[:3] == [base, base + 1, base + 2] and ids[3] == base + 3
    assert [s["expire_minutes"] for s in created["segments"]] == [60, 60, 60, None]
    too_many = [{"code": f"c{i}"} for i in range(1001)]
    resp = _post(admin, member_id, {"segments": too_many})
    assert resp["error"] == "segments must hold 1 to 1000 segment objects"

    # A file written for the existing ids now validates.
    job = admin.run(member_id, legacy([f"12345,{base}:0;{base + 2}:60"]))
    assert job["phase"] == "completed" and job["num_valid"] == 2
    assert job["num_invalid_segment"] == 0


def test_explicit_ids_on_postgres(tmp_path):
    for url in _database():
        proc = ServerProc(tmp_path / "data", {"database_url": url}).start()
        try:
            api = Api(proc.url, ADMIN_USER, ADMIN_PASSWORD)
            api.member(5)
            auto = api.segment(5, "a")
            assert api.segment(5, "b", id=auto["id"] + 50)["id"] == auto["id"] + 50
            # The automatic id continues past the explicit one (no duplicate-key error).
            assert api.segment(5, "c")["id"] == auto["id"] + 51
            api.ok("DELETE", "/segment", params={"id": auto["id"] + 51})
            assert api.segment(5, "d")["id"] == auto["id"] + 52
            resp = _post(api, 5, {"segments": [{"code": "e"}, {"code": "f", "id": auto["id"]}]})
            assert resp["error"] == f"segment id {auto['id']} is already taken; choose another id"
            assert api.get("/segment", member_id=5, code="e")["error_id"] == "NOTFOUND"
        finally:
            proc.stop()
