"""An encoder of IAB privacy strings for the tests, written from the IAB specifications
(TCF v2 "Consent string and vendor list formats v2", GPP "Consent String Specification",
the GPP US National section) independently of the decoders in bss.privacy."""

from __future__ import annotations

from collections.abc import Iterable

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def int(self, value: int, width: int) -> BitWriter:
        assert 0 <= value < 1 << width, (value, width)
        self.bits.append(format(value, f"0{width}b") if width else "")
        return self

    def bool(self, value: bool) -> BitWriter:
        return self.int(int(value), 1)

    def bitfield(self, ids: Iterable[int], width: int) -> BitWriter:
        chosen = set(ids)
        self.bits.append("".join("1" if n in chosen else "0" for n in range(1, width + 1)))
        return self

    def fibonacci(self, value: int) -> BitWriter:
        """Wikipedia's (and the GPP spec's) Fibonacci coding of a positive integer."""
        assert value >= 1
        fibs = [1, 2]
        while fibs[-1] <= value:
            fibs.append(fibs[-1] + fibs[-2])
        code = ["0"] * len(fibs)
        rest = value
        for i in range(len(fibs) - 1, -1, -1):
            if fibs[i] <= rest:
                code[i] = "1"
                rest -= fibs[i]
        text = "".join(code).rstrip("0") + "1"
        self.bits.append(text)
        return self

    def letters(self, text: str) -> BitWriter:
        for ch in text:
            self.int(ord(ch) - ord("A"), 6)
        return self

    def websafe(self) -> str:
        bits = "".join(self.bits)
        bits += "0" * (-len(bits) % 6)
        return "".join(_ALPHABET[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in sorted(set(ids)):
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def tc_string(
    *,
    purposes: Iterable[int] = (),
    vendors: Iterable[int] = (),
    range_encoding: bool = False,
    max_vendor_id: int | None = None,
    version: int = 2,
    cmp_id: int = 7,
) -> str:
    """A TC string's core segment, every field of it, with the given consents."""
    vendors = sorted(set(vendors))
    top = max_vendor_id if max_vendor_id is not None else (vendors[-1] if vendors else 0)
    w = BitWriter()
    w.int(version, 6).int(17_000_000_000, 36).int(17_000_000_000, 36)  # Created, LastUpdated
    w.int(cmp_id, 12).int(3, 12).int(1, 6).letters("EN").int(150, 12)  # ... VendorListVersion
    w.int(4, 6).bool(True).bool(False).int(0, 12)  # TcfPolicyVersion ... SpecialFeatureOptIns
    w.bitfield(purposes, 24).bitfield((), 24).bool(False).letters("FR")
    w.int(top, 16).bool(range_encoding)
    if range_encoding:
        runs = _runs(vendors)
        w.int(len(runs), 12)
        for start, end in runs:
            w.bool(start != end).int(start, 16)
            if start != end:
                w.int(end, 16)
    else:
        w.bitfield(vendors, top)
    w.int(0, 16).bool(False)  # legitimate-interest vendors: none, as a bitfield
    w.int(0, 12)  # NumPubRestrictions
    return w.websafe()


def gpp_header(section_ids: Iterable[int]) -> str:
    """A GPP header: Type 3, Version 1, the ids as a Fibonacci range (groups for runs)."""
    runs = _runs(section_ids)
    w = BitWriter().int(3, 6).int(1, 6).int(len(runs), 12)
    last = 0
    for start, end in runs:
        w.bool(start != end).fibonacci(start - last)
        if start != end:
            w.fibonacci(end - start)
        last = end
    return w.websafe()


def gpp_string(sections: dict[int, str]) -> str:
    ids = sorted(sections)
    return "~".join([gpp_header(ids), *(sections[i] for i in ids)])


def us_national(
    *, sale: int = 2, sharing: int = 2, targeted: int = 2, version: int = 1, gpc: bool | None = None
) -> str:
    """A US National (usnat) section: the whole core sub-section of version 1 or 2 with the
    given opt-outs (1 opted out, 2 did not, 0 not applicable), and a GPC sub-section when
    `gpc` is given."""
    w = BitWriter().int(version, 6)
    for _ in range(6):  # the notices
        w.int(1, 2)
    w.int(sale, 2).int(sharing, 2).int(targeted, 2)
    sensitive, child = (12, 2) if version == 1 else (16, 3)
    for _ in range(sensitive + child):
        w.int(0, 2)
    w.int(2, 2).int(1, 2).int(2, 2).int(2, 2)  # PersonalDataConsents, the three MSPA fields
    core = w.websafe()
    if gpc is None:
        return core
    return core + "." + BitWriter().int(1, 2).bool(gpc).websafe()
