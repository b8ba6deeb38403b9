"""Holes found by probing as a hostile client (issue 9: 9, 13, 15), against a real `bss serve`."""

from __future__ import annotations

import os
import stat

import httpx
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy


def test_upload_url_refuses_a_garbage_token(server, admin, member_id):
    seg = admin.segment(member_id, "probe")
    job = admin.new_job(member_id)
    garbage = httpx.post(
        job["upload_url"],
        content=legacy([f"5,{seg['id']}:0"]),
        headers={"Content-Type": "application/octet-stream", "Authorization": "garbage"},
    )
    body = garbage.json()["response"]
    assert garbage.status_code == 401 and body["error_id"] == "NOAUTH"
    other = member_id + 300_000
    admin.member(other)
    admin.user(f"probe-{other}", other)
    stranger = Api(server.url, f"probe-{other}", "password-123")
    assert stranger.upload(job, b"5,1:0\n")["_http"] == 403
    # Neither refusal used the URL up: it still takes the upload, with no token at all.
    resp = httpx.post(
        job["upload_url"],
        content=legacy([f"5,{seg['id']}:0"]),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 200, resp.text
    assert admin.wait(member_id, job["job_id"])["num_valid"] == 1


def test_data_dir_and_every_file_in_it_are_owner_only(bss_server):
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(7)
    seg = api.segment(7, "private")
    job = api.run(7, legacy([f"9,{seg['id']}:0", "not a line"]))
    assert job["num_valid"] == 1 and job["num_invalid_format"] == 1
    modes = {}
    for root, dirs, files in os.walk(srv.data_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, srv.data_dir)] = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(srv.data_dir).st_mode) == 0o700
    assert "bss.db" in modes and "memberships.lmdb/data.mdb" in modes
    assert any(p.startswith("reports/") for p in modes), modes
    assert any(p.startswith("uploads/") and os.path.isfile(srv.data_dir / p) for p in modes)
    wrong = {
        path: oct(mode)
        for path, mode in modes.items()
        if mode != (0o700 if os.path.isdir(srv.data_dir / path) else 0o600)
    }
    assert wrong == {}


HUGE = 2**63


def test_huge_integers_are_syntax_errors_on_every_endpoint(server, admin, member_id):
    """Every integer query parameter the OpenAPI schema documents, on every operation, and
    every id in a body: 2^63 answers 400 SYNTAX (it was an OverflowError: HTTP 500)."""
    doc = httpx.get(f"{server.url}/openapi.json").json()
    checked = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            url = path.replace("{job_id}", "x" * 40)
            if (method, path) == ("delete", "/auth"):
                continue  # would log the admin out; it reads no integer
            for param in operation.get("parameters", []):
                if param["in"] != "query" or param["schema"].get("type") != "integer":
                    continue
                params = {"member_id": member_id, param["name"]: HUGE}
                if path == "/batch-segment/error-report":  # checks job_id first
                    params["job_id"] = "x" * 40
                body = admin.call(method.upper(), url, params=params, json={})
                assert (body["_http"], body["error_id"]) == (400, "SYNTAX"), (method, path, param)
                assert param["name"] in body["error"]
                checked += 1
            schema = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
            )
            for wrapper, inner in schema.get("properties", {}).items():
                for name, spec in inner.get("properties", {}).items():
                    if spec.get("type") != "integer" or not name.endswith("id"):
                        continue
                    body = admin.call(
                        method.upper(),
                        url,
                        params={"member_id": member_id},
                        json={wrapper: {name: HUGE}},
                    )
                    assert body["_http"] < 500, (method, path, name, body)
                    checked += 1
    assert checked >= 30
    # The body ids that are read, exactly:
    for method, path, params, payload, name in (
        ("POST", "/member", {}, {"member": {"id": HUGE, "name": "x"}}, "id"),
        ("POST", "/segment", {"member_id": member_id}, {"segment": {"id": HUGE}}, "id"),
        ("PUT", "/segment", {}, {"segment": {"id": HUGE}}, "id"),
        (
            "POST",
            "/user",
            {},
            {"user": {"username": "huge", "password": "password-123", "member_id": HUGE}},
            "member_id",
        ),
    ):
        body = admin.call(method, path, params=params, json=payload)
        assert (body["_http"], body["error_id"]) == (400, "SYNTAX"), (path, body)
        assert body["error"] == f"{name} must be between -2147483648 and 2147483647" or (
            body["error"] == "id must be between 1 and 2147483647"
        ), body
    # A member's own login reaches the same parsing.
    admin.user(f"huge-{member_id}", member_id)
    member = Api(server.url, f"huge-{member_id}", "password-123")
    for path, param in (("/segment", "id"), ("/batch-segment", "member_id"), ("/member", "id")):
        body = member.get(path, **{param: HUGE})
        assert (body["_http"], body["error_id"]) == (400, "SYNTAX"), (path, body)
