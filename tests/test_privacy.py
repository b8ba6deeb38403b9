"""Privacy signals: the decoders of bss.privacy against strings built by the tests' own
encoder (tests/privacy_strings.py, from the IAB specifications), the specifications' own
examples, and arbitrary input that must never raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from privacy_strings import BitWriter, gpp_header, gpp_string, tc_string, us_national

from bss.privacy import REASONS, ConsentStringError, Decision, decision
from bss.privacy.gpp import decode_gpp, gpp_opt_outs
from bss.privacy.tcf import decode_tcf

VENDOR = 755


def decide(**kw):
    kw.setdefault("vendor_id", VENDOR)
    return decision(**kw)


# --- the specifications' examples -------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ids"), [("DBABM", (2,)), ("DBACNY", (2, 6)), ("DBABjw", (5, 6))]
)
def test_gpp_headers_of_the_specification(header, ids):
    # The three header examples of the GPP Consent String Specification, both ways.
    assert gpp_header(ids) == header
    sections = "~".join(["x"] * len(ids))
    assert decode_gpp(f"{header}~{sections}").section_ids == ids


def test_gpp_string_examples_of_the_specification():
    tcf = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"
    decoded = decode_gpp(f"DBACNYA~{tcf}~1YNN")
    assert decoded.section_ids == (2, 6)
    assert decoded.sections == {2: tcf, 6: "1YNN"}
    assert gpp_opt_outs(f"DBACNYA~{tcf}~1YNN", None) == []
    assert gpp_opt_outs(f"DBABjw~{tcf}~1YYN", [6]) == ["sale"]
    assert decode_tcf(tcf).max_vendor_id >= 0  # a real TCF v2 string decodes


def test_a_published_tc_string():
    # A TC string whose fields a public TCF parser documents: CMP 21, purposes 1, 3, 9, 10.
    text = (
        "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
        ".argAC0gAAAAAAAAAAAA"
    )
    tcf = decode_tcf(text)
    assert tcf.purposes == {1, 3, 9, 10}
    assert decide(gdpr=1, consent=text, vendor_id=2) == (False, "gdpr_purposes_not_consented")


def test_fibonacci_codes_of_the_specification():
    # 1 -> 11, 2 -> 011, 3 -> 0011, 4 -> 1011, 5 -> 00011, 6 -> 10011, 7 -> 01011
    for n, code in enumerate(["11", "011", "0011", "1011", "00011", "10011", "01011"], 1):
        assert "".join(BitWriter().fibonacci(n).bits) == code


# --- TCF v2 -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    purposes=st.sets(st.integers(1, 24)),
    vendors=st.sets(st.integers(1, 900), max_size=60),
    range_encoding=st.booleans(),
    extra_top=st.integers(0, 40),
)
def test_tcf_decodes_what_the_encoder_wrote(purposes, vendors, range_encoding, extra_top):
    top = max(vendors, default=0) + extra_top
    text = tc_string(
        purposes=purposes, vendors=vendors, range_encoding=range_encoding, max_vendor_id=top
    )
    tcf = decode_tcf(text)
    assert tcf.purposes == purposes
    assert tcf.max_vendor_id == top
    for v in range(0, top + 3):
        assert tcf.vendor_consent(v) == (v in vendors), v


def test_tcf_reads_only_the_core_segment():
    core = tc_string(purposes=[1, 3, 4], vendors=[VENDOR])
    assert decide(gdpr=1, consent=core + ".IFukWSQgAIQwgI0QEByFAAAAeIAACmgAAA") == (True, None)


@pytest.mark.parametrize("range_encoding", [False, True])
def test_gdpr_consenting_and_refusing(range_encoding):
    def tc(**kw):
        return tc_string(range_encoding=range_encoding, **kw)

    assert decide(gdpr=1, consent=tc(purposes=[1, 3, 4], vendors=[VENDOR])) == (True, None)
    assert decide(gdpr=1, consent=tc(purposes=range(1, 11), vendors=[2, VENDOR, 900])) == (
        True,
        None,
    )
    assert decide(gdpr=1, consent=tc(purposes=[1, 3, 4], vendors=[VENDOR - 1, VENDOR + 1])) == (
        False,
        "gdpr_vendor_not_consented",
    )
    assert decide(gdpr=1, consent=tc(purposes=[1, 3], vendors=[VENDOR])) == (
        False,
        "gdpr_purposes_not_consented",
    )
    assert decide(gdpr=1, consent=tc(purposes=[3, 4], vendors=[VENDOR])) == (
        False,
        "gdpr_purposes_not_consented",
    )
    # A vendor above MaxVendorId has no consent.
    assert decide(gdpr=1, consent=tc(purposes=[1, 3, 4], vendors=[10]))[1] == (
        "gdpr_vendor_not_consented"
    )


def test_gdpr_without_a_usable_string_or_vendor_id():
    good = tc_string(purposes=[1, 3, 4], vendors=[VENDOR])
    assert decide(gdpr=1) == (False, "gdpr_no_consent_string")
    assert decide(gdpr=1, consent="") == (False, "gdpr_no_consent_string")
    assert decide(gdpr=1, consent=123) == (False, "gdpr_no_consent_string")
    assert decide(gdpr=1, consent=good, vendor_id=None) == (False, "gdpr_no_vendor_id")
    assert decide(gdpr=1, consent="not a tc string!") == (False, "gdpr_consent_unreadable")
    assert decide(gdpr=1, consent=good[:30]) == (False, "gdpr_consent_unreadable")
    v1 = tc_string(purposes=[1, 3, 4], vendors=[VENDOR], version=1)
    assert decide(gdpr=1, consent=v1) == (False, "gdpr_consent_unreadable")
    # URL parameters are text; GDPR not applying needs no consent.
    assert decide(gdpr="1", consent=good) == (True, None)
    assert decide(gdpr="1") == (False, "gdpr_no_consent_string")
    assert decide(gdpr=0) == (True, None)
    assert decide(gdpr=0, vendor_id=None) == (True, None)
    assert decide(gdpr="0", consent="junk") == (True, None)


def test_tcf_range_outside_max_vendor_id_is_unreadable():
    w = BitWriter().int(2, 6)
    for width in (36, 36, 12, 12, 6):
        w.int(1, width)
    w.letters("EN").int(1, 12).int(4, 6).int(0, 2).int(0, 12)
    w.bitfield([1, 3, 4], 24).bitfield((), 24).int(0, 1).letters("FR")
    w.int(100, 16).bool(True).int(1, 12).bool(True).int(90, 16).int(120, 16)
    with pytest.raises(ConsentStringError):
        decode_tcf(w.websafe())


# --- US Privacy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1YNN", Decision(True)),
        ("1NNY", Decision(True)),
        ("1---", Decision(True)),
        ("1yyn", Decision(False, "us_privacy_opt_out")),
        ("1YYN", Decision(False, "us_privacy_opt_out")),
        ("1-Y-", Decision(False, "us_privacy_opt_out")),
        ("2YNN", Decision(False, "us_privacy_unreadable")),
        ("1YN", Decision(False, "us_privacy_unreadable")),
        ("1YXN", Decision(False, "us_privacy_unreadable")),
        ("", Decision(True)),
    ],
)
def test_us_privacy(text, expected):
    assert decide(us_privacy=text) == expected


# --- GPP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("gpc", [None, True, False])
def test_gpp_us_national_opt_outs(version, gpc):
    def gpp(**kw):
        return gpp_string({7: us_national(version=version, gpc=gpc, **kw)})

    assert decide(gpp=gpp(), gpp_sid=[7]) == (True, None)
    assert decide(gpp=gpp(sale=0, sharing=0, targeted=0), gpp_sid=[7]) == (True, None)
    assert decide(gpp=gpp(sale=1), gpp_sid=[7]) == (False, "gpp_sale_opt_out")
    assert decide(gpp=gpp(sharing=1), gpp_sid=[7]) == (False, "gpp_sharing_opt_out")
    assert decide(gpp=gpp(targeted=1), gpp_sid=[7]) == (
        False,
        "gpp_targeted_advertising_opt_out",
    )
    # Without gpp_sid every section applies; from a URL gpp_sid is text.
    assert decide(gpp=gpp(targeted=1)) == (False, "gpp_targeted_advertising_opt_out")
    assert decide(gpp=gpp(sale=1), gpp_sid="7") == (False, "gpp_sale_opt_out")


def test_gpp_sections_apply_only_when_gpp_sid_names_them():
    tcf = tc_string(purposes=[1, 3, 4], vendors=[VENDOR])
    text = gpp_string({2: tcf, 6: "1YYN", 7: us_national(sale=1)})
    assert decode_gpp(text).section_ids == (2, 6, 7)
    assert decide(gpp=text, gpp_sid=[2]) == (True, None)
    assert decide(gpp=text, gpp_sid=[6]) == (False, "gpp_sale_opt_out")
    assert decide(gpp=text, gpp_sid="2,7") == (False, "gpp_sale_opt_out")
    assert decide(gpp=text) == (False, "gpp_sale_opt_out")
    # gpp_sid naming a US section the string lacks: the signal cannot be read.
    assert decide(gpp=gpp_string({2: tcf}), gpp_sid=[7]) == (False, "gpp_unreadable")
    assert decide(gpp=gpp_string({2: tcf}), gpp_sid=[2]) == (True, None)
    # Sections other than the US ones are not read, whatever they hold.
    assert decide(gpp=gpp_string({8: "garbage"})) == (True, None)


@pytest.mark.parametrize(
    "text",
    [
        "DBABM",  # names a section but has none
        "DBABM~a~b",  # two sections for one id
        "CBABM~x",  # type 2, not a header
        "DCABM~x",  # version 2
        "DBA",  # cut inside the range
        "DB ABM~x",
        gpp_string({7: "AAA"}),  # a US National section too short for its opt-outs
        gpp_string({7: BitWriter().int(3, 6).int(0, 30).websafe()}),  # version 3
        gpp_string({6: "1YX"}),
    ],
)
def test_unreadable_gpp_refuses(text):
    assert decide(gpp=text) == (False, "gpp_unreadable")


def test_coppa_and_the_order_of_reasons():
    good = tc_string(purposes=[1, 3, 4], vendors=[VENDOR])
    assert decide(coppa=1, gdpr=1, consent=good) == (False, "coppa")
    assert decide(coppa="1") == (False, "coppa")
    assert decide(coppa=0, gdpr=1, consent=good) == (True, None)
    assert decide(coppa=True) == (False, "coppa")
    assert decide(coppa=2) == (True, None)  # not a flag value of the spec
    assert decide(us_privacy="1YYN", gpp=gpp_string({7: us_national(sale=1)})) == (
        False,
        "us_privacy_opt_out",
    )
    assert decide(gpp=gpp_string({7: us_national(sharing=1)}), gdpr=1) == (
        False,
        "gpp_sharing_opt_out",
    )
    assert decide() == (True, None)
    allowed, reason = decide(coppa=1)
    assert (allowed, reason) == (False, "coppa") and reason in REASONS


# --- arbitrary input ----------------------------------------------------------------------

_websafe = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_signal = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.booleans(),
    st.text(max_size=40),
    _websafe,
    st.lists(st.one_of(st.integers(-5, 1 << 70), st.text(max_size=3)), max_size=4),
    st.builds(lambda a, b, c: f"{a}~{b}~{c}", _websafe, _websafe, _websafe),
    st.builds(lambda a: "DBA" + a, _websafe),
)


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=500, deadline=None)
@given(
    gdpr=_signal,
    consent=_signal,
    usp=_signal,
    gpp=_signal,
    sid=_signal,
    coppa=_signal,
    vendor=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_any_input_gets_a_decision_never_an_exception(gdpr, consent, usp, gpp, sid, coppa, vendor):
    result = decision(
        gdpr=gdpr,
        consent=consent,
        us_privacy=usp,
        gpp=gpp,
        gpp_sid=sid,
        coppa=coppa,
        vendor_id=vendor,
    )
    assert isinstance(result, Decision)
    assert result.allowed == (result.reason is None)
    assert result.reason is None or result.reason in REASONS
