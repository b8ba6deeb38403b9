"""The IAB US Privacy string (CCPA), four characters: specification version ("1"), notice
given, the user opted out of sale, and the LSPA covers the transaction; each of the last
three is Y, N or "-" (not applicable)."""

from __future__ import annotations

from bss.privacy.bits import ConsentStringError


def usp_opted_out(us_privacy: str) -> bool:
    """Whether the string says the user opted out of the sale of personal data."""
    text = us_privacy.upper()
    if len(text) != 4 or text[0] != "1" or any(c not in "YN-" for c in text[1:]):
        raise ConsentStringError("not a version 1 US Privacy string (e.g. 1YNN)")
    return text[2] == "Y"
