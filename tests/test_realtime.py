"""POST /rt-segment against a real `bss serve`: the documented payload, answers and warnings,
the batch rules, limits, idempotency, and visibility to lookups when the answer returns."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc

MAX_LIFETIME = 180 * 24 * 3600
IDFA = "AEBE52E7-03EE-455A-B3C4-E57283966239"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # The per-member real-time limits are raised here (one test server is shared); the
    # limits themselves are tested on servers of their own.
    proc = ServerProc(
        tmp_path_factory.mktemp("rt") / "data",
        {"rt_users_per_second": 1_000_000, "rt_posts_per_second": 1_000_000},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def world(server: ServerProc) -> dict[str, Any]:
    admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(501)
    admin.member(502)
    seg = {
        "autos": admin.segment(501, "autos")["id"],
        "bikes": admin.segment(501, "bikes", expire_minutes=60)["id"],
        "off": admin.segment(501, "off", state="inactive")["id"],
        "theirs": admin.segment(502, "theirs")["id"],
        "shared": admin.segment(502, "shared")["id"],
    }
    admin.config(501, member_segment_access=[{"segment_owner_member_id": 502}])
    admin.config(502)
    admin.user("rt501", 501)
    return {"admin": admin, "seg": seg, "api": Api(server.url, "rt501", "password-123")}


def post(api: Api, body: Any, **kw: Any) -> dict[str, Any]:
    return api.call("POST", "/rt-segment", json=body, **kw)


def block(seg_id: int | None = None, **fields: Any) -> dict[str, Any]:
    return {"seg_id": seg_id, "seg_code": None, "value": None, "expiration": None,
            "member_id": None, **fields}  # fmt: skip


def lifetime(segment: dict[str, Any]) -> int:
    def ts(text: str) -> int:
        return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())

    return ts(segment["expiry"]) - ts(segment["timestamp"])


def live(api: Api, uid: str) -> dict[int, Any]:
    return api.segments_of(uid=uid)


def test_documented_example_applies_and_is_visible_at_once(world):
    api, seg = world["api"], world["seg"]
    body = {
        "rt_segment": [
            {
                "user_id": "12345678900987654321",
                "seg_block": [
                    block(seg["autos"], value=1, expiration=1440),
                    block(None, seg_code="BIKES", member_id=501, value=7, expiration=0),
                ],
                "domain": None,
            }
        ]
    }
    answer = post(api, body)
    assert answer["_http"] == 200 and answer["status"] == "OK"
    assert answer["message"] == {"users_in_request": 1, "segments_in_request": 2}
    assert answer["warnings"] == []
    found = live(api, "12345678900987654321")  # visible as soon as the answer is back
    assert sorted(found) == [seg["autos"], seg["bikes"]]
    assert found[seg["autos"]]["value"] == 1
    assert found[seg["bikes"]]["value"] == 7


def test_expirations_removals_and_the_later_write_wins(world, server):
    api, seg = world["api"], world["seg"]
    uid = "4013681496264948522"
    answer = post(api, {"rt_segment": [{"user_id": uid, "seg_block": [
        block(seg["autos"], expiration=0),  # 0: the 180-day maximum
        block(seg["bikes"]),  # none given: the segment's expire_minutes (60)
    ]}]})  # fmt: skip
    assert answer["message"] == {"users_in_request": 1, "segments_in_request": 2}
    found = live(api, uid)
    assert sorted(found) == [seg["autos"], seg["bikes"]]
    assert lifetime(found[seg["autos"]]) == MAX_LIFETIME
    assert lifetime(found[seg["bikes"]]) == 3600
    # -1 removes; a later post wins over an earlier one
    post(api, {"rt_segment": [{"user_id": uid, "seg_block": [block(seg["autos"], expiration=-1)]}]})
    assert sorted(live(api, uid)) == [seg["bikes"]]
    post(api, {"rt_segment": [{"user_id": uid, "seg_block": [block(seg["autos"], value=3)]}]})
    assert live(api, uid)[seg["autos"]]["value"] == 3
    # within one post, the later block wins as well
    post(api, {"rt_segment": [
        {"user_id": uid, "seg_block": [block(seg["autos"], value=4)]},
        {"user_id": uid, "seg_block": [block(seg["autos"], expiration=-1)]},
    ]})  # fmt: skip
    assert sorted(live(api, uid)) == [seg["bikes"]]


def test_device_ids_and_shared_segments(world):
    api, seg = world["api"], world["seg"]
    answer = post(api, {"rt_segment": [{"user_id": IDFA, "domain": "idfa", "seg_block": [
        block(None, seg_code="shared", member_id=502),
    ]}]})  # fmt: skip
    assert answer["message"] == {"users_in_request": 1, "segments_in_request": 1}
    assert answer["warnings"] == []
    found = world["admin"].segments_of(device_id=IDFA.lower(), domain="idfa")
    assert sorted(found) == [seg["shared"]]


def test_bad_entries_are_skipped_with_documented_warnings(world):
    api, seg, admin = world["api"], world["seg"], world["admin"]
    other_member_only = admin.segment(502, "private-to-502")["id"]
    admin.config(501)  # no member_segment_access any more: 502's segments are not 501's
    try:
        entries = [
            {"user_id": "1", "seg_block": [block(None, seg_code="abc", value=1, expiration=1)]},
            {"user_id": "asdf"},
            {"seg_block": [block(1, value=1, expiration=1)]},
            {"user_id": "777", "seg_block": [
                block(999_999),  # no such segment
                block(other_member_only),  # someone else's
                block(seg["off"]),  # inactive
                block(seg["autos"], value=2**31),  # VALUE out of range
                block(seg["autos"], expiration=-5),  # EXPIRATION below -2
                block(seg["bikes"], value=5),  # the one good block
            ]},
            {"user_id": "not-a-number", "seg_block": [block(seg["autos"])]},
            {"user_id": "123", "domain": "sha1mac", "seg_block": [block(seg["autos"])]},
            {"user_id": "x-y", "domain": "idfa", "seg_block": [block(seg["autos"])]},
        ]  # fmt: skip
        answer = post(api, {"rt_segment": entries})
    finally:
        admin.config(501, member_segment_access=[{"segment_owner_member_id": 502}])
    assert answer["_http"] == 200 and answer["status"] == "OK"
    assert answer["message"] == {"users_in_request": 4, "segments_in_request": 9}
    got = [(w["message"], w.get("counter")) for w in answer["warnings"]]
    assert got == [
        ("'seg_id' or 'seg_code' and 'member_id' are required", None),
        ("No valid segments for user_id: 1.", None),
        ("'seg_block' is required", None),
        ("'user_id' is required and cannot be empty", None),
        (
            "'domain' 'sha1mac' is not supported; use null or one of: aaid, idfa, md5udid, "
            "openudid, rida, sha1udid, windowsadid.",
            None,
        ),
        ("Invalid user_id 'not-a-number': invalid user ID.", None),
        ("Invalid user_id 'x-y': invalid idfa device ID.", None),
        ("segment 999999 does not exist.", "num_invalid_segment"),
        (f"segment {other_member_only} does not exist.", "num_invalid_segment"),
        (f"segment {seg['off']} is inactive.", "num_inactive_segment"),
        ("VALUE outside -2147483648..2147483647.", "num_other_error"),
        ("EXPIRATION below -2.", "num_other_error"),
    ]
    assert answer["warnings"][0]["entity"] == entries[0]["seg_block"][0]
    assert answer["warnings"][2]["entity"] == entries[1]
    assert answer["warnings"][7]["entity"] == entries[3]["seg_block"][0]
    assert sorted(live(api, "777")) == [seg["bikes"]]
    assert live(api, "777")[seg["bikes"]]["value"] == 5


def test_another_members_segment_is_answered_like_no_segment(world):
    """The same post, naming a segment of a member 501 may not write (by id and by code),
    gets exactly the same answer before and after those segments are deleted."""
    api, admin = world["api"], world["admin"]
    admin.member(503)
    hidden = admin.segment(503, "hidden")["id"]
    body = {"rt_segment": [{"user_id": "31337", "seg_block": [
        block(hidden), block(None, seg_code="HIDDEN", member_id=503),
    ]}]}  # fmt: skip

    def answer() -> dict[str, Any]:
        return {k: v for k, v in post(api, body).items() if k != "dbg_info"}

    while_it_exists = answer()
    admin.ok("DELETE", "/segment", params={"id": hidden})
    assert while_it_exists == answer()
    assert [(w["message"], w["counter"]) for w in while_it_exists["warnings"][:2]] == [
        (f"segment {hidden} does not exist.", "num_invalid_segment"),
        ("segment 503:HIDDEN does not exist.", "num_invalid_segment"),
    ]
    assert live(api, "31337") == {}


def test_nothing_valid_says_so(world):
    entries = [{"user_id": "asdf"}]
    answer = post(world["api"], {"rt_segment": entries, "domain": "domain"})
    assert answer["message"] == {"users_in_request": 0, "segments_in_request": 0}
    assert answer["warnings"] == [
        {"message": "'seg_block' is required", "entity": {"user_id": "asdf"}},
        {"message": "No valid rt_segment in request.", "entity": {"rt_segment": entries}},
    ]


def test_over_1000_users_applies_the_first_1000(world):
    api, seg = world["api"], world["seg"]
    entries = [
        {"user_id": str(9_000_000 + i), "seg_block": [block(seg["autos"]), block(seg["bikes"])]}
        for i in range(1002)
    ]
    answer = post(api, {"rt_segment": entries})
    assert answer["message"] == {"users_in_request": 1000, "segments_in_request": 2000}
    assert answer["warnings"] == [
        {"message": "Too many user_ids in request.", "entity": entries[1000]},
        {"message": "Too many user_ids in request.", "entity": entries[1001]},
    ]
    assert sorted(live(api, str(9_000_000 + 999))) == [seg["autos"], seg["bikes"]]
    assert live(api, str(9_000_000 + 1000)) == {}


def test_more_than_100_segments_per_user(world):
    api, seg = world["api"], world["seg"]
    blocks = [block(seg["autos"], value=i) for i in range(102)]
    answer = post(api, {"rt_segment": [{"user_id": "55", "seg_block": blocks}]})
    assert answer["message"] == {"users_in_request": 1, "segments_in_request": 100}
    assert [w["entity"] for w in answer["warnings"]] == blocks[100:]
    assert answer["warnings"][0]["message"] == (
        "Too many segments for user_id: 55; at most 100 per user."
    )
    assert live(api, "55")[seg["autos"]]["value"] == 99  # the last applied block won


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"rt_segment": {}}',
        b'{"rt_segment": ["x"]}',
        b'{"rt_segment": [{"user_id": "9", "seg_block": {"seg_id": 1}}]}',
        b'{"rt_segment": [{"user_id": "9", "seg_block": [{"seg_id": "1"}]}]}',
        b'{"rt_segment": [{"user_id": "9", "seg_block": [{"seg_id": 1, "value": 1.5}]}]}',
        b'{"rt_segment": [{"user_id": "9", "seg_block": [{"seg_id": 99999999999999999999}]}]}',
        b'{"rt_segment": [{"user_id": ["9"], "seg_block": []}]}',
    ],
)
def test_a_body_not_of_the_documented_shape_is_refused_whole(world, raw):
    api, seg = world["api"], world["seg"]
    good = b'{"user_id": "31337", "seg_block": [{"seg_id": %d}]}' % seg["autos"]
    body = (
        raw
        if not raw.startswith(b'{"rt_segment": [{')
        else raw.replace(b"[{", b"[" + good + b", {", 1)
    )
    answer = api.call("POST", "/rt-segment", content=body)
    assert answer["_http"] == 400 and answer["error_id"] == "SYNTAX", answer
    assert live(api, "31337") == {}  # nothing of it applied


def test_token_as_query_parameter_and_no_token(world, server):
    api, seg = world["api"], world["seg"]
    anon = Api(server.url)
    body = {"rt_segment": [{"user_id": "808", "seg_block": [block(seg["autos"])]}]}
    assert anon.call("POST", "/rt-segment", json=body)["_http"] == 401
    answer = anon.call("POST", f"/rt-segment?access_token={api.token}", json=body)
    assert answer["status"] == "OK" and answer["message"]["users_in_request"] == 1
    assert sorted(live(api, "808")) == [seg["autos"]]
    # a member cannot post for another member
    assert post(api, body, params={"member_id": 502})["_http"] == 403


def test_idempotency_key_applies_once(world):
    api, seg = world["api"], world["seg"]
    uid = "6060"
    body = {"rt_segment": [{"user_id": uid, "seg_block": [block(seg["autos"], value=1)]}]}
    first = post(api, body, headers={"Idempotency-Key": "k-6060"})
    assert first["message"] == {"users_in_request": 1, "segments_in_request": 1}
    post(api, {"rt_segment": [{"user_id": uid, "seg_block": [block(seg["autos"], value=2)]}]})
    again = post(api, body, headers={"Idempotency-Key": "k-6060"})
    assert again["message"] == first["message"] and again["replayed"] is True
    # the retry did not apply again: the later post (value 2) still stands
    assert live(api, uid)[seg["autos"]]["value"] == 2


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(world):
    api, seg = world["api"], world["seg"]
    body = {"rt_segment": [{"user_id": "6161", "seg_block": [block(seg["autos"], value=1)]}]}
    first = post(api, body, headers={"Idempotency-Key": "k-6161"})
    assert first["status"] == "OK" and "replayed" not in first
    other = {"rt_segment": [{"user_id": "6262", "seg_block": [block(seg["autos"], value=1)]}]}
    refused = post(api, other, headers={"Idempotency-Key": "k-6161"})
    assert refused["_http"] == 409 and "used with a different body" in refused["error"]
    assert live(api, "6262") == {}  # the new body was not applied...
    # ...and the same body, spaced and ordered otherwise, is still a replay.
    respaced = api.call(
        "POST",
        "/rt-segment",
        content=json.dumps(
            {"rt_segment": [dict(reversed(body["rt_segment"][0].items()))]}, indent=3
        ).encode(),
        headers={"Idempotency-Key": "k-6161", "Content-Type": "application/json"},
    )
    assert respaced["status"] == "OK" and respaced["replayed"] is True


def test_post_size_and_user_rate_limits(bss_server):
    proc = bss_server(rt_users_per_second=3, rt_max_post_bytes=2000)
    admin = Api(proc.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(9)
    seg = admin.segment(9, "s")["id"]
    big = {"rt_segment": [{"user_id": "1", "seg_block": [block(seg)] * 60}]}
    answer = admin.call("POST", "/rt-segment", params={"member_id": 9}, json=big)
    assert answer["_http"] == 413 and answer["error"] == "the JSON payload exceeds 2000 bytes"
    four = {"rt_segment": [{"user_id": str(u), "seg_block": [block(seg)]} for u in range(1, 5)]}
    answer = admin.call("POST", "/rt-segment", params={"member_id": 9}, json=four)
    assert answer["_http"] == 429 and answer["error_code"] == "RATE_EXCEEDED"
    assert admin.segments_of(uid="1") == {}  # refused whole


def test_report_counts_a_retried_post_once(world):
    api, admin = world["api"], world["admin"]
    seg = admin.segment(501, "reported", short_name="Reported")["id"]
    body = {"rt_segment": [{"user_id": u, "seg_block": [block(seg)]} for u in ("1", "6", "7")]}
    for _ in range(2):
        answer = post(api, body, headers={"Idempotency-Key": "report-once"})
        assert answer["message"] == {"users_in_request": 3, "segments_in_request": 3}
    remove = {"rt_segment": [{"user_id": "7", "seg_block": [block(seg, expiration=-1)]}]}
    post(api, remove)
    posted = api.ok(
        "POST",
        "/report",
        json={
            "report": {
                "report_type": "segment_load",
                "columns": ["segment_id", "day", "total_loads", "total_removals", "daily_uniques"],
                "filters": [{"segment_id": seg}],
                "report_interval": "today",
            }
        },
    )
    csv_text = api.raw("GET", "/report-download", params={"id": posted["report_id"]}).text
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert csv_text == (
        f"segment_id,day,total_loads,total_removals,daily_uniques\r\n{seg},{today},3,1,3\r\n"
    )
