"""bss.targeting in process: the IDs a bid request carries, the segments of those IDs and of
IDs related to them, privacy signals, and arbitrary requests that must never raise. Every
test writes real memberships and links into a real embedded store."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openrtb_util import AAID, BUYERUID, IDFA, DataDir, request_25, request_26
from privacy_strings import gpp_string, tc_string, us_national

import bss.targeting
from bss.accounts.service import create_member
from bss.db import init_db, make_engine
from bss.formats.records import DEVICE_DOMAINS
from bss.identity.ids import parse_id
from bss.segments.service import create_segment, update_segment
from bss.settings import Settings
from bss.targeting.bidrequest import read_ids
from bss.targeting.catalog import MemberSettings, write_member_settings
from bss.targeting.service import Targeting, merge_user_data

M, OTHER = 10, 20
VENDOR = 755


class World:
    def __init__(self, root: Path) -> None:
        self.settings = Settings(data_dir=root, tcf_vendor_id=VENDOR, openrtb_data_id="bss-test")
        self.settings.make_data_dir()
        self.db = make_engine(self.settings.resolved_database_url)
        init_db(self.db)
        for member in (M, OTHER):
            create_member(self.db, {"id": member, "name": f"m{member}"})
        self.seg: dict[str, int] = {}
        self.targeting = bss.targeting.open(data_dir=root, settings=self.settings)
        self.data = DataDir(root, self.targeting.targeting.store)

    def segment(self, name: str, member: int = M, **fields: Any) -> int:
        row = create_segment(self.db, member, {"code": name, **fields})
        self.seg[name] = row["id"]
        return row["id"]

    def ask(self, request: dict[str, Any], member: int = M) -> dict[str, Any]:
        self.targeting.targeting.catalog._members.clear()  # settings changed by the test
        return self.targeting.user_data(request, member)

    def segment_ids(self, request: dict[str, Any], member: int = M) -> list[str]:
        answer = self.ask(request, member)
        return [s["id"] for d in answer["data"] for s in d["segment"]]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "data")
    yield w
    w.targeting.close()
    w.data.close()


def only(request_user: dict[str, Any] | None = None, device: dict[str, Any] | None = None) -> dict:
    """A 2.6 request carrying only the given user and device objects."""
    return request_26(user=request_user or {}, device=device or {})


ID_KINDS = [
    ("buyeruid", {"buyeruid": BUYERUID}, None, ["uid=" + BUYERUID]),
    (
        "ifa by os",
        None,
        {"ifa": IDFA.upper(), "os": "iOS"},
        [f"device=idfa:{IDFA}", f"ifa=idfa:{IDFA}"],
    ),
    (
        "ifa by ifa_type",
        None,
        {"ifa": AAID, "os": "Android", "ext": {"ifa_type": "AAID"}},
        [f"device=aaid:{AAID}", f"ifa=aaid:{AAID}"],
    ),
    (
        "ifa type not a device domain",
        None,
        {"ifa": "abc-1", "ext": {"ifa_type": "afai"}},
        ["ifa=afai:abc-1"],
    ),
    (
        "eids 2.6",
        {"eids": [{"source": "LiveRamp.com", "uids": [{"id": "XY1", "atype": 3}]}]},
        None,
        ["eid=liveramp.com:XY1"],
    ),
    (
        "eids 2.5",
        {"ext": {"eids": [{"source": "adserver.org", "uids": [{"id": "T-1"}, {"id": "T-2"}]}]}},
        None,
        ["eid=adserver.org:T-1", "eid=adserver.org:T-2"],
    ),
]


@pytest.mark.parametrize(("name", "user", "device", "ids"), ID_KINDS, ids=[k[0] for k in ID_KINDS])
def test_each_id_kind_alone(world, name, user, device, ids):
    for i, text in enumerate(ids):
        world.data.memberships([(text, world.segment(f"s{i}"), None)])
    world.data.memberships([("uid=99", world.segment("elsewhere"), None)])
    answer = world.ask(only(user, device))
    assert answer["ids"] == ids
    assert answer["reason"] is None and answer["related_ids"] == []
    assert [s["id"] for s in answer["data"][0]["segment"]] == [
        str(world.seg[f"s{i}"]) for i in range(len(ids))
    ]
    assert answer["data"][0]["id"] == "bss-test" and answer["data"][0]["name"] == "BSS"


def test_user_id_is_the_members_external_id_only_when_it_says_so(world):
    seg = world.segment("crm")
    world.data.memberships([(f"ext={M}:CRM-7", seg, 3)])
    request = only({"id": "CRM-7"})
    assert world.ask(request)["ids"] == [] and world.ask(request)["reason"] == "no_ids"
    write_member_settings(world.db, M, MemberSettings(user_id_is_external=True))
    answer = world.ask(request)
    assert answer["ids"] == [f"ext={M}:CRM-7"]
    assert answer["data"][0]["segment"] == [{"id": str(seg), "value": "3"}]
    # Member OTHER's reading of the same request names OTHER's external ID, not M's.
    write_member_settings(world.db, OTHER, MemberSettings(user_id_is_external=True))
    assert world.ask(request, OTHER)["ids"] == [f"ext={OTHER}:CRM-7"]


def test_ids_that_name_no_user_are_skipped_with_a_note(world):
    cases = [
        ({"ifa": IDFA, "os": "iOS", "lmt": 1}, "device.lmt=1"),
        ({"ifa": "00000000-0000-0000-0000-000000000000", "os": "iOS"}, "junk ID"),
        ({"ifa": IDFA, "ext": {"ifa_type": "ppid"}}, "publisher- or session-scoped"),
        ({"ifa": IDFA, "ext": {"ifa_type": "sessionid"}}, "publisher- or session-scoped"),
        ({"ifa": IDFA, "os": "Tizen"}, "neither iOS nor Android"),
        ({"ifa": 12345, "os": "iOS"}, "not a string"),
    ]
    for device, why in cases:
        answer = world.ask(only(None, device))
        assert answer["ids"] == [] and answer["reason"] == "no_ids", device
        assert any(why in note for note in answer["skipped"]), (device, answer["skipped"])
    answer = world.ask(
        only({"buyeruid": "0", "eids": [{"source": "x.com", "uids": [{"id": "null"}]}]})
    )
    assert answer["ids"] == [] and len(answer["skipped"]) == 2


def test_all_kinds_together_each_segment_once(world):
    a, b, c, d = (world.segment(x) for x in "abcd")
    world.data.memberships(
        [
            ("uid=" + BUYERUID, a, None),
            (f"ifa=idfa:{IDFA}", a, 5),  # the same segment through another ID
            (f"device=idfa:{IDFA}", b, None),
            ("eid=id5-sync.com:ID5*xyz", c, 7),
            ("eid=adserver.org:TTD-1", d, None),
        ]
    )
    request = request_26()
    request["user"]["buyeruid"] = BUYERUID
    answer = world.ask(request)
    assert answer["ids"] == [
        "uid=" + BUYERUID,
        f"device=idfa:{IDFA}",
        f"ifa=idfa:{IDFA}",
        "eid=id5-sync.com:ID5*xyz",
        "eid=adserver.org:TTD-1",
    ]
    segs = answer["data"][0]["segment"]
    assert [s["id"] for s in segs] == [str(a), str(b), str(c), str(d)]
    assert segs[2] == {"id": str(c), "value": "7"} and "value" not in segs[1]
    assert len(answer["data"]) == 1


def test_openrtb_25_request(world):
    a, b = world.segment("a"), world.segment("b")
    world.data.memberships([("uid=" + BUYERUID, a, None), ("eid=liveramp.com:XY1000", b, 1)])
    answer = world.ask(request_25())
    assert answer["ids"] == ["uid=" + BUYERUID, "eid=liveramp.com:XY1000"]
    assert answer["data"][0]["segment"] == [{"id": str(a)}, {"id": str(b), "value": "1"}]


def test_only_the_members_active_segments(world):
    mine, theirs, off = world.segment("mine"), world.segment("theirs", OTHER), world.segment("off")
    update_segment(world.db, off, {"state": "inactive"})
    world.data.memberships([("uid=5", mine, None), ("uid=5", theirs, None), ("uid=5", off, None)])
    assert world.segment_ids(only({"buyeruid": "5"})) == [str(mine)]
    assert world.segment_ids(only({"buyeruid": "5"}), OTHER) == [str(theirs)]
    assert world.segment_ids(only({"buyeruid": "5"}), 999) == []  # no such member


def test_related_ids_through_member_and_shared_links(world):
    a, b, c, x = (
        world.segment("a"),
        world.segment("b"),
        world.segment("c"),
        world.segment("x", OTHER),
    )
    world.data.memberships(
        [
            ("eid=liveramp.com:R1", a, None),
            (f"ext={M}:CRM1", b, 2),
            ("uid=777", c, None),
            ("uid=777", x, None),
        ]
    )
    world.data.links([("uid=" + BUYERUID, "eid=liveramp.com:R1")], scope=M)
    world.data.links([("eid=liveramp.com:R1", f"ext={M}:CRM1")], scope=M)  # two hops away
    world.data.links([("uid=" + BUYERUID, "uid=777")])  # shared
    world.data.links([("uid=" + BUYERUID, f"ext={OTHER}:Z")], scope=OTHER)
    answer = world.ask(only({"buyeruid": BUYERUID}))
    assert answer["related_ids"] == ["uid=777", "eid=liveramp.com:R1", f"ext={M}:CRM1"]
    assert [s["id"] for s in answer["data"][0]["segment"]] == [str(a), str(b), str(c)]
    # OTHER's reads follow the shared link and its own, never M's.
    other = world.ask(only({"buyeruid": BUYERUID}), OTHER)
    assert other["related_ids"] == [f"ext={OTHER}:Z", "uid=777"]  # latest link first
    assert [s["id"] for s in other["data"][0]["segment"]] == [str(x)]
    # Without expansion, only the request's own IDs.
    plain = world.targeting.targeting.answer(only({"buyeruid": BUYERUID}), M, related=False)
    assert plain.related_ids == [] and plain.data == [] and plain.reason == "no_segments"


def test_taxonomies_codes_and_values(world):
    plain = world.segment("plain-code")
    nocode = create_segment(world.db, M, {})["id"]
    t4a = world.segment("aud-1", taxonomy_id=4, taxonomy_node="432")
    t4b = world.segment("aud-2", taxonomy_id=4, taxonomy_node="433")
    t4dup = world.segment("aud-1-again", taxonomy_id=4, taxonomy_node="432")
    t600 = world.segment("vendor", taxonomy_id=600, taxonomy_node="V-9")
    half = world.segment("half", taxonomy_id=7)  # no node: answered without a taxonomy
    world.data.memberships(
        [
            ("uid=5", s, v)
            for s, v in (
                (plain, 0),
                (nocode, None),
                (t4a, 11),
                (t4b, None),
                (t4dup, 12),
                (t600, None),
                (half, None),
            )
        ]
    )
    answer = world.ask(only({"buyeruid": "5"}))
    assert answer["data"] == [
        {
            "id": "bss-test",
            "name": "BSS",
            "segment": [{"id": str(plain), "value": "0"}, {"id": str(nocode)}, {"id": str(half)}],
        },
        {
            "id": "bss-test",
            "name": "BSS",
            "segment": [{"id": "432", "value": "11"}, {"id": "433"}],
            "ext": {"segtax": 4},
        },
        {"id": "bss-test", "name": "BSS", "segment": [{"id": "V-9"}], "ext": {"segtax": 600}},
    ]
    write_member_settings(world.db, M, MemberSettings(segment_id_field="code"))
    answer = world.ask(only({"buyeruid": "5"}))
    assert answer["data"][0]["segment"] == [
        {"id": "plain-code", "value": "0"},
        {"id": str(nocode)},
        {"id": "half"},
    ]
    assert answer["data"][1]["segment"][0] == {"id": "432", "value": "11"}


def test_privacy_signals_consenting_and_refusing(world):
    seg = world.segment("a")
    world.data.memberships([("uid=" + BUYERUID, seg, None)])
    consent = tc_string(purposes=[1, 2, 3, 4], vendors=[VENDOR])
    refusal = tc_string(purposes=[1, 2, 3, 4], vendors=[VENDOR + 1])
    user = {"buyeruid": BUYERUID}
    usnat_out = gpp_string({7: us_national(targeted=1)})
    cases = [
        ({"coppa": 1}, user, "coppa"),
        ({"coppa": 0}, user, None),
        ({"us_privacy": "1YYN"}, user, "us_privacy_opt_out"),
        ({"us_privacy": "1YNN"}, user, None),
        ({"ext": {"us_privacy": "1NYY"}}, user, "us_privacy_opt_out"),  # 2.5's place
        ({"gdpr": 1}, {**user, "consent": consent}, None),
        ({"gdpr": 1}, {**user, "consent": refusal}, "gdpr_vendor_not_consented"),
        ({"gdpr": 1}, user, "gdpr_no_consent_string"),
        ({"ext": {"gdpr": 1}}, {**user, "ext": {"consent": consent}}, None),  # 2.5
        (
            {"ext": {"gdpr": 1}},
            {**user, "ext": {"consent": "BOgarbage"}},
            "gdpr_consent_unreadable",
        ),
        ({"gpp": usnat_out, "gpp_sid": [7]}, user, "gpp_targeted_advertising_opt_out"),
        ({"gpp": usnat_out, "gpp_sid": [2]}, user, None),
        ({"gpp": gpp_string({7: us_national()}), "gpp_sid": [7]}, user, None),
        (
            {"ext": {"gpp": gpp_string({7: us_national(sale=1)}), "gpp_sid": [7]}},
            user,
            "gpp_sale_opt_out",
        ),
    ]
    for regs, request_user, reason in cases:
        answer = world.ask(only(request_user) | {"regs": regs})
        assert answer["reason"] == reason, regs
        assert answer["ids"] == ["uid=" + BUYERUID]  # what the request carries, even refused
        assert (answer["data"] != []) == (reason is None), regs
    # Without a configured vendor id, GDPR traffic gets nothing.
    current = world.targeting.targeting
    with_none = Targeting(
        current.store, current.catalog, replace(current.settings, tcf_vendor_id=None)
    )
    answer = with_none.answer(only({**user, "consent": consent}) | {"regs": {"gdpr": 1}}, M)
    assert (answer.data, answer.reason) == ([], "gdpr_no_vendor_id")


def test_merge_replaces_only_our_entries(world):
    seg = world.segment("a")
    world.data.memberships([("uid=" + BUYERUID, seg, None)])
    request = request_26()
    request["user"]["buyeruid"] = BUYERUID
    request["user"]["data"].append({"id": "bss-test", "segment": [{"id": "stale"}]})
    posted = copy.deepcopy(request)
    merged = world.targeting.merged(request, M)
    assert request == posted  # the caller's object is left alone
    assert merged["user"]["data"] == [
        posted["user"]["data"][0],
        {"id": "bss-test", "name": "BSS", "segment": [{"id": str(seg)}]},
    ]
    rest = {k: v for k, v in merged.items() if k != "user"}
    assert rest == {k: v for k, v in posted.items() if k != "user"}
    assert {k: v for k, v in merged["user"].items() if k != "data"} == {
        k: v for k, v in posted["user"].items() if k != "data"
    }
    # No user.data: created; no user at all: created; nothing to add: left as posted.
    assert merge_user_data({"id": "x"}, [{"id": "d"}], "d") == {
        "id": "x",
        "user": {"data": [{"id": "d"}]},
    }
    assert merge_user_data({"user": {"id": "u"}}, [], "d") == {"user": {"id": "u"}}
    assert merge_user_data({"user": {"data": [{"id": "d"}, {"id": "e"}]}}, [], "d") == {
        "user": {"data": [{"id": "e"}]}
    }
    assert merge_user_data({"user": "odd"}, [{"id": "d"}], "d") == {"user": "odd"}
    assert merge_user_data({"user": {"data": {}}}, [{"id": "d"}], "d") == {"user": {"data": {}}}


# --- arbitrary requests ------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_part_keys = st.sampled_from(
    [
        "buyeruid",
        "id",
        "eids",
        "ext",
        "ifa",
        "lmt",
        "os",
        "consent",
        "gdpr",
        "coppa",
        "gpp",
        "gpp_sid",
        "us_privacy",
        "uids",
        "source",
        "ifa_type",
        "eids",
    ]
)


@st.composite
def mangled_requests(draw: Any) -> dict[str, Any]:
    """A real request with parts replaced by arbitrary JSON, anywhere in user/device/regs."""
    request = copy.deepcopy(draw(st.sampled_from([request_25(), request_26()])))
    for _ in range(draw(st.integers(1, 6))):
        top = draw(st.sampled_from(["user", "device", "regs"]))
        if draw(st.booleans()):
            request[top] = draw(_json)
            continue
        holder = request.setdefault(top, {})
        if not isinstance(holder, dict):
            continue
        key = draw(_part_keys)
        if key == "ext" and draw(st.booleans()):
            holder["ext"] = {draw(_part_keys): draw(_json)}
        elif key == "eids":
            holder["eids"] = draw(
                st.lists(
                    st.dictionaries(
                        st.sampled_from(["source", "uids"]),
                        _json | st.lists(st.dictionaries(st.just("id"), _json), max_size=3),
                    ),
                    max_size=3,
                )
            )
        else:
            holder[key] = draw(_json)
    return request


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=mangled_requests())
def test_mangled_requests_are_answered_never_raise(world, request):
    answer = world.ask(request)
    assert set(answer) == {"data", "ids", "related_ids", "reason", "skipped"}
    assert (answer["data"] == []) == (answer["reason"] is not None)
    json.dumps(answer)  # an answer is always JSON
    assert len(answer["skipped"]) <= 21


def _parsed(text: str, where: str) -> tuple[list[tuple[int, str]], list[str]]:
    """What reading one ID gives by parse_id itself: the ID, or the note saying why not."""
    try:
        kind, key = parse_id(text)
    except ValueError as exc:  # InvalidId, or a digit int() does not read
        return [], [f"{where}: {exc}"[:200]]
    return [(int(kind), key)], []


@settings(max_examples=300, deadline=None)
@example(buyeruid="²")  # a digit to str.isdigit, not to int(): skipped, never raised
@given(buyeruid=st.from_regex(r"0?[0-9]{1,21}", fullmatch=True) | st.text(max_size=24))
def test_a_buyeruid_is_read_as_parse_id_reads_it(buyeruid):
    """The reader takes a uid in its normal form without parsing it: the same ID."""
    found = read_ids({"user": {"buyeruid": buyeruid}}, M, user_id_is_external=False, max_ids=50)
    assert (found.ids, found.notes) == _parsed(f"uid={buyeruid}", "user.buyeruid")


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(DEVICE_DOMAINS)),
    ifa=st.sampled_from([IDFA, IDFA.upper(), " " + IDFA + " ", "0000-0000", "null"])
    | st.text(max_size=40),
)
def test_an_ifa_of_a_device_domain_is_read_in_both_forms_as_parse_id_reads_them(kind, ifa):
    """The ifa form's key is taken from the device form's: parse_id gives both one key."""
    device = {"ifa": ifa, "ext": {"ifa_type": kind}}
    found = read_ids({"device": device}, M, user_id_is_external=False, max_ids=50)
    as_device = _parsed(f"device={kind}:{ifa}", "device.ifa")
    as_ifa = _parsed(f"ifa={kind}:{ifa}", "device.ifa")
    expected = list(dict.fromkeys(as_device[0] + as_ifa[0]))
    assert (found.ids, found.notes) == (expected, as_device[1] + as_ifa[1])
    assert [key for _, key in as_device[0]] == [key for _, key in as_ifa[0]]
