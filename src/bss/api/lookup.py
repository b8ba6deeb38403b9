"""User lookups: GET /user-segments (one user), POST /user-segments (up to 1000 users in one
call), and GET /segment-members (a segment's live members as CSV, for its owner and admins).

Users are named by any of the ID kinds the store keys by; the (UserKind, key) text forms are
those documented in bss.formats.records. With `related=true` the lookups expand through the
identity graph (bss.identity.graph): every segment once, with `via`, the ID it came from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal
from bss.api.deps import can_touch, int_param, json_body, member_scope, principal, region_store
from bss.api.envelope import ok, ok_list
from bss.db import fmt_ts, now_s
from bss.errors import BssError, Forbidden, Invalid
from bss.formats.records import DEVICE_DOMAINS, LEGACY_DEVICE_TYPES, MAX_UID, UserKind
from bss.identity.graph import expanded_segments_many
from bss.segments.service import get_segment_row, segments_by_ids
from bss.store import Membership

#: Users one POST /user-segments may ask for.
MAX_LOOKUP_USERS = 1000

router = APIRouter()


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
    request: Request, users: list[tuple[int, str]], member_id: int | None, related: bool
) -> list[tuple[list[Membership], list[str] | None]]:
    """Each user's live memberships; with `related`, those of its related IDs too, each
    segment once, with the `via` of each."""
    store = region_store(request)
    now = now_s()
    if not related:
        if len(users) == 1:
            return [(store.user_segments(*users[0], now), None)]
        return [(found, None) for found in store.users_segments(users, now)]
    caps = request.app.state.settings.graph_caps
    answers = expanded_segments_many(store, [[u] for u in users], member_id, now, caps)
    return [([m for m, _ in found], [v for _, v in found]) for _, found in answers]


@router.get(
    "/user-segments",
    tags=["lookup"],
    summary="A user's live segments (uid=, device_id=&domain=, ifa=&ifa_type=, external_id=, eid=&source=)",
)
async def get_user_segments(request: Request, p: Principal = Depends(principal)) -> Any:
    # A local LMDB seek and a SQLite read take microseconds and never wait on a lock: on the
    # event loop, without a thread hop; Redis, PostgreSQL or another region: in a thread.
    if request.app.state.inline_reads and not request.query_params.get("region"):
        return _user_segments(request, p)
    return await run_in_threadpool(_user_segments, request, p)


def _user_segments(request: Request, p: Principal) -> Any:
    qp = request.query_params
    member_id = member_scope(p, qp.get("member_id"), required=False)
    kind, key = user_key(qp, member_id)
    related = related_flag(qp.get("related"))
    ((memberships, vias),) = _lookup(request, [(int(kind), key)], member_id, related)
    known = segments_by_ids(request.app.state.db, sorted({m.segment_id for m in memberships}))
    items = _segment_items(memberships, known, member_id, vias=vias)
    return ok_list(
        "segments",
        items,
        count=len(items),
        start_element=0,
        num_elements=len(items),
        user={"kind": kind.name.lower(), "key": key},
    )


def _batch_users(body: Any) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("users"), list):
        raise Invalid(
            'expected a JSON body like {"users": [{"uid": "..."}, '
            '{"device_id": "...", "domain": "idfa"}, ...]}'
        )
    users = body["users"]
    if len(users) > MAX_LOOKUP_USERS:
        raise Invalid(f"too many users: {len(users)} given, at most {MAX_LOOKUP_USERS} per request")
    return users


@router.post(
    "/user-segments",
    tags=["lookup"],
    summary=f"Live segments of up to {MAX_LOOKUP_USERS} users, in request order",
)
async def post_user_segments(request: Request, p: Principal = Depends(principal)) -> Any:
    # Query parameters are checked before the body, as on every endpoint.
    member_id = member_scope(p, request.query_params.get("member_id"), required=False)
    body = await json_body(request)
    users = _batch_users(body)
    related = related_flag(request.query_params.get("related")) or related_flag(body.get("related"))
    keyed: list[tuple[int, tuple[int, str]]] = []
    answers: list[dict[str, Any]] = []
    for user in users:
        answers.append({"user": user})
        if not isinstance(user, dict):
            answers[-1]["error"] = 'a user is a JSON object such as {"uid": "..."}'
            continue
        try:
            kind, key = user_key(
                {k: str(v) for k, v in user.items() if v is not None and v != ""}, member_id
            )
        except BssError as exc:
            answers[-1]["error"] = exc.error
            continue
        keyed.append((len(answers) - 1, (int(kind), key)))
    state = request.app.state

    def lookup() -> None:
        found = _lookup(request, [k for _, k in keyed], member_id, related)
        ids = sorted({m.segment_id for ms, _ in found for m in ms})
        known = segments_by_ids(state.db, ids)
        stamps: dict[int, str | None] = {}
        for (at, _), (memberships, vias) in zip(keyed, found, strict=True):
            answers[at]["segments"] = _segment_items(
                memberships, known, member_id, stamps, vias=vias
            )

    await run_in_threadpool(lookup)
    return ok("users", answers)


@router.get(
    "/segment-members",
    tags=["lookup"],
    summary="A segment's live members as CSV (?id=), for its owner and admins",
)
def get_segment_members(request: Request, p: Principal = Depends(principal)) -> Any:
    segment_id = int_param(request, "id", minimum=1)
    if segment_id is None:
        raise Invalid("id is required")
    segment = get_segment_row(request.app.state.db, segment_id)
    if not can_touch(p, segment["member_id"]):
        raise Forbidden(f"You have no access to segment {segment_id}")
    members = region_store(request).segment_members(segment_id, now_s())

    def rows() -> Iterator[str]:
        yield "user_kind,user_key,value,timestamp,expiry\n"
        lines: list[str] = []
        for kind, key, m in members:
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


def _csv(text: str) -> str:
    """A CSV field: quoted when it holds a comma, a quote or a line break."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
