"""The IAB Global Privacy Platform string, as far as the opt-outs of the US sections go.

A GPP string is a header and its sections joined by '~'. The header (base64-websafe bits):
Type 6 bits (3), Version 6 (1), then the section ids as a Fibonacci range: Int(12) items,
each a bit (0 a single id, 1 a group), a Fibonacci-coded offset from the last id seen (0 at
first) and, for a group, its Fibonacci-coded length. Sections follow in the header's order.

Read here: the US National section (id 7, "usnat"), whose core sub-section starts Version 6
bits (1 or 2), six notices of 2 bits, then SaleOptOut, SharingOptOut and
TargetedAdvertisingOptOut, 2 bits each (1 = opted out, 2 = did not opt out, 0 = not
applicable); and the US Privacy section (id 6, "uspv1"), a US Privacy string as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from bss.privacy.bits import BitReader, ConsentStringError
from bss.privacy.usp import usp_opted_out

USP_V1 = 6
US_NATIONAL = 7
#: Section ids above this are refused: far beyond the registered ones, and a bound on how
#: many ids a header's groups can make.
MAX_SECTION_ID = 1000
#: The core opt-outs of the US National section, in bit order after the six notices.
US_NATIONAL_OPT_OUTS = ("sale", "sharing", "targeted_advertising")


@dataclass(frozen=True, slots=True)
class GppString:
    """The section ids of a GPP string's header and each section's text, in order."""

    section_ids: tuple[int, ...]
    sections: dict[int, str]


def decode_gpp(gpp: str) -> GppString:
    header, *sections = gpp.split("~")
    reader = BitReader(header)
    if reader.read(6) != 3 or reader.read(6) != 1:
        raise ConsentStringError("not a version 1 GPP header")
    ids: list[int] = []
    last = 0
    for _ in range(reader.read(12)):
        is_group = reader.flag()
        start = last + reader.fibonacci()
        end = start + reader.fibonacci() if is_group else start
        if end > MAX_SECTION_ID:
            raise ConsentStringError("a GPP section id is out of range")
        ids.extend(range(start, end + 1))
        last = end
    if len(ids) != len(sections):
        raise ConsentStringError(
            f"the GPP header names {len(ids)} sections but the string has {len(sections)}"
        )
    return GppString(tuple(ids), dict(zip(ids, sections, strict=True)))


def us_national_opt_outs(section: str) -> list[str]:
    """The opt-outs (of US_NATIONAL_OPT_OUTS) a US National section's core says the user
    made."""
    reader = BitReader(section.split(".", 1)[0])
    if reader.read(6) not in (1, 2):
        raise ConsentStringError("not a version 1 or 2 US National section")
    reader.skip(12)
    return [name for name in US_NATIONAL_OPT_OUTS if reader.read(2) == 1]


def gpp_opt_outs(gpp: str, applicable: list[int] | None) -> list[str]:
    """The opt-outs the GPP string's US sections say the user made, reading only the
    sections in `applicable` (the transaction's gpp_sid; None: every section)."""
    decoded = decode_gpp(gpp)
    wanted = decoded.section_ids if applicable is None else applicable
    opt_outs: list[str] = []
    for sid in wanted:
        text = decoded.sections.get(sid)
        if text is None:
            if sid in (USP_V1, US_NATIONAL):
                raise ConsentStringError(f"gpp_sid names section {sid}, which the string lacks")
        elif sid == US_NATIONAL:
            opt_outs.extend(us_national_opt_outs(text))
        elif sid == USP_V1 and usp_opted_out(text):
            opt_outs.append("sale")
    return opt_outs
