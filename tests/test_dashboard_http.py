"""The dashboard over plain HTTP against a real `bss serve`: who may see which page, escaping,
security headers, and the rule that a browser needs the page's token to change data."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import Api, ServerProc, legacy

from bss.api.browser_guard import browser_refusal, csrf_token_for

PASSWORD = "password-123"


@pytest.fixture(scope="module")
def world(server: ServerProc, admin: Api) -> dict[str, str]:
    admin.member(7201, "Acme")
    admin.member(7202, "Other")
    admin.user("carol", 7201, password=PASSWORD)
    admin.user("dave", 7202, password=PASSWORD)
    seg = admin.segment(7201, "autos")["id"]
    carol = Api(server.url, "carol", PASSWORD)
    dave = Api(server.url, "dave", PASSWORD)
    job = carol.run(7201, legacy([f"123,{seg}:0", "<script>alert(1)</script>", "<b>bold</b>"]))
    other = dave.run(7202, legacy(["456,1:0"]))
    return {"job": job["job_id"], "other": other["job_id"], "carol": carol.token or ""}


def browser(server: ServerProc, token: str) -> httpx.Client:
    """A client that behaves like a page of this origin: the session only as the cookie."""
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    client.cookies.set("bss_token", token)
    return client


def test_pages_need_a_session_and_come_back_after_login(server: ServerProc) -> None:
    resp = httpx.get(f"{server.url}/ui/charts?member_id=1")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=%2Fui%2Fcharts%3Fmember_id%3D1"
    page = httpx.get(f"{server.url}/ui/login?next=//elsewhere.example/x").text
    assert 'data-next="/"' in page  # never sends anyone off-site after login


def test_the_login_page_lets_a_logged_in_user_through(
    server: ServerProc, world: dict[str, str]
) -> None:
    with browser(server, world["carol"]) as carol:
        resp = carol.get("/ui/login?next=/ui/segments")
        assert (resp.status_code, resp.headers["location"]) == (303, "/ui/segments")


def test_a_member_sees_only_its_own_jobs(server: ServerProc, world: dict[str, str]) -> None:
    with browser(server, world["carol"]) as carol:
        home = carol.get("/")
        assert home.status_code == 200
        assert world["job"] in home.text and world["other"] not in home.text
        assert carol.get(f"/ui/jobs/{world['other']}").status_code == 404
        assert carol.get("/?member_id=7202").status_code == 403
        assert carol.get("/ui/admin").status_code == 403
        assert carol.get(f"/ui/jobs/{world['job']}").status_code == 200


def test_the_job_page_says_which_counters_count_each_segment_once(
    server: ServerProc, world: dict[str, str]
) -> None:
    from bss.ingest.engine import DEDUPLICATED

    with browser(server, world["carol"]) as carol:
        html = carol.get(f"/ui/jobs/{world['job']}").text
    note = html.split("count each segment once per job", 1)[0].rsplit("<p", 1)[-1]
    assert all(name in note for name in DEDUPLICATED)


def test_uploaded_lines_are_escaped(server: ServerProc, world: dict[str, str]) -> None:
    with browser(server, world["carol"]) as carol:
        html = carol.get(f"/ui/jobs/{world['job']}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert" not in html and "<b>bold" not in html
    # Every script is an external module of this origin.
    assert re.findall(r"<script[^>]*>", html) == [
        '<script type="module" src="/ui/static/js/job.js">'
    ]


def test_security_headers_on_pages_and_api(server: ServerProc, world: dict[str, str]) -> None:
    with browser(server, world["carol"]) as carol:
        for path in ("/", "/ui/segments", "/batch-segment", "/ui/static/app.css"):
            headers = carol.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'self'" in csp, path
            assert "unsafe-inline" not in csp, path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["x-frame-options"] == "DENY", path
        assert carol.get("/").headers["server-timing"].startswith("render;dur=")


def test_bad_filters_are_400_pages(server: ServerProc, world: dict[str, str]) -> None:
    with browser(server, world["carol"]) as carol:
        for query, text in [
            ("per_page=7", "per_page must be one of 25, 100, 1000"),
            ("from=yesterday", "from must be a date like 2026-11-24"),
            ("phase=done", "phase must be one of"),
            ("page=0", "page must be at least 1"),
        ]:
            resp = carol.get(f"/?{query}")
            assert resp.status_code == 400, query
            assert text in resp.text, query


def test_filters_narrow_the_history(server: ServerProc, world: dict[str, str]) -> None:
    with browser(server, world["carol"]) as carol:
        assert world["job"] in carol.get("/?phase=completed&source=api").text
        assert world["job"] not in carol.get("/?phase=error").text
        assert world["job"] not in carol.get("/?source=folder").text
        assert world["job"] not in carol.get("/?to=2000-01-01").text


def test_a_browser_needs_the_page_token_to_change_data(
    server: ServerProc, world: dict[str, str]
) -> None:
    body = {"segment": {"code": "x1"}}
    token = world["carol"]
    same_origin = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    with browser(server, token) as carol:
        refused = carol.post("/segment?member_id=7201", json=body, headers=same_origin)
        assert refused.status_code == 403
        assert refused.json()["response"]["error_code"] == "CSRF"
        evil = {"Origin": "http://evil.example", "X-CSRF-Token": csrf_token_for(token)}
        assert carol.post("/segment?member_id=7201", json=body, headers=evil).status_code == 403
        cross = {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf_token_for(token)}
        assert carol.post("/segment?member_id=7201", json=body, headers=cross).status_code == 403
        ok = carol.post(
            "/segment?member_id=7201",
            json=body,
            headers={**same_origin, "X-CSRF-Token": csrf_token_for(token)},
        )
        assert ok.status_code == 200, ok.text
        # The page carries the token for its own session.
        assert f'content="{csrf_token_for(token)}"' in carol.get("/").text
        # Reads need no token.
        assert carol.get("/segment?member_id=7201", headers=same_origin).status_code == 200
        # A client that is not a browser (curl -b cookies) keeps the documented flow.
        plain = carol.post("/segment?member_id=7201", json={"segment": {"code": "x2"}})
        assert plain.status_code == 200


def test_behind_a_proxy_the_public_url_is_this_services_origin() -> None:
    headers = {"origin": "https://bss.example", "host": "127.0.0.1:8080"}
    assert browser_refusal("POST", "/auth", headers) is not None
    assert browser_refusal("POST", "/auth", headers, "https://bss.example") is None


@pytest.mark.parametrize(
    ("method", "path", "headers", "refused"),
    [
        ("GET", "/segment", {"sec-fetch-site": "cross-site", "cookie": "bss_token=t"}, False),
        ("POST", "/segment", {"cookie": "bss_token=t"}, False),  # curl -b cookies
        ("POST", "/segment", {"sec-fetch-site": "same-site", "cookie": "bss_token=t"}, True),
        ("POST", "/segment", {"origin": "null", "host": "h"}, True),
        ("POST", "/segment", {"origin": "http://h", "host": "h", "cookie": "bss_token=t"}, True),
        ("POST", "/segment", {"origin": "http://h", "host": "h", "authorization": "t"}, False),
        ("POST", "/auth", {"origin": "http://h", "host": "h", "cookie": "bss_token=t"}, False),
        ("POST", "/auth", {"origin": "http://evil", "host": "h"}, True),
        ("DELETE", "/auth", {"sec-fetch-site": "same-origin", "cookie": "bss_token=t"}, True),
        (
            "DELETE",
            "/auth",
            {
                "sec-fetch-site": "same-origin",
                "cookie": "bss_token=t",
                "x-csrf-token": csrf_token_for("t"),
            },
            False,
        ),
        ("PUT", "/segment", {"sec-fetch-site": "same-origin"}, False),  # no ambient credential
    ],
)
def test_browser_refusal_rules(
    method: str, path: str, headers: dict[str, str], refused: bool
) -> None:
    assert (browser_refusal(method, path, headers) is not None) is refused


def test_a_failed_job_says_what_went_wrong_and_what_to_do(
    server: ServerProc, admin: Api, world: dict[str, str]
) -> None:
    carol = Api(server.url, "carol", PASSWORD)
    failed = carol.run(7201, b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    assert (failed["phase"], failed["error_code"]) == ("error", "corrupt_gzip")
    with browser(server, world["carol"]) as client:
        html = client.get(f"/ui/jobs/{failed['job_id']}").text
    assert "What went wrong" in html
    assert "cannot be decompressed" in html and "gzip -t FILE" in html
    assert failed["error_message"].replace("'", "&#39;") in html
    assert 'id="match-rate">–<' in html  # no user was read: no rate, not 0%


@pytest.mark.parametrize("before", ['x="', "a=b c"])
def test_a_cookie_header_parsed_oddly_still_needs_the_csrf_token(
    server: ServerProc, admin: Api, before: str
) -> None:
    """The guard finds the session cookie exactly where the framework finds it: a cookie
    before it that another parser stops at cannot smuggle the session past the check."""
    assert admin.token is not None
    headers = {
        "Sec-Fetch-Site": "same-origin",
        "Origin": server.url,
        "Cookie": f"{before}; bss_token={admin.token}",
    }
    member = {"member": {"id": 7299, "name": "smuggled"}}
    resp = httpx.post(f"{server.url}/member", json=member, headers=headers)
    assert resp.status_code == 403
    assert "X-CSRF-Token" in resp.json()["response"]["error"]
    assert admin.get("/member", id=7299)["status"] == "ERROR"
