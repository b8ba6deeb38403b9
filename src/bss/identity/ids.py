"""The one text form of a user ID, used by link files, the API and every answer.

Each form maps to the (UserKind, key) the membership store keys users by (see
bss.formats.records), so a link end names exactly the user a segment file names:

- ``uid=7652266028043224430``: the platform user ID, 1 .. 2**64-1;
- ``device=idfa:6d92078a-...``: a device ID, ``<domain>:<id>`` (the id lower-cased; a legacy
  device type number is taken for its domain);
- ``ifa=idfa:6d92078a-...``: an Avro ifa, ``<type>:<id>`` (both lower-cased);
- ``ext=456:PS123``: member 456's own ID ``PS123`` (kept as written);
- ``eid=liveramp.com:XY123``: an extended ID, ``<source>:<id>`` (the source lower-cased);
- ``xfa=<make>:<model>:<ip>``: a synthetic ID (make and model integers).

Junk IDs are refused (`JunkId`) wherever an ID is taken as a link end: ``0``, an all-zero
IFA, the opted-out cookie value, and the placeholders ``null``, ``unknown``, ``anonymous``,
``invalid`` (any case), or nothing at all.
"""

from __future__ import annotations

import re

import polars as pl

from bss.formats.records import DEVICE_DOMAINS, LEGACY_DEVICE_TYPES, MAX_UID, UserKind

#: The user-ID cookie's value once a browser opted out (GET /optout): never a user.
OPTED_OUT_UID = "-1"
#: Placeholders senders put where they have no ID.
_PLACEHOLDERS = frozenset({"", "0", "null", "unknown", "anonymous", "invalid", OPTED_OUT_UID})
#: An ID that is only zeros and separators (an all-zero IFA: 00000000-0000-...).
_ALL_ZEROS = re.compile(r"^[0\-:.]+$")
#: Characters no ID holds (they would break keys and answers): control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Longest ID text taken (form and all): nothing a client sends is kept unbounded.
MAX_ID_CHARS = 512

_PREFIX = {
    UserKind.ANID: "uid",
    UserKind.DEVICE: "device",
    UserKind.IFA: "ifa",
    UserKind.EXTERNAL: "ext",
    UserKind.EID: "eid",
    UserKind.XFA: "xfa",
}
_KIND = {prefix: kind for kind, prefix in _PREFIX.items()}
#: The same by plain int: format_id runs for every ID an answer names.
_PREFIX_OF_INT = {int(kind): prefix for kind, prefix in _PREFIX.items()}
FORMS = "uid=, device=<domain>:<id>, ifa=<type>:<id>, ext=<member>:<id>, eid=<source>:<id>, xfa=<make>:<model>:<ip>"


class InvalidId(ValueError):
    """The text is not a user ID in the link text form; the message says why."""


class JunkId(InvalidId):
    """A well-formed ID that names no user (0, an all-zero IFA, a placeholder)."""


def _junk(part: str) -> bool:
    return part.lower() in _PLACEHOLDERS or bool(_ALL_ZEROS.match(part))


def _split(rest: str, form: str, what: str) -> tuple[str, str]:
    head, sep, tail = rest.partition(":")
    if not sep or not head or not tail:
        raise InvalidId(f"{form}= needs {what} (e.g. {form}=idfa:6d92078a-...)")
    return head, tail


#: Text the short path of parse_id may take: a lower-case form, then printable ASCII
#: without spaces (nothing to strip, no control character, never over MAX_ID_CHARS).
_PLAIN = re.compile(r"(uid|device|ifa|ext|eid)=([!-~]{1,500})")


def parse_id(text: str) -> tuple[UserKind, str]:
    """`uid=...` (any form above) -> (UserKind, store key). Raises `InvalidId` (or its
    subclass `JunkId`) with a message fit for an error log."""
    plain = _PLAIN.fullmatch(text)
    if plain is not None:
        found = _parse_plain(plain[1], plain[2])
        if found is not None:
            return found
    return parse_id_fully(text)


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also holds for "²", which int() refuses, and for
    other scripts' digits, which it reads."""
    return text.isascii() and text.isdigit()


def _parse_plain(form: str, rest: str) -> tuple[UserKind, str] | None:
    """What parse_id_fully makes of `form=rest` (a match of _PLAIN) when that is a valid ID;
    None for anything else (parse_id_fully then says what is wrong). The short path of a
    bid request's IDs."""
    if form == "uid":
        ok = rest.isdigit() and rest[0] != "0" and len(rest) < 20
        return (UserKind.ANID, rest) if ok else None
    head, _, ident = rest.partition(":")
    if not head or not ident or _junk(ident):
        return None
    if form == "ext":
        return (UserKind.EXTERNAL, rest) if head.isdigit() and head[0] != "0" else None
    if form == "eid":
        return UserKind.EID, f"{head.lower()}:{ident}"
    head = head.lower()
    if form == "device":
        head = LEGACY_DEVICE_TYPES.get(head, head)
        if head not in DEVICE_DOMAINS:
            return None
        return UserKind.DEVICE, f"{head}:{ident.lower()}"
    return UserKind.IFA, f"{head}:{ident.lower()}"


def parse_id_fully(text: str) -> tuple[UserKind, str]:  # noqa: C901  one branch per documented ID form
    """parse_id, every rule in order: the reference the short paths (_parse_plain,
    normal_ids) are held to."""
    if len(text) > MAX_ID_CHARS:
        raise InvalidId(f"ID longer than {MAX_ID_CHARS} characters")
    if _CONTROL.search(text):
        raise InvalidId("ID holds a control character")
    form, sep, rest = text.strip().partition("=")
    kind = _KIND.get(form.lower()) if sep else None
    if kind is None:
        raise InvalidId(f"not an ID of the form {FORMS}: {text[:80]!r}")
    if kind == UserKind.ANID:
        if _junk(rest):
            raise JunkId(f"junk ID {text[:80]!r}")
        if not _digits(rest) or not 0 < int(rest) <= MAX_UID:
            raise InvalidId("uid= must be a platform user ID between 1 and 2^64-1")
        return kind, str(int(rest))
    if kind == UserKind.XFA:
        parts = rest.split(":", 2)
        if len(parts) != 3 or not all(_digits(p) for p in parts[:2]) or not parts[2]:
            raise InvalidId("xfa= needs <device_make_id>:<device_model_id>:<ip>")
        if _junk(parts[2]):
            raise JunkId(f"junk ID {text[:80]!r}")
        return kind, f"{int(parts[0])}:{int(parts[1])}:{parts[2]}"
    if kind == UserKind.EXTERNAL:
        owner, ident = _split(rest, "ext", "<member id>:<id>")
        if not _digits(owner) or int(owner) < 1:
            raise InvalidId("ext= needs a member id before the colon (ext=456:PS123)")
        if _junk(ident):
            raise JunkId(f"junk ID {text[:80]!r}")
        return kind, f"{int(owner)}:{ident}"
    if kind == UserKind.EID:
        source, ident = _split(rest, "eid", "<source>:<id>")
        if _junk(ident):
            raise JunkId(f"junk ID {text[:80]!r}")
        return kind, f"{source.lower()}:{ident}"
    head, ident = _split(rest, form.lower(), "<type>:<id>")
    head = head.lower()
    if kind == UserKind.DEVICE:
        head = LEGACY_DEVICE_TYPES.get(head, head)
        if head not in DEVICE_DOMAINS:
            raise InvalidId(f"device= domain must be one of {sorted(DEVICE_DOMAINS)}")
    if _junk(ident):
        raise JunkId(f"junk ID {text[:80]!r}")
    return kind, f"{head}:{ident.lower()}"


def format_id(kind: int, key: str) -> str:
    """(UserKind, store key) -> the link text form (`uid=123`)."""
    prefix = _PREFIX_OF_INT.get(kind)
    if prefix is None:
        prefix = _PREFIX[UserKind(kind)]  # ValueError for a kind that is none
    return f"{prefix}={key}"


#: Printable ASCII but ":" and upper-case letters; the same with ":"; any printable ASCII.
_HEAD, _LOWER, _ANY = r"[!-9;-@\[-~]", r"[!-@\[-~]", r"[!-~]"
#: IDs already in their normal form, for which parse_id returns (kind, the text after "=")
#: or raises JunkId: lower-case form, printable ASCII without spaces (so nothing to strip
#: and no control character), a uid of at most 19 digits without leading zeros (below
#: 2^64), parts lower-cased where parse_id lower-cases them, a device domain by its name.
_NORMAL = (
    "^(?:uid=[1-9][0-9]{0,18}"
    f"|device=(?:{'|'.join(sorted(d for d in DEVICE_DOMAINS if d not in LEGACY_DEVICE_TYPES))})"
    f":{_LOWER}+"
    f"|ifa={_HEAD}+:{_LOWER}+"
    f"|ext=[1-9][0-9]*:{_ANY}+"
    f"|eid={_HEAD}+:{_ANY}+)$"
)


def normal_ids(text: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """Vectorised parse_id for the IDs already in their normal form (most IDs of a file):
    (whether `text` is one and names a user, its kind, its store key). Where the first is
    false the other two mean nothing: such an ID is for parse_id, which says what it is."""
    form = text.str.splitn("=", 2)
    ident = text.str.splitn(":", 2).struct.field("field_1")
    junk = ident.str.to_lowercase().is_in(list(_PLACEHOLDERS)) | ident.str.contains(
        _ALL_ZEROS.pattern
    )
    normal = (
        text.str.contains(_NORMAL) & (text.str.len_bytes() <= MAX_ID_CHARS) & ~junk.fill_null(False)
    )
    kind = form.struct.field("field_0").replace_strict(
        {prefix: int(kind) for prefix, kind in _KIND.items()}, default=None, return_dtype=pl.UInt8
    )
    return normal.fill_null(False), kind, form.struct.field("field_1")
