"""Privacy signals: may this user's data be used for targeting (or an ID sync)?

`decision(...)` reads the signals an OpenRTB request or a sync URL carries and answers
`Decision(allowed, reason)`; `reason` is one of REASONS' codes when not allowed. A signal that
is present but cannot be read refuses (the user may have said no in it); an absent one does
not. Only what the answer needs is decoded (see tcf, gpp, usp): no library reads all three.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from bss.privacy.bits import ConsentStringError
from bss.privacy.gpp import gpp_opt_outs
from bss.privacy.tcf import decode_tcf
from bss.privacy.usp import usp_opted_out

__all__ = ["REASONS", "TCF_PURPOSES", "ConsentStringError", "Decision", "decision"]

#: TCF purposes a vendor needs consent for to target with stored segments: 1 store and/or
#: access information on a device, 3 create profiles for personalised advertising, 4 use
#: profiles to select personalised advertising.
TCF_PURPOSES = (1, 3, 4)

#: Why a decision refused, by code.
REASONS = {
    "coppa": "regs.coppa=1: the request is subject to COPPA",
    "us_privacy_opt_out": "the US Privacy string says the user opted out of sale",
    "us_privacy_unreadable": "the US Privacy string is not a version 1 string such as 1YNN",
    "gpp_sale_opt_out": "the GPP string's US section says the user opted out of sale",
    "gpp_sharing_opt_out": "the GPP string's US National section says the user opted out "
    "of sharing",
    "gpp_targeted_advertising_opt_out": "the GPP string's US National section says the user "
    "opted out of targeted advertising",
    "gpp_unreadable": "the GPP string (or a section gpp_sid names) cannot be read",
    "gdpr_no_vendor_id": "GDPR applies and no TCF vendor id is configured (BSS_TCF_VENDOR_ID)",
    "gdpr_no_consent_string": "GDPR applies and the request has no TCF consent string",
    "gdpr_consent_unreadable": "GDPR applies and the consent string is not a TCF v2 TC string",
    "gdpr_vendor_not_consented": "the TC string gives the configured vendor no consent",
    "gdpr_purposes_not_consented": "the TC string lacks consent for purposes 1, 3 and 4",
}


class Decision(NamedTuple):
    allowed: bool
    reason: str | None = None


ALLOWED = Decision(True)


def _flag(value: object) -> bool:
    """1, True or "1" (an OpenRTB integer flag, or a URL parameter) is set; anything else
    is not."""
    return value is True or (type(value) is int and value == 1) or value == "1"


def _section_ids(gpp_sid: object) -> list[int] | None:
    """gpp_sid as a list of ids: a JSON array of integers, or "7,8" from a URL. Anything
    unreadable counts as absent, so that every section of the string is read."""
    if isinstance(gpp_sid, str):
        parts: Iterable[object] = gpp_sid.split(",")
    elif isinstance(gpp_sid, list):
        parts = gpp_sid
    else:
        return None
    ids = []
    for part in parts:
        if isinstance(part, bool):
            return None
        try:
            ids.append(int(part))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None
    return ids or None


def decision(
    *,
    gdpr: object = None,
    consent: object = None,
    us_privacy: object = None,
    gpp: object = None,
    gpp_sid: object = None,
    coppa: object = None,
    vendor_id: int | None,
) -> Decision:
    """Whether the signals allow using the user's data for targeting or an ID sync.

    `gdpr`, `coppa`: 1 (or "1") when they apply. `consent`: the TC string, needed when GDPR
    applies, with consent for `vendor_id` (the service's TCF vendor id; None refuses GDPR
    traffic) and for TCF_PURPOSES. `us_privacy`: refused when its third character is Y.
    `gpp` with `gpp_sid`: refused when an applicable US section says the user opted out of
    sale, sharing or targeted advertising. Signals of the wrong type count as absent."""
    if _flag(coppa):
        return Decision(False, "coppa")
    if isinstance(us_privacy, str) and us_privacy:
        try:
            if usp_opted_out(us_privacy):
                return Decision(False, "us_privacy_opt_out")
        except ConsentStringError:
            return Decision(False, "us_privacy_unreadable")
    if isinstance(gpp, str) and gpp:
        try:
            opt_outs = gpp_opt_outs(gpp, _section_ids(gpp_sid))
        except ConsentStringError:
            return Decision(False, "gpp_unreadable")
        if opt_outs:
            return Decision(False, f"gpp_{opt_outs[0]}_opt_out")
    if _flag(gdpr):
        return _tcf_decision(consent, vendor_id)
    return ALLOWED


def _tcf_decision(consent: object, vendor_id: int | None) -> Decision:
    if vendor_id is None:
        return Decision(False, "gdpr_no_vendor_id")
    if not isinstance(consent, str) or not consent:
        return Decision(False, "gdpr_no_consent_string")
    try:
        tcf = decode_tcf(consent)
    except ConsentStringError:
        return Decision(False, "gdpr_consent_unreadable")
    if not tcf.vendor_consent(vendor_id):
        return Decision(False, "gdpr_vendor_not_consented")
    if not tcf.purposes.issuperset(TCF_PURPOSES):
        return Decision(False, "gdpr_purposes_not_consented")
    return ALLOWED
