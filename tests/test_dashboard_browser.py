"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real
`bss serve`.

One browser for the module. The flow test walks what a member does (log in, upload a file
with invalid lines, watch it finish, read its error log, download the report, look up a
user, create a segment, log out); the others check member isolation, escaping, the CSP,
cross-site refusal and accessibility (axe-core, shipped under tests/axe only). Screenshots
of every page at laptop and phone size go to test-artifacts/dashboard/ (gitignored).
"""

from __future__ import annotations

import csv
import http.server
import io
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_util import RedisServer, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc, free_port, legacy

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
AXE = Path(__file__).parent / "axe" / "axe.min.js"
LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "password-123"
WAIT_MS = 60_000  # an upper bound for a job on a loaded machine, not a timing assertion


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs it; CI must run these tests")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium()
    from playwright.sync_api import sync_playwright

    # Playwright gives every launch a fresh temporary profile (--user-data-dir) of its own.
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def world(server: ServerProc, admin: Api) -> dict[str, Any]:
    """Two members with a user each, a segment for the first, and a job of the second."""
    admin.member(7101, "Acme")
    admin.member(7102, "Other")
    admin.user("alice", 7101, password=PASSWORD)
    admin.user("bob", 7102, password=PASSWORD)
    segment = admin.segment(7101, "autos", short_name="Auto intenders")
    bob = Api(server.url, "bob", PASSWORD)
    bob_job = bob.run(7102, legacy(["123,1:0"]))
    return {"segment": segment, "bob_job": bob_job["job_id"]}


def _context(browser: Any, server: ServerProc, username: str | None, viewport: dict) -> Any:
    ctx = browser.new_context(viewport=viewport, accept_downloads=True)
    ctx.set_default_timeout(WAIT_MS)
    if username is not None:
        api = Api(server.url, username, ADMIN_PASSWORD if username == ADMIN_USER else PASSWORD)
        ctx.add_cookies([{"name": "bss_token", "value": api.token, "url": server.url}])
    return ctx


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_member_flow_upload_watch_report_lookup_segment_logout(
    browser: Any, server: ServerProc, admin: Api, world: dict[str, Any], tmp_path: Path
) -> None:
    seg = world["segment"]["id"]
    upload = tmp_path / "audience.txt"
    upload.write_bytes(
        legacy(
            [
                f"7652266028043224430,{seg}:0",
                "<script>window.pwned=1</script>",
                f"4013681496264948522,{seg}:0",
                "0,1:0",
            ]
        )
    )
    ctx = _context(browser, server, None, LAPTOP)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(server.url + "/")
    assert page.url.startswith(server.url + "/ui/login")
    page.fill("#username", "alice")
    page.fill("#password", "wrong-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:not([hidden])")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(server.url + "/")

    page.goto(server.url + "/ui/upload")
    page.set_input_files("#file", str(upload))
    assert "audience.txt" in page.inner_text("#file-name")
    # Dropping a file on the page replaces the chosen one.
    page.evaluate(
        """(text) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], 'dropped.txt', {type: 'text/plain'}));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        upload.read_text(),
    )
    assert "dropped.txt" in page.inner_text("#file-name")
    page.click("#upload-button")
    page.wait_for_url(server.url + "/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    # The page polls the API and reloads itself when the job is finished.
    page.wait_for_selector("#live[data-final='1'] .badge.phase-completed")
    assert page.get_attribute("#live progress", "value") == "100"

    job = admin.job(7101, job_id)
    assert (job["num_valid"], job["num_invalid_format"], job["num_invalid_user"]) == (2, 1, 1)
    assert page.inner_text("#match-rate") == "66.7%"  # 2 valid users of 3 read
    raws = page.locator("#error-log td.raw").all_inner_texts()
    assert raws == ["<script>window.pwned=1</script>", "0,1:0"]
    assert page.evaluate("document.querySelectorAll('#error-log script').length") == 0
    assert page.evaluate("window.pwned === undefined")
    assert page.locator("#segment-log tbody tr").all_inner_texts() == [f"added\t{seg} · autos\t2"]
    _shot(page, "flow-job-completed")

    with page.expect_download() as download_info:
        page.click("#report-link")
    report = Path(download_info.value.path()).read_text()
    rows = list(csv.reader(io.StringIO(report)))
    assert rows[0] == ["line_no", "counter", "reason", "raw"]
    assert [(r[0], r[1], r[3]) for r in rows[1:]] == [
        ("2", "num_invalid_format", "<script>window.pwned=1</script>"),
        ("4", "num_invalid_user", "0,1:0"),
    ]

    page.goto(server.url + "/ui/lookup")
    page.fill("#uid", "7652266028043224430")
    page.click("#lookup-form button[type=submit]")
    page.wait_for_selector("#lookup-result:not([hidden])")
    cells = page.locator("#lookup-table tbody tr").first.locator("td").all_inner_texts()
    assert cells[:3] == [str(seg), "autos", "7101"]
    live = admin.segments_of(7101, uid="7652266028043224430")[seg]
    assert cells[4:] == [live["timestamp"], live["expiry"]]
    page.select_option("#kind", "device_id")
    page.fill("#device_id", "abc")
    page.select_option("#domain", "idfa")
    page.click("#lookup-form button[type=submit]")
    page.wait_for_selector("#lookup-empty:not([hidden])")

    page.goto(server.url + "/ui/segments")
    page.fill("#code", "news_readers")
    page.fill("#short_name", "News readers")
    page.click("#segment-form button[type=submit]")
    page.wait_for_url(server.url + "/ui/segments/*")
    new_id = int(page.url.rsplit("/", 1)[1])
    created = admin.get("/segment", id=new_id)["segment"]
    assert (created["code"], created["member_id"], created["short_name"]) == (
        "news_readers",
        7101,
        "News readers",
    )
    page.fill("#short_name", "Daily news readers")
    with page.expect_navigation():  # the page reloads itself once the PUT is answered
        page.click("#segment-form button[type=submit]")
    assert page.input_value("#short_name") == "Daily news readers"  # as the server renders it
    assert admin.get("/segment", id=new_id)["segment"]["short_name"] == "Daily news readers"
    page.goto(f"{server.url}/ui/segments/{seg}")
    assert page.locator("#segment-jobs tbody tr").count() == 1
    assert job_id[:12] in page.inner_text("#segment-jobs")

    page.goto(server.url + "/")
    assert page.locator(f"tr[data-job='{job_id}'] .badge").inner_text() == "completed"
    page.click("#logout")
    page.wait_for_url(server.url + "/ui/login")
    page.goto(server.url + "/")
    assert page.url.startswith(server.url + "/ui/login")
    assert errors == []
    ctx.close()


def test_a_member_sees_only_its_own_jobs(
    browser: Any, server: ServerProc, world: dict[str, Any]
) -> None:
    ctx = _context(browser, server, "alice", LAPTOP)
    page = ctx.new_page()
    page.goto(server.url + "/")
    assert page.locator(f"tr[data-job='{world['bob_job']}']").count() == 0
    assert "Member" not in page.locator("#member_id").all_inner_texts()  # no member picker
    response = page.goto(f"{server.url}/ui/jobs/{world['bob_job']}")
    assert response.status == 404
    response = page.goto(server.url + "/?member_id=7102")
    assert response.status == 403
    assert page.locator("a[href='/ui/admin']").count() == 0
    ctx.close()


def test_csp_blocks_inline_script_and_page_needs_its_token(
    browser: Any, server: ServerProc, world: dict[str, Any]
) -> None:
    ctx = _context(browser, server, "alice", LAPTOP)
    page = ctx.new_page()
    response = page.goto(server.url + "/ui/segments")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.inlineRan = 1'; document.body.append(s); }"
    )
    assert page.evaluate("window.inlineRan === undefined")
    # Same origin, cookie sent, but no X-CSRF-Token: refused; with the page's token: done.
    post = """async (token) => {
        const headers = {'Content-Type': 'application/json'};
        if (token) headers['X-CSRF-Token'] = document.querySelector('meta[name=bss-csrf]').content;
        const r = await fetch('/segment?member_id=7101', {method: 'POST', headers,
            body: JSON.stringify({segment: {code: token ? 'with_token' : 'no_token'}})});
        return [r.status, (await r.json()).response.error_code || null];
    }"""
    assert page.evaluate(post, False) == [403, "CSRF"]
    assert page.evaluate(post, True) == [200, None]
    ctx.close()


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another site: a page that makes the visitor's browser POST to the service."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"""<!doctype html><html><body>
<form id="f" method="post" enctype="text/plain" action="{self.target}/segment?member_id=7101">
<input name='{{"segment":{{"code":"evil","x":"' value='"}}}}'></form>
<script>document.getElementById('f').submit()</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_post_is_refused(
    browser: Any, server: ServerProc, admin: Api, world: dict[str, Any]
) -> None:
    _AttackerPage.target = server.url
    attacker = http.server.HTTPServer(("127.0.0.1", free_port()), _AttackerPage)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        ctx = _context(browser, server, "alice", LAPTOP)
        page = ctx.new_page()
        with page.expect_response(lambda r: "/segment?member_id=7101" in r.url) as answer:
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        assert answer.value.status == 403
        assert admin.get("/segment", member_id=7101, code="evil")["error_id"] == "NOTFOUND"
        ctx.close()
    finally:
        attacker.shutdown()
        attacker.server_close()


def test_config_form_shows_the_rule_the_api_applies(
    browser: Any, server: ServerProc, admin: Api, world: dict[str, Any]
) -> None:
    ctx = _context(browser, server, ADMIN_USER, LAPTOP)
    page = ctx.new_page()
    page.goto(server.url + "/ui/admin?member_id=7102")
    page.fill("#cfg-num_error_log_lines", "5000")
    page.click("#config-form button[type=submit]")
    page.wait_for_selector("#config-error:not([hidden])")
    api_says = admin.call(
        "PUT",
        "/batch-segment-config",
        params={"member_id": 7102},
        json={"batch_segment_upload_config": {"num_error_log_lines": 5000}},
    )
    assert api_says["_http"] == 400
    assert page.inner_text("#config-error") == api_says["error"]
    assert "must be between 0 and 999" in api_says["error"]
    assert page.get_attribute("#cfg-num_error_log_lines", "aria-invalid") == "true"
    page.fill("#cfg-num_error_log_lines", "50")
    page.click("#config-form button[type=submit]")
    page.wait_for_selector("#config-saved:has-text('Saved.')")
    saved = admin.get("/batch-segment-config", member_id=7102)["batch_segment_upload_config"]
    assert saved["num_error_log_lines"] == 50
    # Row actions: a member's state, deleting a user.
    admin.user("eve", 7102, password=PASSWORD)
    eve = next(u for u in admin.get("/user")["users"] if u["username"] == "eve")
    page.reload()
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click(f"[data-delete-user='{eve['id']}']")
    page.wait_for_selector(f"[data-delete-user='{eve['id']}']", state="detached")
    assert admin.get("/user", id=eve["id"])["error_id"] == "NOTFOUND"
    assert asked == ["Delete user eve? This cannot be undone."]
    page.click("[data-member='7102'][data-member-state='inactive']")
    page.wait_for_selector("[data-member='7102'][data-member-state='active']")
    assert admin.get("/member", id=7102)["member"]["state"] == "inactive"
    page.click("[data-member='7102'][data-member-state='active']")
    page.wait_for_selector("[data-member='7102'][data-member-state='inactive']")
    assert admin.get("/member", id=7102)["member"]["state"] == "active"
    ctx.close()


@needs_redis
def test_live_progress_across_api_processes(browser: Any, tmp_path: Path) -> None:
    """The page is served by one process, the job goes through another (which also works
    it): the page follows it, without a reload, from the shared database. (Redis holds the
    memberships: the embedded store admits one process.)"""
    redis = RedisServer(tmp_path).start()
    env = {"store_url": f"redis://{redis.addr}/0"}
    viewer = ServerProc(tmp_path / "data", {"workers": 0, **env}).start()
    doer = ServerProc(tmp_path / "data", env).start()
    try:
        admin = Api(doer.url, ADMIN_USER, ADMIN_PASSWORD)
        admin.member(7301)
        seg = admin.segment(7301, "live")["id"]
        job = admin.new_job(7301)
        ctx = _context(browser, viewer, ADMIN_USER, LAPTOP)
        page = ctx.new_page()
        page.goto(viewer.url + "/?member_id=7301")
        row = f"tr[data-job='{job['job_id']}']"
        assert page.inner_text(f"{row} .badge") == "starting"
        page.evaluate("window.sameDocument = true")
        assert admin.upload(job, legacy([f"{n},{seg}:0" for n in range(1, 31)]))["status"] == "OK"
        page.wait_for_selector(f"{row}[data-final='1'] .badge.phase-completed")
        assert page.evaluate("window.sameDocument") is True
        assert page.inner_text(f"{row} .valid") == "30"
        assert page.inner_text(f"{row} .pct span") == "100%"
        ctx.close()
    finally:
        doer.stop()
        viewer.stop()
        redis.stop()


PAGES = [
    ("login", "/ui/login", None),
    ("jobs", "/", ADMIN_USER),
    ("upload", "/ui/upload", ADMIN_USER),
    ("segments", "/ui/segments", ADMIN_USER),
    ("lookup", "/ui/lookup", ADMIN_USER),
    ("charts", "/ui/charts", ADMIN_USER),
    ("admin", "/ui/admin", ADMIN_USER),
    ("member-jobs", "/", "alice"),
]


def test_every_page_is_accessible_and_screenshotted(
    browser: Any, server: ServerProc, admin: Api, world: dict[str, Any]
) -> None:
    admin.run(7101, legacy([f"555,{world['segment']['id']}:0", "bad line"]))
    job_id = admin.get("/batch-segment", member_id=7101)["batch_segment_upload_job"][0]["job_id"]
    pages = [
        *PAGES,
        ("job", f"/ui/jobs/{job_id}", ADMIN_USER),
        ("segment", f"/ui/segments/{world['segment']['id']}", ADMIN_USER),
    ]
    axe = AXE.read_text()
    failures: dict[str, list[str]] = {}
    for size_name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        contexts: dict[str | None, Any] = {}
        for name, path, user in pages:
            if user not in contexts:
                contexts[user] = _context(browser, server, user, viewport).new_page()
            page = contexts[user]
            response = page.goto(server.url + path)
            assert response.status == 200, (path, response.status)
            _shot(page, f"{name}-{size_name}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"], f"{path} scrolls sideways at {size_name}: {width}px"
            if size_name == "laptop":
                page.evaluate(axe)  # evaluated by the driver: the page's CSP still holds
                found = page.evaluate(
                    "async () => (await axe.run(document, {resultTypes: ['violations']}))"
                    ".violations.filter(v => ['serious', 'critical'].includes(v.impact))"
                    ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
                )
                if found:
                    failures[path] = found
        for page in contexts.values():
            page.context.close()
    assert failures == {}


def test_day_charts_open_at_the_latest_days_on_a_phone(
    browser: Any, server: ServerProc, world: dict[str, Any]
) -> None:
    page = _context(browser, server, ADMIN_USER, PHONE).new_page()
    page.goto(server.url + "/ui/charts")
    boxes = page.eval_on_selector_all(
        "figure.chart-box",
        """boxes => boxes.filter(b => b.querySelector('svg.chart')).map(b => {
            const box = b.getBoundingClientRect(), svg = b.querySelector('svg.chart').getBoundingClientRect();
            const days = [...b.querySelectorAll('svg.chart text[text-anchor=middle]')];
            return {caption: b.closest('section').querySelector('h2').textContent,
                    boxLeft: box.left, boxRight: box.right, svgLeft: svg.left, svgRight: svg.right,
                    lastDayRight: days.length ? days[days.length - 1].getBoundingClientRect().right : null};
        })""",
    )
    _shot(page, "charts-phone-opened")
    days = [b for b in boxes if "per day" in b["caption"] or "Error rates" in b["caption"]]
    assert len(days) == 2, boxes
    for b in days:
        assert b["svgLeft"] < b["boxLeft"], b  # wider than the phone: the oldest days are off
        assert b["svgRight"] <= b["boxRight"] + 1, b  # ...and the latest are in view
        assert b["lastDayRight"] is None or b["lastDayRight"] <= b["boxRight"] + 1, b
    page.context.close()
