"""What a bid request says about its user: the IDs it carries and its privacy signals.

Reads `user`, `device` and `regs` of an OpenRTB 2.5 or 2.6 BidRequest (2.5 keeps some fields
in `ext`; 2.6's own fields win where both are given). Nothing here trusts the request's
shape: a part of the wrong type or an ID that names no user is skipped with a note, never an
exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bss.formats.records import DEVICE_DOMAINS, UserKind
from bss.identity.ids import parse_id

User = tuple[int, str]

#: device.os (lower-cased) -> the advertising ID kind its devices use.
IFA_KIND_BY_OS = {"ios": "idfa", "ipados": "idfa", "tvos": "idfa", "android": "aaid"}
#: ifa_type values that are not device advertising IDs: publisher-, SSP- or session-scoped
#: (IAB guidelines for IFA in OTT/CTV; idfv is scoped to one app developer), so they never
#: name the same user across sellers.
SCOPED_IFA_TYPES = frozenset({"ppid", "sspid", "sessionid", "idfv"})
_IFA_TYPE = re.compile(r"[a-z0-9_-]{1,32}")
#: A uid in its normal form (1 .. 2^64-1 without leading zeros): what parse_id returns for
#: uid=<it> unchanged, so the reader takes it without parsing (every request has one).
_NORMAL_UID = re.compile(r"[1-9][0-9]{0,18}")
_ANID = int(UserKind.ANID)
_IFA = int(UserKind.IFA)
#: Notes kept about skipped parts (the rest are counted in the last note).
MAX_NOTES = 20


@dataclass(slots=True)
class FoundIds:
    """The IDs of a request in the order read (each once), and what was skipped."""

    max_ids: int
    ids: list[User] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _more_notes: int = 0

    def add(self, text: str, where: str, index: tuple[int, int] | None = None) -> User | None:
        """Take `text` (an ID in the link text form) read from `where` (uids[j] of its [i]th
        entry when `index` is given: the place is spelled out only for a note). Returns the
        ID, None when it names no user."""
        try:
            kind, key = parse_id(text)
        except ValueError as exc:  # InvalidId, or a digit int() does not read (uid=²)
            self.note(f"{_place(where, index)}: {exc}")
            return None
        # A plain int kind: the expansion hashes and compares every ID many times, and an
        # IntEnum member costs a Python-level call each time.
        user = (int(kind), key)
        self.take(user, where, index)
        return user

    def take(self, user: User, where: str, index: tuple[int, int] | None = None) -> None:
        """Keep `user` (parsed) unless already kept or `max_ids` are."""
        if user in self.ids:
            return
        if len(self.ids) >= self.max_ids:
            self.note(
                f"{_place(where, index)}: more than {self.max_ids} IDs in the request, "
                "the rest not read"
            )
            return
        self.ids.append(user)

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text[:200])
        else:
            self._more_notes += 1

    def all_notes(self) -> list[str]:
        extra = [f"{self._more_notes} more parts skipped"] if self._more_notes else []
        return self.notes + extra


def _place(where: str, index: tuple[int, int] | None) -> str:
    return where if index is None else f"{where}[{index[0]}].uids[{index[1]}]"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def read_ids(
    request: dict[str, Any], member_id: int, *, user_id_is_external: bool, max_ids: int
) -> FoundIds:
    """The user IDs of a bid request, in the link text form's (kind, key)."""
    found = FoundIds(max_ids)
    user, device = request.get("user"), request.get("device")
    if user is not None and not isinstance(user, dict):
        found.note("user: not an object")
    if device is not None and not isinstance(device, dict):
        found.note("device: not an object")
    user, device = _obj(user), _obj(device)
    buyeruid = user.get("buyeruid")
    if buyeruid is not None:
        if isinstance(buyeruid, str):
            if _NORMAL_UID.fullmatch(buyeruid):  # parse_id would give it back as it is
                found.take((_ANID, buyeruid), "user.buyeruid")
            else:
                found.add(f"uid={buyeruid}", "user.buyeruid")
        else:
            found.note("user.buyeruid: not a string")
    _read_ifa(device, found)
    for where in ("user.eids", "user.ext.eids"):
        eids = user.get("eids") if where == "user.eids" else _obj(user.get("ext")).get("eids")
        if eids is not None:
            _read_eids(eids, where, found)
    if user_id_is_external and user.get("id") is not None:
        user_id = _text(user.get("id"))
        if user_id is None:
            found.note("user.id: not a string")
        else:
            found.add(f"ext={member_id}:{user_id}", "user.id")
    return found


def _read_ifa(device: dict[str, Any], found: FoundIds) -> None:
    ifa = device.get("ifa")
    if ifa is None:
        return
    if not isinstance(ifa, str):
        found.note("device.ifa: not a string")
        return
    if device.get("lmt") == 1:
        found.note("device.ifa: not used, device.lmt=1 (limit ad tracking)")
        return
    kind = _text(_obj(device.get("ext")).get("ifa_type"))
    if kind is None:
        kind = IFA_KIND_BY_OS.get(str(device.get("os") or "").lower())
        if kind is None:
            found.note(
                "device.ifa: no device.ext.ifa_type, and device.os is neither iOS nor Android"
            )
            return
    kind = kind.lower()
    if not _IFA_TYPE.fullmatch(kind):
        found.note("device.ext.ifa_type: not an IFA type such as idfa or aaid")
        return
    if kind in SCOPED_IFA_TYPES:
        found.note(f"device.ifa: ifa_type {kind} is publisher- or session-scoped, not used")
        return
    if kind in DEVICE_DOMAINS:
        as_device = found.add(f"device={kind}:{ifa}", "device.ifa")
        if as_device is not None:
            # A device domain is its own ifa type: parse_id gives both forms one key.
            found.take((_IFA, as_device[1]), "device.ifa")
            return
    found.add(f"ifa={kind}:{ifa}", "device.ifa")


def _read_eids(eids: Any, where: str, found: FoundIds) -> None:
    if not isinstance(eids, list):
        found.note(f"{where}: not an array")
        return
    for i, eid in enumerate(eids):
        eid = _obj(eid)
        source, uids = eid.get("source"), eid.get("uids")
        if not isinstance(source, str) or not source or ":" in source or not isinstance(uids, list):
            found.note(f"{where}[{i}]: needs a source (a domain) and a uids array")
            continue
        prefix = f"eid={source.lower()}:"
        for j, uid in enumerate(uids):
            ident = uid.get("id") if isinstance(uid, dict) else None
            if not isinstance(ident, str) or not ident:
                found.note(f"{where}[{i}].uids[{j}]: no id")
            else:
                found.add(prefix + ident, where, (i, j))


class Signals(NamedTuple):
    """The privacy signals of a request, as bss.privacy.decision takes them (a named tuple:
    one is made for every request)."""

    gdpr: Any = None
    consent: Any = None
    us_privacy: Any = None
    gpp: Any = None
    gpp_sid: Any = None
    coppa: Any = None


def read_signals(request: dict[str, Any]) -> Signals:
    """regs.gdpr, user.consent, regs.us_privacy, regs.gpp, regs.gpp_sid (2.6) or their 2.5
    places in regs.ext / user.ext; regs.coppa."""
    regs, user = _obj(request.get("regs")), _obj(request.get("user"))
    regs_ext, user_ext = _obj(regs.get("ext")), _obj(user.get("ext"))
    gdpr, us_privacy, gpp, gpp_sid = (
        regs.get("gdpr"),
        regs.get("us_privacy"),
        regs.get("gpp"),
        regs.get("gpp_sid"),
    )
    consent = user.get("consent")
    return Signals(
        regs_ext.get("gdpr") if gdpr is None else gdpr,
        user_ext.get("consent") if consent is None else consent,
        regs_ext.get("us_privacy") if us_privacy is None else us_privacy,
        regs_ext.get("gpp") if gpp is None else gpp,
        regs_ext.get("gpp_sid") if gpp_sid is None else gpp_sid,
        regs.get("coppa"),
    )
