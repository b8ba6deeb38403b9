"""The dashboard's bid request page in a real browser (Debian's Chromium through Playwright)
against a real `bss serve`: a pasted request shows its IDs, the related IDs, the segments
POST /openrtb/user-data would add, and why none. Screenshots go to
test-artifacts/dashboard/ (gitignored)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc
from openrtb_util import BUYERUID, IDFA, DataDir, request_26
from playwright.sync_api import expect
from test_dashboard_browser import AXE, CHROMIUM_ARGS, LAPTOP, PHONE, _chromium, _shot

import bss.targeting
from bss.settings import Settings

M = 7301


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    srv = ServerProc(tmp_path_factory.mktemp("openrtb-ui") / "data", {}).start()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(M, "Acme")
    admin.user("carol", M, password="password-123")
    local = bss.targeting.open(data_dir=srv.data_dir, settings=Settings())
    data = DataDir(srv.data_dir, local.targeting.store)
    autos = admin.segment(M, "autos")["id"]
    sports = admin.segment(M, "sports", taxonomy_id=4, taxonomy_node="483")["id"]
    data.memberships([("uid=" + BUYERUID, autos, None), ("eid=liveramp.com:LR-9", sports, 2)])
    data.links([(f"device=idfa:{IDFA}", "eid=liveramp.com:LR-9")], scope=M)
    yield {"srv": srv, "autos": autos, "sports": sports}
    data.close()
    local.close()
    srv.stop()


@pytest.fixture(scope="module")
def page(setup: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    srv = setup["srv"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport=LAPTOP)
        ctx.set_default_timeout(60_000)
        token = Api(srv.url, "carol", "password-123").token
        ctx.add_cookies([{"name": "bss_token", "value": token, "url": srv.url}])
        yield ctx.new_page()
        browser.close()


def _ask(page: Any, request: Any) -> None:
    page.fill(
        "#bid-request", request if isinstance(request, str) else json.dumps(request, indent=2)
    )
    page.click("#openrtb-form button[type=submit]")


def test_a_pasted_request_shows_ids_related_ids_and_segments(page, setup):
    srv = setup["srv"]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(srv.url + "/ui/openrtb")
    request = request_26()
    request["user"]["buyeruid"] = BUYERUID
    request["user"]["eids"][0]["uids"][0]["id"] = "<img src=x onerror=window.pwned=1>"
    _ask(page, request)
    page.wait_for_selector("#openrtb-result:not([hidden])")
    assert page.locator("#openrtb-ids li").all_inner_texts() == [
        "uid=" + BUYERUID,
        f"device=idfa:{IDFA}",
        f"ifa=idfa:{IDFA}",
        "eid=id5-sync.com:<img src=x onerror=window.pwned=1>",
        "eid=adserver.org:TTD-1",
    ]
    assert page.locator("#openrtb-related li").all_inner_texts() == ["eid=liveramp.com:LR-9"]
    rows = [
        r.locator("td").all_inner_texts() for r in page.locator("#openrtb-table tbody tr").all()
    ]
    assert rows == [
        [str(setup["autos"]), "autos", "–", str(setup["autos"]), "", "uid=" + BUYERUID],
        [str(setup["sports"]), "sports", "4", "483", "2", "eid=liveramp.com:LR-9"],
    ]
    assert page.locator("#openrtb-none").is_hidden()
    assert page.evaluate("window.pwned === undefined")
    _shot(page, "openrtb-segments-laptop")
    page.set_viewport_size(PHONE)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    _shot(page, "openrtb-segments-phone")
    page.set_viewport_size(LAPTOP)
    # Without related IDs only the request's own memberships count.
    page.uncheck("#related")
    _ask(page, request)
    expect(page.locator("#openrtb-table tbody tr")).to_have_count(1)
    assert page.locator("#openrtb-related-empty").is_visible()
    page.check("#related")
    assert errors == []


def test_why_none_and_bad_input(page, setup):
    srv = setup["srv"]
    page.goto(srv.url + "/ui/openrtb")
    _ask(page, request_26(regs={"coppa": 1}))
    page.wait_for_selector("#openrtb-none:not([hidden])")
    assert page.inner_text("#openrtb-none") == (
        "No segments: regs.coppa=1: the request is subject to COPPA"
    )
    assert page.locator("#openrtb-table").is_hidden()
    _shot(page, "openrtb-coppa")
    _ask(page, {"device": {"ifa": "00000000-0000-0000-0000-000000000000", "os": "iOS"}})
    expect(page.locator("#openrtb-none")).to_contain_text("no user ID")
    assert page.locator("#openrtb-ids-empty").is_visible()
    assert "junk ID" in page.inner_text("#openrtb-skipped")
    _ask(page, "{not json")
    page.wait_for_selector("#openrtb-error:not([hidden])")
    assert "not JSON" in page.inner_text("#openrtb-error")
    assert page.locator("#openrtb-result").is_hidden()
    _ask(page, "[1, 2]")
    expect(page.locator("#openrtb-error")).to_contain_text("must be a JSON object")


def test_the_page_is_accessible(page, setup):
    page.goto(setup["srv"].url + "/ui/openrtb")
    request = request_26()
    request["user"]["buyeruid"] = BUYERUID
    _ask(page, request)
    page.wait_for_selector("#openrtb-result:not([hidden])")
    page.evaluate(Path(AXE).read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']}))"
        ".violations.filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
    )
    assert found == []
