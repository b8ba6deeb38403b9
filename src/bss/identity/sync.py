"""ID sync as the hosted service has it: getUID (the member keeps the mapping), mapUID (the
service keeps it, as a link `ext=M:ID` - `uid=...` in member M's scope), and the opt-out
cookie. Below the web layer: the views (bss.identity.views) only read the request and
write the answer.

The user-ID cookie (`BSS_UID_COOKIE`) holds a random 64-bit uid; an opted-out browser holds
`OPTED_OUT_UID` instead and is never synced. Consent: `gdpr`/`gdpr_consent`, `gpp`/`gpp_sid`
and `us_privacy` are read by bss.privacy.decision; when they refuse, no cookie is set and no
link stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import Engine, select

from bss.db import now_s, write_tx
from bss.errors import Forbidden, Invalid
from bss.formats.records import MAX_UID, UserKind
from bss.identity.ids import OPTED_OUT_UID, InvalidId, parse_id
from bss.identity.links import link_batch
from bss.identity.models import id_sync_members
from bss.privacy import Decision, decision
from bss.store import regions
from bss.store.base import MembershipStore
from bss.store.seqs import reserve

#: A transparent 1x1 GIF: the answer of a pixel.
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
#: Max-Age of the user-ID cookie: under the 400 days browsers keep a cookie at most.
COOKIE_MAX_AGE = 390 * 86_400
CONSENT_PARAMS = ("gdpr", "gdpr_consent", "gpp", "gpp_sid", "us_privacy")
#: Marks getuid's redirect to itself, made to see whether the browser kept the new cookie.
COOKIE_CHECK = "bss_cookie_check=1"
#: An existing mapUID link is asserted again at most this often.
REFRESH_SECONDS = 86_400
#: The longest redirect URL followed.
MAX_URL_CHARS = 4096


def split_getuid_query(raw_query: str) -> tuple[dict[str, str], str, bool]:
    """`/getuid?[consent params&][bss_cookie_check=1&]<URL>` -> (consent params, URL, whether
    this is the cookie check). The URL is everything after the leading known parameters, as
    written (or percent-decoded when given encoded)."""
    parts = raw_query.split("&")
    consent: dict[str, str] = {}
    check = False
    at = 0
    while at < len(parts):
        name, sep, value = parts[at].partition("=")
        if sep and name in CONSENT_PARAMS:
            consent[name] = unquote(value)
        elif parts[at] == COOKIE_CHECK:
            check = True
        else:
            break
        at += 1
    url = "&".join(parts[at:])
    if url.lower().startswith(("http%3a", "https%3a")):
        url = unquote(url)
    return consent, url, check


def check_redirect(url: str, allowed_hosts: Sequence[str]) -> str:
    """The URL, when it is http(s) to a host of BSS_SYNC_REDIRECT_HOSTS (no open redirect)."""
    if not url or len(url) > MAX_URL_CHARS:
        raise Invalid(f"give the redirect URL after ? (at most {MAX_URL_CHARS} characters)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("the redirect URL must be an http or https URL")
    if parts.hostname.lower() not in allowed_hosts:
        raise Invalid(f"redirects to {parts.hostname!r} are not allowed (BSS_SYNC_REDIRECT_HOSTS)")
    return url


def with_uid(url: str, uid: str) -> str:
    return url.replace("$UID", quote(uid, safe=""))


def cookie_uid(value: str | None) -> str | None:
    """The uid a cookie holds (OPTED_OUT_UID for an opted-out browser), or None."""
    if value == OPTED_OUT_UID:
        return value
    if value and value.isascii() and value.isdigit() and 0 < int(value) <= MAX_UID:
        return str(int(value))
    return None


def new_uid() -> str:
    return str(secrets.randbelow(MAX_UID) + 1)


def consent(params: Mapping[str, str], vendor_id: int | None) -> Decision:
    return decision(
        gdpr=params.get("gdpr"),
        consent=params.get("gdpr_consent"),
        gpp=params.get("gpp"),
        gpp_sid=params.get("gpp_sid"),
        us_privacy=params.get("us_privacy"),
        vendor_id=vendor_id,
    )


def signature(secret: str, member_id: int, user: str) -> str:
    """`sig` of a mapuid call: HMAC-SHA256 of "<member>:<user>" with the member's secret."""
    return hmac.new(secret.encode(), f"{member_id}:{user}".encode(), hashlib.sha256).hexdigest()


def sync_settings(db: Engine, member_id: int) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            select(id_sync_members).where(id_sync_members.c.member_id == member_id)
        ).first()
    return {"enabled": bool(row and row.enabled), "secret": row.secret if row else None}


def set_sync_settings(db: Engine, member_id: int, *, enabled: bool, secret: str | None) -> None:
    table = id_sync_members
    with write_tx(db) as conn:
        conn.execute(table.delete().where(table.c.member_id == member_id))
        conn.execute(
            table.insert().values(
                member_id=member_id, enabled=enabled, secret=secret or None, last_modified=now_s()
            )
        )


def map_uid(
    db: Engine,
    store: MembershipStore,
    other_regions: Sequence[str],
    *,
    member_id: int,
    user: str,
    sig: str | None,
    uid: str,
    ttl_days: int,
) -> bool:
    """Link `ext=<member>:<user>` to `uid=<uid>` in the member's scope; False when an
    existing link was asserted less than a day ago (nothing written). Raises Forbidden when
    the member may not sync or the signature is wrong, Invalid for a bad user ID."""
    settings = sync_settings(db, member_id)
    if not settings["enabled"]:
        raise Forbidden(f"ID sync is not enabled for member {member_id}")
    if settings["secret"] and not (
        sig and hmac.compare_digest(sig.lower(), signature(settings["secret"], member_id, user))
    ):
        raise Forbidden("sig does not match: HMAC-SHA256 of <member>:<user> with the secret")
    try:
        ext = parse_id(f"ext={member_id}:{user}")
    except InvalidId as exc:
        raise Invalid(f"user: {exc}") from exc
    now = now_s()
    ends = ((int(ext[0]), ext[1]), (int(UserKind.ANID), uid))
    (known,) = store.top_links([ends[0]], [member_id], now, 1 << 31)
    if any((x.kind, x.key) == ends[1] and x.asserted_at > now - REFRESH_SECONDS for x in known):
        return False
    batch = link_batch(
        member_id, [(ends[0], ends[1], False)], asserted_at=now, ttl_days=ttl_days,
        first_seq=reserve(db, 1),
    )  # fmt: skip
    store.apply_links(batch)
    with write_tx(db) as conn:
        regions.record_batch(conn, batch, other_regions)
    return True
