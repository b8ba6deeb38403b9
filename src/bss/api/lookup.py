"""GET /user-segments: a user's live segments, by any of the user ID kinds the store keys by.

The (UserKind, key) text forms are those documented in bss.formats.records.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from bss.accounts.service import Principal
from bss.api.deps import member_scope, principal
from bss.api.envelope import ok_list
from bss.db import fmt_ts, now_s
from bss.errors import syntax
from bss.formats.records import DEVICE_DOMAINS, LEGACY_DEVICE_TYPES, MAX_UID, UserKind
from bss.segments.service import segments_by_ids

router = APIRouter()


def user_key(qp: Any, member_id: int | None) -> tuple[UserKind, str]:
    """Query parameters -> (UserKind, key text), exactly as the readers build them."""
    if qp.get("uid"):
        try:
            uid = int(qp["uid"])
        except ValueError as exc:
            raise syntax("uid must be a 64-bit platform user ID") from exc
        if not 0 < uid <= MAX_UID:
            raise syntax("uid must be between 1 and 2^64-1 (0 is never a valid user)")
        return UserKind.ANID, str(uid)
    if qp.get("device_id"):
        domain = (qp.get("domain") or "").lower()
        domain = LEGACY_DEVICE_TYPES.get(domain, domain)
        if domain not in DEVICE_DOMAINS:
            raise syntax(f"domain must be one of {sorted(DEVICE_DOMAINS)} (or a legacy number)")
        return UserKind.DEVICE, f"{domain}:{qp['device_id'].lower()}"
    if qp.get("ifa"):
        ifa_type = (qp.get("ifa_type") or "").lower()
        if not ifa_type:
            raise syntax("ifa_type is required with ifa (e.g. idfa, aaid)")
        return UserKind.IFA, f"{ifa_type}:{qp['ifa'].lower()}"
    if qp.get("external_id"):
        owner = qp.get("external_member_id") or member_id
        if owner is None:
            raise syntax("external_member_id is required with external_id")
        try:
            owner = int(owner)
        except ValueError as exc:
            raise syntax("external_member_id must be an integer") from exc
        return UserKind.EXTERNAL, f"{owner}:{qp['external_id']}"
    if qp.get("eid"):
        source = qp.get("source")
        if not source:
            raise syntax("source is required with eid (e.g. liveramp.com)")
        return UserKind.EID, f"{source}:{qp['eid']}"
    if qp.get("xfa_ip"):
        try:
            make, model = int(qp["device_make_id"]), int(qp["device_model_id"])
        except (KeyError, ValueError) as exc:
            raise syntax("device_make_id and device_model_id are required with xfa_ip") from exc
        return UserKind.XFA, f"{make}:{model}:{qp['xfa_ip']}"
    raise syntax(
        "give one user ID: uid, device_id+domain, ifa+ifa_type, external_id[+external_member_id], "
        "eid+source, or xfa_ip+device_make_id+device_model_id"
    )


@router.get(
    "/user-segments",
    tags=["lookup"],
    summary="A user's live segments (uid=, device_id=&domain=, ifa=&ifa_type=, external_id=, eid=&source=)",
)
def get_user_segments(request: Request, p: Principal = Depends(principal)) -> Any:
    qp = request.query_params
    member_id = member_scope(p, qp.get("member_id"), required=False)
    kind, key = user_key(qp, member_id)
    store = request.app.state.stores.get()
    memberships = store.user_segments(int(kind), key, now_s())
    known = segments_by_ids(request.app.state.db, sorted({m.segment_id for m in memberships}))
    items = []
    for m in sorted(memberships, key=lambda m: m.segment_id):
        seg = known.get(m.segment_id)
        owner = seg["member_id"] if seg is not None else None
        if member_id is not None and owner != member_id:
            continue
        items.append(
            {
                "id": m.segment_id,
                "code": seg["code"] if seg is not None else None,
                "member_id": owner,
                "value": m.value,
                "timestamp": fmt_ts(m.timestamp),
                "expiry": fmt_ts(m.expires_at),
            }
        )
    return ok_list(
        "segments",
        items,
        count=len(items),
        start_element=0,
        num_elements=len(items),
        user={"kind": kind.name.lower(), "key": key},
    )
