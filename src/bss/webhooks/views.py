"""GET /webhook-delivery: the member's webhook delivery log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from bss.accounts.service import Principal
from bss.api.deps import int_param, member_scope, principal
from bss.api.envelope import ok_list
from bss.errors import Invalid
from bss.webhooks.models import DELIVERY_STATES
from bss.webhooks.service import list_deliveries

router = APIRouter()


@router.get(
    "/webhook-delivery",
    tags=["webhooks"],
    summary="Webhook deliveries of a member, newest first (?member_id=, job_id=, state=)",
)
def get_deliveries(request: Request, p: Principal = Depends(principal)) -> Any:
    qp = request.query_params
    member_id = member_scope(p, qp.get("member_id"), required=False)
    state = qp.get("state") or None
    if state is not None and state not in DELIVERY_STATES:
        raise Invalid(f"state must be one of {', '.join(DELIVERY_STATES)}")
    start = int_param(request, "start_element", 0, minimum=0) or 0
    num = min(int_param(request, "num_elements", 100, minimum=1) or 100, 100)
    total, items = list_deliveries(
        request.app.state.db,
        member_id,
        job_id=qp.get("job_id") or None,
        state=state,
        start=start,
        num=num,
    )
    return ok_list("webhook_deliveries", items, count=total, start_element=start, num_elements=num)
