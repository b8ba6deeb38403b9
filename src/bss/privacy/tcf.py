"""The core segment of an IAB TCF v2 TC string, as far as a vendor needs it to know whether
it may process personal data: the purposes consented to and the vendors consented to.

Layout (IAB Tech Lab, "Consent string and vendor list formats v2", the core string): Version
6 bits (2), Created 36, LastUpdated 36, CmpId 12, CmpVersion 12, ConsentScreen 6,
ConsentLanguage 12, VendorListVersion 12, TcfPolicyVersion 6, IsServiceSpecific 1,
UseNonStandardTexts 1, SpecialFeatureOptIns 12, PurposesConsent 24 (bit n-1 for purpose n),
PurposesLITransparency 24, PurposeOneTreatment 1, PublisherCC 12; then the vendor consent
section: MaxVendorId 16, IsRangeEncoding 1, and either a bitfield of MaxVendorId bits (bit
n-1 for vendor n) or NumEntries 12 followed by entries of IsARange 1, StartOrOnlyVendorId 16
and, for a range, EndVendorId 16. Later fields and segments (legitimate interests, publisher
restrictions, disclosed vendors) are not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from bss.privacy.bits import BitReader, ConsentStringError

#: Bits before PurposesConsent and before the vendor consent section.
_PURPOSES_AT = 152
_VENDORS_AT = 213


@dataclass(frozen=True, slots=True)
class TcfConsent:
    """What a TC string's core segment says about purposes and vendors."""

    purposes: frozenset[int]
    #: Vendor consents as a bitfield (bit n-1 for vendor n) or as sorted inclusive ranges.
    max_vendor_id: int
    vendor_bits: int | None
    vendor_ranges: tuple[tuple[int, int], ...]

    def vendor_consent(self, vendor_id: int) -> bool:
        if not 0 < vendor_id <= self.max_vendor_id:
            return False
        if self.vendor_bits is not None:
            return bool(self.vendor_bits >> (self.max_vendor_id - vendor_id) & 1)
        return any(start <= vendor_id <= end for start, end in self.vendor_ranges)


def decode_tcf(tc_string: str) -> TcfConsent:
    """Decode a TC string's core segment (the part before the first '.')."""
    reader = BitReader(tc_string.split(".", 1)[0])
    if reader.read(6) != 2:
        raise ConsentStringError("not a TCF v2 TC string (version is not 2)")
    reader.skip(_PURPOSES_AT - 6)
    purpose_bits = reader.read(24)
    purposes = frozenset(n for n in range(1, 25) if purpose_bits >> (24 - n) & 1)
    reader.skip(_VENDORS_AT - _PURPOSES_AT - 24)
    max_vendor_id = reader.read(16)
    if not reader.flag():
        return TcfConsent(purposes, max_vendor_id, reader.read(max_vendor_id), ())
    ranges = []
    for _ in range(reader.read(12)):
        is_range = reader.flag()
        start = reader.read(16)
        end = reader.read(16) if is_range else start
        if not 0 < start <= end <= max_vendor_id:
            raise ConsentStringError("a vendor range lies outside 1..MaxVendorId")
        ranges.append((start, end))
    return TcfConsent(purposes, max_vendor_id, None, tuple(sorted(ranges)))
