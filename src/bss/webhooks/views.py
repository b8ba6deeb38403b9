"""GET /webhook-delivery: the member's webhook delivery log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import WithJsonSchema

from bss.api.deps import Caller, Db, member_scope
from bss.api.envelope import ok_list
from bss.api.params import MemberIdQuery, Paging, Text
from bss.api.query import TypedRoute
from bss.errors import Invalid
from bss.webhooks.models import DELIVERY_STATES
from bss.webhooks.service import list_deliveries

router = APIRouter(route_class=TypedRoute)


@router.get(
    "/webhook-delivery",
    tags=["webhooks"],
    summary="Webhook deliveries of a member, newest first (?member_id=, job_id=, state=)",
)
def get_deliveries(
    p: Caller,
    db: Db,
    page: Paging,
    member_id: MemberIdQuery = None,
    job_id: Annotated[Text, Query(description="Only this job's deliveries")] = None,
    state: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "enum": [*DELIVERY_STATES, ""]}),
        Query(description=f"One of {', '.join(DELIVERY_STATES)}"),
    ] = None,
) -> Any:
    scoped = member_scope(p, member_id, required=False)
    state = state or None
    if state is not None and state not in DELIVERY_STATES:
        raise Invalid(f"state must be one of {', '.join(DELIVERY_STATES)}")
    total, items = list_deliveries(
        db, scoped, job_id=job_id or None, state=state, start=page.start, num=page.num
    )
    return ok_list(
        "webhook_deliveries", items, count=total, start_element=page.start, num_elements=page.num
    )
