"""Seed 004 (legacy format), examples 1-6: each config given as exactly the fields its table
shows (plus the segments and member access the example needs), each file run through a real
`bss serve`, and the memberships its text describes checked with GET /user-segments.

Where an example removes a user from segments, the user is put into them first (with the
same config), so that the removal is visible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api

UPLOADER = 958
UID = "12345678900987654321"
IDFA = "AEBE52E7-03EE-455A-B3C4-E57283966239"


@dataclass
class Example:
    config: dict[str, Any]
    lines: list[str]
    #: lookup query -> segment ids the user is in afterwards
    expected: dict[tuple[tuple[str, str], ...], set[int]]
    #: (owner member, id, code) of the segments the example needs
    segments: list[tuple[int, int, str | None]] = field(
        default_factory=lambda: [(UPLOADER, 10000 + i, None) for i in range(4)]
    )
    before: list[str] = field(default_factory=list)
    valid: int = 0


EXAMPLES = {
    "1": Example(
        config={
            "separator_1": ",",
            "separator_2": ";",
            "separator_3": ":",
            "segment_fields": "[SEG_ID,EXPIRATION]",
        },
        before=[f"{UID},10002:0;10003:0"],
        lines=[f"{UID},10000:1440;10001:1440;10002:-1;10003:-1"],
        expected={(("uid", UID),): {10000, 10001}},
        valid=4,
    ),
    "2": Example(
        config={
            "separator_1": ",",
            "separator_2": ";",
            "separator_4": "\t",
            "segment_fields": "[SEG_CODE]",
        },
        segments=[
            (UPLOADER, 10000, "auto_intender"),
            (UPLOADER, 10001, "nike_shopper"),
            (UPLOADER, 10002, "bicycle_intender"),
            (UPLOADER, 10003, "newbalance_shopper"),
        ],
        before=[f"{UID},bicycle_intender;newbalance_shopper"],
        lines=[f"{UID},auto_intender;nike_shopper\tbicycle_intender;newbalance_shopper"],
        expected={(("uid", UID),): {10000, 10001}},
        valid=4,
    ),
    "3": Example(
        config={
            "separator_1": "\t",
            "separator_3": "\t",
            "segment_fields": "[TIMESTAMP,SEG_ID,VALUE,EXPIRATION]",
        },
        before=[f"{UID}\t0\t10002\t0\t0"],
        lines=[
            f"{UID}\t1320689131\t10000\t0\t0",
            f"{UID}\t1320689131\t10001\t0\t0",
            f"{UID}\t1320689131\t10002\t0\t-1",
        ],
        expected={(("uid", UID),): {10000, 10001}},
        valid=3,
    ),
    "4": Example(
        config={
            "separator_1": ",",
            "separator_2": ";",
            "separator_3": ":",
            "segment_fields": "[SEG_ID,EXPIRATION]",
            "uses_external_uids": True,
            # 10002 and 10003 are cross-segments: another member's, shared with this one.
            "member_segment_access": [{"segment_owner_member_id": 959}],
        },
        segments=[(UPLOADER, 10000, None), (UPLOADER, 10001, None)]
        + [(959, 10002, None), (959, 10003, None)],
        lines=["abcdefg,10000:1440;10001:1440", "abcdefg,10002:1440;10003:1440"],
        expected={
            (("external_id", "abcdefg"), ("external_member_id", str(UPLOADER))): {
                10000,
                10001,
                10002,
                10003,
            }
        },
        valid=4,
    ),
    "5": Example(
        config={
            "separator_1": ",",
            "separator_2": ";",
            "separator_3": ":",
            "separator_4": "\t",
            "segment_fields": "[MEMBER_ID,SEG_CODE]",
            "member_segment_access": [
                {"segment_owner_member_id": 400},
                {"segment_owner_member_id": 500},
            ],
        },
        segments=[(400, 10000, "car_like"), (500, 10001, "bike_like")],
        lines=[f"{UID},400:car_like;500:bike_like"],
        expected={(("uid", UID),): {10000, 10001}},
        valid=2,
    ),
    "6": Example(
        config={
            "separator_1": ",",
            "separator_2": ";",
            "separator_3": ":",
            "separator_4": "\t",
            "separator_5": "^",
            "segment_fields": "[SEG_ID,EXPIRATION]",
        },
        before=[f"{IDFA},10002:0;10003:0^3"],
        lines=[f"{IDFA},10000:1440;10001:1440;10002:-1;10003:-1^3"],
        expected={(("device_id", IDFA), ("domain", "idfa")): {10000, 10001}},
        valid=4,
    ),
}


def _run(api: Api, lines: list[str]) -> dict[str, Any]:
    return api.run(UPLOADER, "".join(f"{line}\n" for line in lines).encode())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_seed_004_example(bss_server, name):
    example = EXAMPLES[name]
    api = Api(bss_server().url, ADMIN_USER, ADMIN_PASSWORD)
    for owner in sorted({UPLOADER, *(owner for owner, _, _ in example.segments)}):
        api.member(owner)
    for owner, segment_id, code in example.segments:
        api.segment(owner, code or f"seg-{segment_id}", id=segment_id)
    cfg = api.config(UPLOADER, **example.config)
    for sep in ("separator_1", "separator_2", "separator_3", "separator_4", "separator_5"):
        if sep in example.config:
            assert cfg[sep] == example.config[sep]
    if example.before:
        assert _run(api, example.before)["num_invalid_format"] == 0
    job = _run(api, example.lines)
    assert job["phase"] == "completed", job
    assert job["num_valid"] == example.valid and job["num_invalid_format"] == 0, job
    for query, segment_ids in example.expected.items():
        assert set(api.segments_of(**dict(query))) == segment_ids


def test_example_3_defaults_yield_where_they_clash(server, admin, member_id):
    cfg = admin.config(member_id, **EXAMPLES["3"].config)
    # separator_4's default TAB would clash: it stays unset; the others keep their defaults.
    assert (cfg["separator_2"], cfg["separator_4"], cfg["separator_5"]) == (";", None, "^")


def test_config_put_changes_only_the_named_fields(server, admin, member_id):
    admin.config(member_id, separator_1="\t", separator_3="\t", num_error_log_lines=7)
    put = admin.ok(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"uses_external_uids": True}},
    )["batch_segment_upload_config"]
    assert put["use_external_uids"] is True and put["num_error_log_lines"] == 7
    assert (put["separator_1"], put["separator_3"], put["separator_4"]) == ("\t", "\t", None)
    # Setting separator_3 back to ':' lets separator_4 take its default again.
    put = admin.ok(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"separator_3": ":"}},
    )["batch_segment_upload_config"]
    assert (put["separator_1"], put["separator_3"], put["separator_4"]) == ("\t", ":", None)
    assert put["use_external_uids"] is True and put["num_error_log_lines"] == 7
