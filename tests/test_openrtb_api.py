"""POST /openrtb/user-data and /openrtb/settings over HTTP, through a real `bss serve`: the
answer is the in-process function's, merge=true round trips the posted request, only member
M's users and admins ask for M, and bodies of any shape get the documented envelope."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openrtb_util import BUYERUID, IDFA, DataDir, request_25, request_26
from privacy_strings import tc_string

import bss.targeting
from bss.settings import Settings

M, OTHER = 31, 32
VENDOR = 91


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import ServerProc

    srv = ServerProc(
        tmp_path_factory.mktemp("openrtb") / "data",
        {"tcf_vendor_id": VENDOR, "openrtb_data_id": "bss-http", "openrtb_max_request_bytes": 4096},
    ).start()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(M)
    admin.member(OTHER)
    admin.user("m31", M)
    admin.user("m32", OTHER)
    # In this process too: the in-process function over the server's data dir.
    local = bss.targeting.open(
        data_dir=srv.data_dir,
        settings=Settings(tcf_vendor_id=VENDOR, openrtb_data_id="bss-http"),
    )
    data = DataDir(srv.data_dir, local.targeting.store)
    yield srv, admin, data, local
    data.close()
    local.close()
    srv.stop()


def post(api: Api, body: Any, **params: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    return api.call("POST", "/openrtb/user-data", params={"member_id": M, **params}, **kw)


def test_answers_equal_the_in_process_function(env):
    srv, admin, data, local = env
    a = admin.segment(M, "http-a")["id"]
    b = admin.segment(M, "http-b", taxonomy_id=4, taxonomy_node="120")["id"]
    theirs = admin.segment(OTHER, "http-theirs")["id"]
    # One membership through the documented job flow, the rest written into the store.
    assert admin.run(M, legacy([f"{BUYERUID},{a}:0"]))["num_valid"] == 1
    data.memberships(
        [
            (f"ifa=idfa:{IDFA}", b, 4),
            ("uid=4242", theirs, None),
            ("eid=adserver.org:TTD-1", a, None),
        ]
    )
    data.links([(f"device=idfa:{IDFA}", "uid=4242")])
    r26 = request_26()
    r26["user"]["buyeruid"] = BUYERUID
    member = Api(srv.url, "m31", "password-123")
    got = post(member, r26)
    assert got["_http"] == 200 and got["status"] == "OK"
    assert got["data"] == [
        {"id": "bss-http", "name": "BSS", "segment": [{"id": str(a)}]},
        {
            "id": "bss-http",
            "name": "BSS",
            "segment": [{"id": "120", "value": "4"}],
            "ext": {"segtax": 4},
        },
    ]
    assert got["ids"][:3] == ["uid=" + BUYERUID, f"device=idfa:{IDFA}", f"ifa=idfa:{IDFA}"]
    assert got["related_ids"] == ["uid=4242"]
    for request in (r26, request_25(), request_26(regs={"gdpr": 1}), {}):
        over_http = post(admin, request)
        expected = local.user_data(request, M)
        assert {k: over_http[k] for k in expected} == expected, request
    other = post(Api(srv.url, "m32", "password-123"), r26, member_id=OTHER)
    assert other["data"][0]["segment"] == [{"id": str(theirs)}]


def test_links_posted_to_id_link_expand_the_answer(env):
    srv, admin, data, _local = env
    seg = admin.segment(M, "linked-crm")["id"]
    theirs = admin.segment(OTHER, "linked-theirs")["id"]
    data.memberships([(f"ext={M}:CRM-LINK", seg, 5), (f"ext={OTHER}:X", theirs, None)])
    request = {"user": {"buyeruid": "8080"}, "regs": {"gdpr": 0}}
    before = post(admin, request)
    assert (before["data"], before["reason"], before["related_ids"]) == ([], "no_segments", [])
    member = Api(srv.url, "m31", "password-123")
    linked = member.call(
        "POST",
        "/id-link",
        json={"links": [{"a": "uid=8080", "b": f"ext={M}:CRM-LINK"}], "scope": "member"},
    )
    assert linked["status"] == "OK", linked
    other = Api(srv.url, "m32", "password-123")
    assert (
        other.call(
            "POST",
            "/id-link",
            params={"member_id": OTHER},
            json={"links": [{"a": "uid=8080", "b": f"ext={OTHER}:X"}], "scope": "member"},
        )["status"]
        == "OK"
    )
    got = post(member, request)
    assert got["related_ids"] == [f"ext={M}:CRM-LINK"]  # never OTHER's link
    assert got["data"][0]["segment"] == [{"id": str(seg), "value": "5"}]
    mine = post(other, request, member_id=OTHER)
    assert mine["related_ids"] == [f"ext={OTHER}:X"]
    assert mine["data"][0]["segment"] == [{"id": str(theirs)}]
    assert post(member, request, related="false")["data"] == []


def test_merge_round_trip(env):
    srv, admin, data, local = env
    seg = admin.segment(M, "merge-a")["id"]
    data.memberships([("uid=555", seg, 9)])
    request = request_26()  # its IFA and eids belong to the other tests' users
    request["device"] = {"ua": request["device"]["ua"], "ip": "10.1.2.3"}
    del request["user"]["eids"]
    request["user"]["buyeruid"] = "555"
    request["user"]["data"].append({"id": "bss-http", "name": "old", "segment": [{"id": "1"}]})
    request["user"]["ext"] = {"consent": tc_string(purposes=[1, 3, 4], vendors=[VENDOR]), "n": 1.5}
    request["imp"][0]["ext"] = {"big": 2**63 + 1, "nested": [{"a": None}, "é"]}
    got = post(admin, request, merge="true")
    assert got["status"] == "OK"
    out = got["request"]
    ours = {"id": "bss-http", "name": "BSS", "segment": [{"id": str(seg), "value": "9"}]}
    assert out["user"]["data"] == [request["user"]["data"][0], ours]
    expected = copy.deepcopy(request)
    expected["user"]["data"] = [request["user"]["data"][0], ours]
    assert out == expected  # every other field JSON-equal to what was posted
    # Refused by a privacy signal: our stale entry goes, the rest stays.
    refused = post(admin, {**request, "regs": {"coppa": 1}}, merge="true")
    assert refused["reason"] == "coppa"
    assert refused["request"]["user"]["data"] == [request["user"]["data"][0]]
    # No user object and nothing found: the request comes back as posted.
    bare = {"id": "x", "imp": [{"id": "1"}]}
    assert post(admin, bare, merge="true")["request"] == bare


def test_only_members_users_and_admins(env):
    srv, admin, _data, _local = env
    other = Api(srv.url, "m32", "password-123")
    refused = post(other, request_26())
    assert (refused["_http"], refused["error_id"]) == (403, "UNAUTH")
    # Without member_id a member's user asks for its own member; an admin must name one.
    mine = other.call("POST", "/openrtb/user-data", json=request_26())
    assert mine["status"] == "OK"
    needs = admin.call("POST", "/openrtb/user-data", json=request_26())
    assert (needs["_http"], needs["error"]) == (400, "member_id is required")
    missing = post(admin, request_26(), member_id=4040)
    assert (missing["_http"], missing["error_id"]) == (404, "NOTFOUND")
    anonymous = Api(srv.url).call("POST", "/openrtb/user-data", params={"member_id": M}, json={})
    assert (anonymous["_http"], anonymous["error_id"]) == (401, "NOAUTH")
    bad = post(admin, {}, member_id="abc")
    assert bad["_http"] == 400 and bad["error_id"] == "SYNTAX"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "the body must be a JSON object: an OpenRTB BidRequest"),
        (b'"text"', "the body must be a JSON object: an OpenRTB BidRequest"),
        (b"null", "the body must be a JSON object: an OpenRTB BidRequest"),
        (b"{not json", "the body is not valid JSON: post an OpenRTB BidRequest object"),
        (b"", "the body is not valid JSON: post an OpenRTB BidRequest object"),
        (b"\xff\xfe", "the body is not valid JSON: post an OpenRTB BidRequest object"),
        # deeper than the JSON parser recurses: refused, never a 500
        (
            b"[" * 2040 + b"]" * 2040,
            "the body is not valid JSON: post an OpenRTB BidRequest object",
        ),
    ],
)
def test_bodies_that_are_not_an_object(env, body, message):
    _srv, admin, _data, _local = env
    got = post(admin, body)
    assert got["_http"] == 400
    assert {k: got[k] for k in ("status", "error_id", "error", "error_description")} == {
        "status": "ERROR",
        "error_id": "SYNTAX",
        "error": message,
        "error_description": message,
    }


def test_deep_requests_are_not_echoed(env):
    _srv, admin, _data, _local = env
    body = b'{"imp": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert post(admin, body)["status"] == "OK"  # read, never sent back
    got = post(admin, body, merge="true")
    assert (got["_http"], got["error"]) == (400, "the bid request nests more than 100 levels deep")
    body = b'{"imp": ' + b"[" * 98 + b"]" * 98 + b"}"
    assert post(admin, body, merge="true")["request"] == json.loads(body)


def test_large_bodies_are_refused_with_413(env):
    _srv, admin, _data, _local = env
    request = request_26()
    request["imp"][0]["ext"] = {"pad": "x" * 5000}
    got = post(admin, request)
    assert (got["_http"], got["error"]) == (413, "the bid request exceeds 4096 bytes")


def test_segment_taxonomy_fields(env):
    _srv, admin, _data, _local = env
    seg = admin.segment(M, "tax-1", taxonomy_id=4, taxonomy_node="  77 ")
    assert (seg["taxonomy_id"], seg["taxonomy_node"]) == (4, "77")
    changed = admin.ok(
        "PUT", "/segment", params={"id": seg["id"]}, json={"segment": {"taxonomy_id": None}}
    )["segment"]
    assert (changed["taxonomy_id"], changed["taxonomy_node"]) == (None, "77")
    for fields, error in (
        ({"taxonomy_id": 0}, "taxonomy_id"),
        ({"taxonomy_id": "four"}, "taxonomy_id must be an integer"),
        ({"taxonomy_node": "n" * 101}, "taxonomy_node may have at most 100 characters"),
    ):
        bad = admin.call(
            "POST", "/segment", params={"member_id": M}, json={"segment": {"code": "t", **fields}}
        )
        assert bad["_http"] == 400 and error in bad["error"], bad
    plain = admin.segment(M, "tax-none")
    assert (plain["taxonomy_id"], plain["taxonomy_node"]) == (None, None)


def test_member_settings(env):
    srv, admin, data, local = env
    member = Api(srv.url, "m31", "password-123")
    got = member.call("GET", "/openrtb/settings")
    assert got["openrtb_settings"] == {"user_id_is_external": False, "segment_id_field": "id"}
    put = member.call(
        "PUT",
        "/openrtb/settings",
        json={"openrtb_settings": {"user_id_is_external": True, "segment_id_field": "code"}},
    )
    assert put["status"] == "OK"
    seg = admin.segment(M, "crm-seg")["id"]
    data.memberships([(f"ext={M}:CRM-9", seg, None)])
    got = post(member, request_26(user={"id": "CRM-9"}, device={"os": "iOS"}))
    assert got["ids"] == [f"ext={M}:CRM-9"] and got["data"][0]["segment"] == [{"id": "crm-seg"}]
    bad = member.call(
        "PUT", "/openrtb/settings", json={"openrtb_settings": {"segment_id_field": "name"}}
    )
    assert bad["_http"] == 400 and bad["error_id"] == "SYNTAX"
    other = Api(srv.url, "m32", "password-123").call(
        "PUT", "/openrtb/settings", params={"member_id": M}, json={"openrtb_settings": {}}
    )
    assert other["_http"] == 403
    member.call("PUT", "/openrtb/settings", json={"openrtb_settings": {}})
    assert member.call("GET", "/openrtb/settings")["openrtb_settings"]["segment_id_field"] == "id"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=_json
    | st.fixed_dictionaries(
        {}, optional={"buyeruid": _json, "eids": _json, "ext": _json, "consent": _json}
    ),
    device=_json
    | st.fixed_dictionaries({}, optional={"ifa": _json, "os": _json, "lmt": _json, "ext": _json}),
    regs=_json
    | st.fixed_dictionaries(
        {}, optional={"gdpr": _json, "gpp": _json, "gpp_sid": _json, "ext": _json}
    ),
    merge=st.booleans(),
)
def test_fuzzed_requests_never_get_a_500(env, user, device, regs, merge):
    _srv, admin, _data, _local = env
    request = {"id": "f", "user": user, "device": device, "regs": regs}
    got = post(admin, json.loads(json.dumps(request)), merge=str(merge).lower())
    assert got["_http"] == 200 and got["status"] == "OK", got
    if merge:
        assert got["request"]["id"] == "f"


def test_opted_out_ids_never_contribute(env):
    srv, admin, data, local = env
    mine = admin.segment(M, "optout-own")["id"]
    related = admin.segment(M, "optout-related")["id"]
    member = Api(srv.url, "m31", "password-123")
    out = member.call(
        "POST", "/user-optout", params={"member_id": M}, json={"users": [{"uid": "7171"}]}
    )
    assert out["status"] == "OK", out
    # Written straight into the store after the opt-out, as a write that bypassed the
    # suppression would be: the read path must still leave the opted-out ID out.
    data.memberships([("uid=7272", mine, None), ("uid=7171", related, None)])
    data.links([("uid=7272", "uid=7171")])
    request = {"user": {"buyeruid": "7272"}, "regs": {"gdpr": 0}}
    got = post(member, request)
    assert got["related_ids"] == ["uid=7171"]
    assert got["data"][0]["segment"] == [{"id": str(mine)}]
    # Asked for by the opted-out ID itself: its own membership stays out too.
    alone = post(member, {"user": {"buyeruid": "7171"}, "regs": {"gdpr": 0}})
    assert alone["data"][0]["segment"] == [{"id": str(mine)}]
    lookup = member.call(
        "GET", "/user-segments", params={"member_id": M, "uid": "7272", "related": "true"}
    )
    assert [s["id"] for s in lookup["segments"]] == [mine]
    assert local.targeting.suppression is not None
    local.targeting.suppression.invalidate()
    assert local.user_data(request, M)["data"] == got["data"]
