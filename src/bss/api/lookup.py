"""User lookups: GET /user-segments (one user), POST /user-segments (up to 1000 users in one
call), and GET /segment-members (a segment's live members as CSV, for its owner and admins).

Users are named by any of the ID kinds the store keys by; the (UserKind, key) text forms are
those documented in bss.formats.records. With `related=true` the lookups expand through the
identity graph (bss.identity.graph): every segment once, with `via`, the ID it came from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, WithJsonSchema
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bss.api.deps import (
    AppParts,
    AppSettings,
    Caller,
    Db,
    Parts,
    can_touch,
    member_scope,
    region_store_dependency,
    store_of,
)
from bss.api.envelope import ok, ok_list
from bss.api.params import Int32, JsonBodyRoute, MemberIdQuery, PositiveId, RegionQuery, Text
from bss.api.query import query_model
from bss.db import fmt_ts, now_s
from bss.errors import BssError, Forbidden, Invalid
from bss.formats.records import DEVICE_DOMAINS, LEGACY_DEVICE_TYPES, MAX_UID, UserKind
from bss.identity.graph import expanded_segments_many
from bss.lifecycle.optout import PLATFORM, SuppressionList
from bss.segments.service import get_segment_row, segments_by_ids
from bss.settings import Settings
from bss.store import Membership, MembershipStore

#: Users one POST /user-segments may ask for.
MAX_LOOKUP_USERS = 1000

router = APIRouter(route_class=JsonBodyRoute)


def user_key(qp: Mapping[str, Any], member_id: int | None) -> tuple[UserKind, str]:
    """Query parameters (or one user of a batch) -> (UserKind, key text), exactly as the
    readers build them."""
    if qp.get("uid"):
        try:
            uid = int(qp["uid"])
        except ValueError as exc:
            raise Invalid("uid must be a 64-bit platform user ID") from exc
        if not 0 < uid <= MAX_UID:
            raise Invalid("uid must be between 1 and 2^64-1 (0 is never a valid user)")
        return UserKind.ANID, str(uid)
    if qp.get("device_id"):
        domain = (qp.get("domain") or "").lower()
        domain = LEGACY_DEVICE_TYPES.get(domain, domain)
        if domain not in DEVICE_DOMAINS:
            raise Invalid(f"domain must be one of {sorted(DEVICE_DOMAINS)} (or a legacy number)")
        return UserKind.DEVICE, f"{domain}:{qp['device_id'].lower()}"
    if qp.get("ifa"):
        ifa_type = (qp.get("ifa_type") or "").lower()
        if not ifa_type:
            raise Invalid("ifa_type is required with ifa (e.g. idfa, aaid)")
        return UserKind.IFA, f"{ifa_type}:{qp['ifa'].lower()}"
    if qp.get("external_id"):
        owner = qp.get("external_member_id") or member_id
        if owner is None:
            raise Invalid("external_member_id is required with external_id")
        try:
            owner = int(owner)
        except ValueError as exc:
            raise Invalid("external_member_id must be an integer") from exc
        return UserKind.EXTERNAL, f"{owner}:{qp['external_id']}"
    if qp.get("eid"):
        source = qp.get("source")
        if not source:
            raise Invalid("source is required with eid (e.g. liveramp.com)")
        return UserKind.EID, f"{source}:{qp['eid']}"
    if qp.get("xfa_ip"):
        try:
            make, model = int(qp["device_make_id"]), int(qp["device_model_id"])
        except (KeyError, ValueError) as exc:
            raise Invalid("device_make_id and device_model_id are required with xfa_ip") from exc
        return UserKind.XFA, f"{make}:{model}:{qp['xfa_ip']}"
    raise Invalid(
        "give one user ID: uid, device_id+domain, ifa+ifa_type, external_id[+external_member_id], "
        "eid+source, or xfa_ip+device_make_id+device_model_id"
    )


def related_flag(value: Any) -> bool:
    """The `related` parameter: true or false (absent: false)."""
    if value in (None, "", False):
        return False
    if value is True or str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise Invalid("related must be true or false")


def _segment_items(
    memberships: list[Membership],
    known: Mapping[int, Any],
    member_id: int | None,
    stamps: dict[int, str | None] | None = None,
    *,
    vias: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The documented segment objects of a user's memberships (only the member's own
    segments when the request is scoped to a member). `stamps` memoises formatted times
    across the users of one batch: a job gives most of its pairs the same few times.
    `vias` (an expanded lookup): each membership's source ID, shown as `via`."""
    stamps = {} if stamps is None else stamps

    def fmt(ts: int) -> str | None:
        text = stamps.get(ts)
        if text is None:
            text = stamps[ts] = fmt_ts(ts)
        return text

    items = []
    for i, m in enumerate(memberships):
        seg = known.get(m.segment_id)
        owner = seg["member_id"] if seg is not None else None
        if member_id is not None and owner != member_id:
            continue
        item = {
            "id": m.segment_id,
            "code": seg["code"] if seg is not None else None,
            "member_id": owner,
            "value": m.value,
            "timestamp": fmt(m.timestamp),
            "expiry": fmt(m.expires_at),
        }
        if vias is not None:
            item["via"] = vias[i]
        items.append(item)
    return items


def _lookup(
    store: MembershipStore,
    settings: Settings,
    users: list[tuple[int, str]],
    member_id: int | None,
    related: bool,
    suppression: SuppressionList,
) -> list[tuple[list[Membership], list[str] | None]]:
    """Each user's live memberships; with `related`, those of its related IDs too (but not
    of related IDs opted out in the reader's scope or platform-wide), each segment once,
    with the `via` of each."""
    now = now_s()
    if not related:
        if len(users) == 1:
            return [(store.user_segments(*users[0], now), None)]
        return [(found, None) for found in store.users_segments(users, now)]
    answers = expanded_segments_many(
        store,
        [[u] for u in users],
        member_id,
        now,
        settings.graph_caps,
        hidden=lambda kind, key: suppression.standing(member_id, kind, key),
    )
    return [([m for m, _ in found], [v for _, v in found]) for _, found in answers]


Region = Annotated[MembershipStore, Depends(region_store_dependency)]


def _text(description: str) -> Any:
    return Query(description=description)


#: true or false in any letter case, or 1 or 0 (absent or empty: false).
_FLAG = "^([tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[01])?$"
RelatedQuery = Annotated[
    str | None,
    WithJsonSchema({"type": "string", "pattern": _FLAG}),
    Query(description="true: expand through the identity graph (each segment once, with via)"),
]


class UserIdQuery(BaseModel):
    """The user a GET names, by any one of the ID forms user_key reads."""

    uid: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "pattern": "^[0-9]{1,20}$"}),
        _text("Platform user ID (1 to 2^64-1)"),
    ] = None
    device_id: Annotated[Text, _text("Device ID (with domain)")] = None
    domain: Annotated[Text, _text("Device ID type: idfa, aaid, ... or a legacy number")] = None
    ifa: Annotated[Text, _text("IFA (with ifa_type)")] = None
    ifa_type: Annotated[Text, _text("e.g. idfa, aaid")] = None
    external_id: Annotated[
        Text, _text("External user ID (with external_member_id or member_id)")
    ] = None
    external_member_id: Annotated[Int32, Query(description="Owner of the external ID")] = None
    eid: Annotated[Text, _text("Extended ID (with source)")] = None
    source: Annotated[Text, _text("EID source, e.g. liveramp.com")] = None
    xfa_ip: Annotated[Text, _text("Synthetic ID's IP (with device_make_id, device_model_id)")] = (
        None
    )
    device_make_id: Annotated[Int32, Query(description="Device make")] = None
    device_model_id: Annotated[Int32, Query(description="Device model")] = None

    def user(self) -> dict[str, str]:
        """The given, non-empty user parameters, as user_key reads them."""
        given = ((name, getattr(self, name)) for name in UserIdQuery.model_fields)
        return {name: str(v) for name, v in given if v is not None and v != ""}


class UserSegmentsQuery(UserIdQuery):
    """GET /user-segments: the user, and how to answer."""

    member_id: MemberIdQuery = None
    related: RelatedQuery = None
    region: RegionQuery = None


@router.get(
    "/user-segments",
    description="Refused with 400 SYNTAX, whatever the schema allows: not exactly one user ID (uid, device_id+domain, ifa+ifa_type, external_id, eid+source, xfa_ip+device_make_id+device_model_id).",
    tags=["lookup"],
    summary="A user's live segments (uid=, device_id=&domain=, ifa=&ifa_type=, external_id=, eid=&source=)",
)
async def get_user_segments(
    request: Request,
    p: Caller,
    parts: Parts,
    query: Annotated[UserSegmentsQuery, Depends(query_model(UserSegmentsQuery))],
) -> Any:
    scoped = member_scope(p, query.member_id, required=False)
    kind, key = user_key(query.user(), scoped)
    expand = related_flag(query.related)
    lookup = partial(_user_segments, parts, query.region, (int(kind), key), scoped, expand)
    # A local LMDB seek and a SQLite read take microseconds and never wait on a lock: on the
    # event loop, without a thread hop, and so does an expansion over them (at most
    # BSS_CLUSTER_MAX_IDS IDs, as POST /openrtb/user-data reads them); Redis, PostgreSQL or
    # another region (whose first connection may wait on the network): in a thread.
    if parts.inline_reads and not query.region:
        return lookup()
    return await run_in_threadpool(lookup)


def _user_segments(
    parts: AppParts,
    region: str | None,
    user: tuple[int, str],
    member_id: int | None,
    related: bool,
) -> Any:
    db, settings, store = parts.db, parts.settings, store_of(parts.stores, region)
    kind, key = user
    suppression = _suppression(db, settings)
    ((memberships, vias),) = _lookup(store, settings, [user], member_id, related, suppression)
    known = segments_by_ids(db, sorted({m.segment_id for m in memberships}))
    items = _segment_items(memberships, known, member_id, vias=vias)
    items = _unsuppressed(suppression, (int(kind), key), items)
    return ok_list(
        "segments",
        items,
        count=len(items),
        start_element=0,
        num_elements=len(items),
        user={"kind": UserKind(kind).name.lower(), "key": key},
    )


class LookupBody(BaseModel):
    """{"users": [{"uid": "..."}, {"device_id": "...", "domain": "idfa"}, ...]}: each user
    is named by the same fields as GET /user-segments takes; one that is not is answered
    with an error of its own in its place."""

    wrong_shape: ClassVar[str] = (
        'expected a JSON body like {"users": [{"uid": "..."}, '
        '{"device_id": "...", "domain": "idfa"}, ...]}'
    )
    users: list[Any] = Field(
        json_schema_extra={
            "maxItems": MAX_LOOKUP_USERS,
            # Documented: an entry that is not a user object is answered by an error in its
            # place, the rest of the batch being answered as usual.
            "items": {"description": 'a user object such as {"uid": "..."}'},
        }
    )
    related: bool | str | None = Field(
        None,
        description="true: expand every user through the identity graph (as ?related=true)",
        json_schema_extra={
            "anyOf": [{"type": "boolean"}, {"type": "string", "pattern": _FLAG}, {"type": "null"}]
        },
    )


@router.post(
    "/user-segments",
    tags=["lookup"],
    summary=f"Live segments of up to {MAX_LOOKUP_USERS} users, in request order",
)
async def post_user_segments(
    p: Caller,
    db: Db,
    store: Region,
    settings: AppSettings,
    body: LookupBody,
    member_id: MemberIdQuery = None,
    related: RelatedQuery = None,
) -> Any:
    scoped = member_scope(p, member_id, required=False)
    expand = related_flag(related) or related_flag(body.related)
    users = body.users
    if len(users) > MAX_LOOKUP_USERS:
        raise Invalid(f"too many users: {len(users)} given, at most {MAX_LOOKUP_USERS} per request")
    keyed: list[tuple[int, tuple[int, str]]] = []
    answers: list[dict[str, Any]] = []
    for user in users:
        answers.append({"user": user})
        if not isinstance(user, dict):
            answers[-1]["error"] = 'a user is a JSON object such as {"uid": "..."}'
            continue
        try:
            kind, key = user_key(
                {k: str(v) for k, v in user.items() if v is not None and v != ""}, scoped
            )
        except BssError as exc:
            answers[-1]["error"] = exc.error
            continue
        keyed.append((len(answers) - 1, (int(kind), key)))

    def lookup() -> None:
        suppression = _suppression(db, settings)
        found = _lookup(store, settings, [k for _, k in keyed], scoped, expand, suppression)
        ids = sorted({m.segment_id for ms, _ in found for m in ms})
        known = segments_by_ids(db, ids)
        stamps: dict[int, str | None] = {}
        for (at, user), (memberships, vias) in zip(keyed, found, strict=True):
            answers[at]["segments"] = _unsuppressed(
                suppression, user, _segment_items(memberships, known, scoped, stamps, vias=vias)
            )

    await run_in_threadpool(lookup)
    return ok("users", answers)


@router.get(
    "/segment-members",
    tags=["lookup"],
    summary="A segment's live members as CSV (?id=), for its owner and admins",
)
def get_segment_members(
    p: Caller,
    db: Db,
    store: Region,
    settings: AppSettings,
    id: Annotated[PositiveId, Query(description="The segment's id (required)")],
) -> Any:
    if id is None:
        raise Invalid("id is required")
    segment_id = id
    segment = get_segment_row(db, segment_id)
    if not can_touch(p, segment["member_id"]):
        raise Forbidden(f"You have no access to segment {segment_id}")
    members = store.segment_members(segment_id, now_s())
    suppression = _suppression(db, settings)
    owner = segment["member_id"]

    def rows() -> Iterator[str]:
        yield "user_kind,user_key,value,timestamp,expiry\n"
        lines: list[str] = []
        for kind, key, m in members:
            if suppression.standing(owner, kind, key):
                continue
            value = "" if m.value is None else m.value
            lines.append(
                f"{UserKind(kind).name.lower()},{_csv(key)},{value},"
                f"{fmt_ts(m.timestamp)},{fmt_ts(m.expires_at)}\n"
            )
            if len(lines) == 1000:
                yield "".join(lines)
                lines = []
        yield "".join(lines)

    return StreamingResponse(
        rows(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="segment-{segment_id}.csv"'},
    )


def _suppression(db: Engine, settings: Settings) -> SuppressionList:
    return SuppressionList.of(db, settings)


def _unsuppressed(
    suppression: SuppressionList, user: tuple[int, str], items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A user's segment objects without those an opt-out hides: all of them platform-wide,
    a member's own segments in its scope."""
    scopes = suppression.standing_scopes(*user)
    if not scopes:
        return items
    if PLATFORM in scopes:
        return []
    return [item for item in items if item["member_id"] not in scopes]


def _csv(text: str) -> str:
    """A CSV field: quoted when it holds a comma, a quote or a line break."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
