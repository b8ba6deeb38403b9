"""ID sync in a real browser: Debian's Chromium (Playwright) loads pages of a small web
server on loopback whose pixels call a real `bss serve`: getuid redirects to the page's
server with the browser's uid, mapuid links the member's ID to it, and a file keyed by that
ID then shows on `uid=...&related=true`. With third-party cookies refused (the page on
another site than the service) and with consent strings that refuse, the uid is 0 and
nothing is stored."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from avro_util import segment, user, write_fastavro
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, free_port
from test_dashboard_browser import CHROMIUM_ARGS, _chromium

MEMBER = 9301
WAIT_S = 60  # an upper bound on a loaded machine, not a timing assertion


class _Pages:
    """A web server on loopback: /page?<html img srcs> renders images, /pixel records hits."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[dict[str, list[str]]] = []
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/pixel":
                    pages.hits.append(parse_qs(url.query))
                    body, kind = b"", "image/gif"
                else:
                    srcs = parse_qs(url.query)["src"]
                    body = "".join(f'<img src="{s}">' for s in srcs).encode()
                    kind = "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hit(self, count: int) -> dict[str, list[str]]:
        deadline = time.monotonic() + WAIT_S
        while len(self.hits) < count:
            assert time.monotonic() < deadline, "the pixel never fired"
            time.sleep(0.05)
        return self.hits[count - 1]


@pytest.fixture
def browser() -> Iterator[Any]:
    path = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_getuid_mapuid_in_chromium(bss_server, browser) -> None:
    from urllib.parse import quote

    pages = _Pages()
    srv = bss_server(sync_redirect_hosts="127.0.0.1")
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(MEMBER)
    seg = admin.segment(MEMBER, "crm")
    back = f"http://127.0.0.1:{pages.port}/pixel?uid=$UID"

    def show(host: str, ctx: Any, *srcs: str) -> None:
        page = ctx.new_page()
        query = "&".join(f"src={quote(s, safe='')}" for s in srcs)
        page.goto(f"http://{host}:{pages.port}/page?{query}")
        page.close()

    def mapped(uid: str) -> list[str]:
        body = admin.ok("GET", "/user-links", params={"member_id": MEMBER, "uid": uid})
        return body["ids"]

    # mapUID is an entitlement: refused until the member has it.
    no_cookie = admin.raw("GET", "/mapuid", params={"member": MEMBER, "user": "x"})
    assert no_cookie.status_code == 200 and no_cookie.headers["content-type"] == "image/gif"
    refused = admin.call(
        "GET", "/mapuid", params={"member": MEMBER, "user": "x"}, headers={"Cookie": "uuid2=77"}
    )
    assert refused["_http"] == 403
    assert refused["error"] == f"ID sync is not enabled for member {MEMBER}"
    set_sync = admin.call(
        "PUT", "/id-sync", params={"member_id": MEMBER}, json={"id_sync": {"enabled": True}}
    )
    assert set_sync["status"] == "OK", set_sync

    ctx = browser.new_context()
    show("127.0.0.1", ctx, f"{srv.url}/getuid?{back}")
    uid = pages.hit(1)["uid"][0]
    assert uid.isdigit() and int(uid) > 0
    (cookie,) = [c for c in ctx.cookies() if c["name"] == "uuid2"]
    assert cookie["value"] == uid and cookie["httpOnly"] and not cookie["secure"]
    show("127.0.0.1", ctx, f"{srv.url}/mapuid?member={MEMBER}&user=PS123")
    deadline = time.monotonic() + WAIT_S
    while mapped(uid) == [f"uid={uid}"]:
        assert time.monotonic() < deadline, "mapuid stored no link"
        time.sleep(0.1)
    assert mapped(uid) == [f"uid={uid}", f"ext={MEMBER}:PS123"]
    # The same browser again: the same uid.
    show("127.0.0.1", ctx, f"{srv.url}/getuid?{back}")
    assert pages.hit(2)["uid"] == [uid]

    # A file keyed by the member's own ID shows on the platform uid through the link.
    avro = write_fastavro(
        [user("external_id", {"id": "PS123", "member_id": 0}, [segment(id=seg["id"])])]
    )
    assert admin.run(MEMBER, avro)["num_valid"] == 1
    got = admin.ok(
        "GET", "/user-segments", params={"member_id": MEMBER, "uid": uid, "related": "true"}
    )["segments"]
    assert [(s["code"], s["via"]) for s in got] == [("crm", f"ext={MEMBER}:PS123")]

    # Consent strings that refuse: uid 0, no cookie set, no link stored.
    fresh = browser.new_context()
    show("127.0.0.1", fresh, f"{srv.url}/getuid?us_privacy=1YYN&{back}")
    assert pages.hit(3)["uid"] == ["0"]
    assert [c for c in fresh.cookies() if c["name"] == "uuid2"] == []
    show("127.0.0.1", ctx, f"{srv.url}/mapuid?member={MEMBER}&user=PS999&us_privacy=1YYN")
    show("127.0.0.1", ctx, f"{srv.url}/mapuid?member={MEMBER}&user=PS777&gdpr=1&gdpr_consent=x")
    show("127.0.0.1", ctx, f"{srv.url}/getuid?{back}")  # a request after both pixels
    pages.hit(4)
    assert mapped(uid) == [f"uid={uid}", f"ext={MEMBER}:PS123"]

    # Third-party cookies refused: the page is on another site than the service (localhost
    # against 127.0.0.1), whose cookie the browser does not keep; uid 0, nothing stored.
    other = browser.new_context()
    show("localhost", other, f"{srv.url}/getuid?{back}")
    assert pages.hit(5)["uid"] == ["0"]
    assert other.cookies() == []

    # Opted out: never synced again, getuid gives 0.
    page = ctx.new_page()
    page.goto(f"{srv.url}/optout")
    page.close()
    show("127.0.0.1", ctx, f"{srv.url}/getuid?{back}")
    assert pages.hit(6)["uid"] == ["0"]

    # No open redirect; a signature once the member has a secret.
    evil = admin.call("GET", "/getuid?https://evil.example/?u=$UID")
    assert evil["_http"] == 400 and "not allowed" in evil["error"]
    admin.ok(
        "PUT",
        "/id-sync",
        params={"member_id": MEMBER},
        json={"id_sync": {"enabled": True, "secret": "s" * 32}},
    )
    unsigned = admin.call(
        "GET", "/mapuid", params={"member": MEMBER, "user": "PS1"}, headers={"Cookie": "uuid2=77"}
    )
    assert unsigned["_http"] == 403 and unsigned["error"].startswith("sig does not match")
    import hashlib
    import hmac

    sig = hmac.new(b"s" * 32, f"{MEMBER}:PS1".encode(), hashlib.sha256).hexdigest()
    signed = admin.raw(
        "GET",
        "/mapuid",
        params={"member": MEMBER, "user": "PS1", "sig": sig},
        headers={"Cookie": "uuid2=77"},
    )
    assert signed.status_code == 200 and signed.headers["content-type"] == "image/gif"
    assert mapped("77") == ["uid=77", f"ext={MEMBER}:PS1"]


def test_dashboard_lookup_shows_related_ids_and_expanded_segments(bss_server, browser) -> None:
    from conftest import legacy

    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(MEMBER)
    seg = admin.segment(MEMBER, "autos")
    assert admin.run(MEMBER, legacy([f"91,{seg['id']}:0"]))["num_valid"] == 1
    admin.ok(
        "POST",
        "/id-link",
        params={"member_id": MEMBER},
        json={"links": [{"a": "uid=91", "b": f"ext={MEMBER}:<b>x</b>"}]},
    )
    ctx = browser.new_context()
    ctx.add_cookies([{"name": "bss_token", "value": admin.token, "url": srv.url}])
    page = ctx.new_page()
    page.goto(f"{srv.url}/ui/lookup")
    page.select_option("#lookup-form [name=member_id]", str(MEMBER))  # the member's links
    page.select_option("#kind", "external_id")
    page.fill("#external_id", "<b>x</b>")
    page.fill("#external_member_id", str(MEMBER))
    page.check("#related")
    page.click("#lookup-form button[type=submit]")
    page.wait_for_selector("#related-result:not([hidden])", timeout=WAIT_S * 1000)
    assert page.locator("#lookup-empty").is_visible()  # the ID itself is in no segment
    assert page.locator("#related-ids li").all_inner_texts() == [f"ext={MEMBER}:<b>x</b>", "uid=91"]
    cells = page.locator("#related-table tbody tr").first.locator("td").all_inner_texts()
    assert cells[:4] == [str(seg["id"]), "autos", str(MEMBER), "uid=91"]
    ctx.close()
