"""Auth, envelope, throttling, OpenAPI and metrics against a real `bss serve`."""

from __future__ import annotations

import time

import httpx
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api


def test_login_returns_token_and_cookie(server):
    resp = httpx.post(
        f"{server.url}/auth", json={"auth": {"username": ADMIN_USER, "password": ADMIN_PASSWORD}}
    )
    body = resp.json()["response"]
    assert body["status"] == "OK"
    assert len(body["token"]) >= 32
    assert resp.cookies.get("bss_token") == body["token"]
    # the header form has no scheme word
    me = httpx.get(f"{server.url}/auth", headers={"Authorization": body["token"]}).json()[
        "response"
    ]
    assert me["status"] == "OK" and me["user"]["user_type"] == "admin"
    # ... and the cookie works alone
    me = httpx.get(f"{server.url}/auth", cookies={"bss_token": body["token"]}).json()["response"]
    assert me["user"]["username"] == ADMIN_USER
    assert me["dbg_info"]["output_term"] == "user"
    assert body["dbg_info"]["output_term"] == "token"


def test_bad_password_and_missing_token(server):
    api = Api(server.url)
    body = api.login(ADMIN_USER, "wrong")
    assert body["status"] == "ERROR" and body["error_id"] == "UNAUTH"
    body = api.get("/batch-segment", member_id=1)
    assert body["status"] == "ERROR" and body["error_id"] == "NOAUTH" and body["_http"] == 401
    assert body["error"] and body["error_description"]
    api.token = "not-a-token"
    assert api.get("/batch-segment", member_id=1)["error_id"] == "NOAUTH"


def test_malformed_auth_body_is_syntax(server):
    api = Api(server.url)
    body = api.call("POST", "/auth", content=b"{not json")
    assert body["status"] == "ERROR" and body["error_id"] == "SYNTAX"
    body = api.call("POST", "/auth", json={"username": "x"})
    assert body["error_id"] == "SYNTAX"


def test_unknown_path_is_notfound_envelope(server):
    body = httpx.get(f"{server.url}/no-such-service").json()["response"]
    assert body["status"] == "ERROR" and body["error_id"] == "NOTFOUND"


def test_token_expires(bss_server):
    srv = bss_server(token_ttl_seconds=1)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    assert api.get("/auth")["status"] == "OK"
    time.sleep(2.2)
    body = api.get("/auth")
    assert body["error_id"] == "NOAUTH"  # clients detect this and log in again
    api.login(ADMIN_USER, ADMIN_PASSWORD)
    assert api.get("/auth")["status"] == "OK"


def test_login_limit_per_user(bss_server):
    srv = bss_server(logins_per_window=3)
    api = Api(srv.url)
    for _ in range(3):
        assert api.login(ADMIN_USER, ADMIN_PASSWORD)["status"] == "OK"
    body = api.login(ADMIN_USER, ADMIN_PASSWORD)
    assert body["status"] == "ERROR" and body["_http"] == 429
    assert body["error_code"] == "LOGIN_RATE_EXCEEDED"


def test_request_rate_limit_per_member(bss_server):
    srv = bss_server(requests_per_minute=5)
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(1)
    admin.member(2)
    admin.user("u1", 1)
    admin.user("u2", 2)
    one = Api(srv.url, "u1", "password-123")
    two = Api(srv.url, "u2", "password-123")
    statuses = [one.raw("GET", "/batch-segment", params={"member_id": 1}) for _ in range(7)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].json()["response"]["error_code"] == "RATE_EXCEEDED"
    # another member is not affected
    assert two.get("/batch-segment", member_id=2)["status"] == "OK"


def test_openapi_lists_every_endpoint(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    paths = spec["paths"]
    for path, methods in {
        "/auth": {"post", "get", "delete"},
        "/member": {"get", "post", "put", "delete"},
        "/user": {"get", "post", "put", "delete"},
        "/segment": {"get", "post", "put", "delete"},
        "/batch-segment-config": {"get", "post", "put"},
        "/batch-segment": {"get", "post"},
        "/batch-segment/meta": {"get"},
        "/batch-segment/error-report": {"get"},
        "/segment-upload/{job_id}": {"post"},
        "/user-segments": {"get"},
        "/metrics": {"get"},
    }.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, paths[path].keys())


def test_metrics_prometheus_text(server, admin):
    text = httpx.get(f"{server.url}/metrics").text
    assert "# TYPE bss_jobs gauge" in text
    for phase in ("starting", "uploading", "validating", "processing", "completed", "error"):
        assert f'bss_jobs{{phase="{phase}"}}' in text
    assert "bss_pairs_applied_total" in text
    assert "bss_bytes_uploaded_total" in text


def test_metrics_take_a_token_when_one_is_set(bss_server):
    srv = bss_server(metrics_token="scrape-secret-1")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret-1"}):
        refused = httpx.get(f"{srv.url}/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["response"]["error_id"] == "NOAUTH"
        assert "bss_jobs" not in refused.text
    text = httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer scrape-secret-1"}).text
    assert 'bss_jobs{phase="completed"} 0' in text


def test_password_guessing_is_throttled(bss_server):
    srv = bss_server()
    api = Api(srv.url)
    answers = [api.login(ADMIN_USER, f"guess-{i}") for i in range(21)]
    assert all(a["error_id"] == "UNAUTH" for a in answers)
    assert answers[0]["_http"] == 401 and answers[-1]["_http"] == 429
    assert answers[-1]["error_code"] == "LOGIN_RATE_EXCEEDED"
    # the right password is refused as well until the window has passed
    assert api.login(ADMIN_USER, ADMIN_PASSWORD)["_http"] == 429
