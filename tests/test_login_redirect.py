"""After logging in, the dashboard goes back only to a path of this service.

`next=/\\evil.example/` or `next=/<TAB>/evil.example/` start with one "/", yet a browser reads
them as another host (WHATWG URL parsing drops tabs and newlines and reads backslashes as
slashes). The server's check parses like the browser: checked here against Chromium's own
URL parser on many generated targets, and end to end in Chromium, where the page's script
is checked on its own too (a tampered data-next attribute).
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc
from test_dashboard_browser import WAIT_MS, browser  # noqa: F401 (the module's browser)

from bss.web.views import same_origin_path

PASSWORD = "password-123"
HOSTILE = [
    "/\\evil.example/",
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r\n/evil.example",
    " /\\evil.example",
    "\\/evil.example",
    "\\\\evil.example",
    "//evil.example/x",
    "/ui/../..//evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "http:evil.example",
    "https:evil.example",
    "http:/evil.example",
    "/\\\t\\evil.example",
]
PIECES = [
    "/",
    "\\",
    "\t",
    "\n",
    "\r",
    " ",
    ".",
    "..",
    ":",
    "@",
    "?",
    "#",
    "%09",
    "%2F",
    "ui",
    "e.x",
]


def generated_targets(n: int = 400) -> list[str]:
    rng = random.Random(23)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def alice(admin: Api) -> str:
    admin.member(7301, "Redirects")
    admin.user("redirected", 7301, password=PASSWORD)
    return "redirected"


def login_page_next(server: ServerProc, target: str) -> str:
    page = httpx.get(f"{server.url}/ui/login?" + urlencode({"next": target})).text
    start = page.index('data-next="') + len('data-next="')
    return page[start : page.index('"', start)]


@pytest.mark.parametrize("target", HOSTILE)
def test_the_login_page_never_offers_another_site(server, target):
    assert login_page_next(server, target) == "/"


def test_paths_of_this_service_are_kept(server):
    assert login_page_next(server, "/ui/jobs?member_id=7&x=a%20b#top") == (
        "/ui/jobs?member_id=7&amp;x=a%20b#top"
    )
    assert same_origin_path("/ui/./segments/../jobs") == "/ui/jobs"


def test_the_check_agrees_with_chromiums_url_parser(browser, server):  # noqa: F811
    """For every target Chromium resolves to a path of this origin, on an http and on an https
    site alike, the check keeps what Chromium keeps (or refuses a path starting "//"); for
    every other target, the check answers "/"."""
    targets = generated_targets() + HOSTILE
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server.url + "/ui/login")
    resolved = page.evaluate(
        """(targets) => targets.map((t) => {
            try {
              const here = new URL(t, location.origin);
              const tls = new URL(t, "https://tls.invalid/");
              const path = here.pathname + here.search + here.hash;
              const same = here.origin === location.origin
                && tls.origin === "https://tls.invalid"
                && tls.pathname + tls.search + tls.hash === path;
              return [same, path];
            } catch (e) { return [false, null]; }
        })""",
        targets,
    )
    ctx.close()
    kept = 0
    for target, (same_origin, path) in zip(targets, resolved, strict=True):
        ours = same_origin_path(target)
        if same_origin and not path.startswith("//"):
            assert ours == path, target
            kept += 1
        else:
            assert ours == "/", target
        assert same_origin_path(ours) == ours  # a kept path is kept as it is
    assert 50 < kept < len(targets)  # both kinds were generated


def _login(page: Any, url: str) -> None:
    page.goto(url)
    page.fill("#username", "redirected")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")


@pytest.mark.parametrize("target", ["/\\evil.example/", "/\t/evil.example/", "/ui/segments"])
def test_chromium_stays_on_the_site_after_login(browser, server, alice, target):  # noqa: F811
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    page = ctx.new_page()
    _login(page, f"{server.url}/ui/login?" + urlencode({"next": target}))
    expected = server.url + (target if target == "/ui/segments" else "/")
    page.wait_for_url(expected)
    assert page.url == expected
    ctx.close()


def test_the_page_script_checks_its_target_too(browser, server, alice):  # noqa: F811
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    page = ctx.new_page()
    page.goto(server.url + "/ui/login")
    # As if the server had let a hostile target through: the script refuses it on its own.
    page.evaluate("document.getElementById('login-form').dataset.next = '/\\\\evil.example/'")
    page.fill("#username", "redirected")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(server.url + "/")
    assert page.url == server.url + "/"
    ctx.close()


def test_admin_login_still_lands_where_asked(browser, server):  # noqa: F811
    Api(server.url, ADMIN_USER, ADMIN_PASSWORD)  # the admin exists
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    page = ctx.new_page()
    page.goto(server.url + "/ui/segments")
    assert page.url.startswith(server.url + "/ui/login?next=")
    page.fill("#username", ADMIN_USER)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(server.url + "/ui/segments")
    ctx.close()
