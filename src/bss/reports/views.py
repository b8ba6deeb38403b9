"""The report flow: POST /report, GET /report?id=, GET /report-download?id= (CSV or JSON)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import member_exists
from bss.api.deps import Caller, Db, member_scope
from bss.api.envelope import ok
from bss.api.params import (
    CHECKED_BY_VIEW,
    JsonBodyRoute,
    MemberIdQuery,
    ScopedMemberIdQuery,
    Text,
    body_of,
)
from bss.errors import Invalid, NotFound
from bss.reports import service
from bss.segments.service import get_config

router = APIRouter(route_class=JsonBodyRoute)

ReportIdQuery = Annotated[
    str | None,
    WithJsonSchema({"type": "string", "minLength": 1, CHECKED_BY_VIEW: True}),
    Query(description="The report_id POST /report returned"),
]


class ReportOrder(BaseModel):
    order_by: str
    direction: Literal["ASC", "DESC", "asc", "desc"] | None = None


class ReportRequest(BaseModel):
    report_type: Literal["segment_load"]
    columns: list[str] = Field(
        description=f"Dimensions and metrics: {', '.join(service.DIMENSIONS + service.METRICS)}",
        json_schema_extra={
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": [*service.DIMENSIONS, *service.METRICS]},
        },
    )
    groups: list[str] | None = None
    report_interval: str | None = Field(
        None, description=f"One of {', '.join(service.INTERVALS)} (or start_date/end_date)"
    )
    start_date: str | None = Field(None, description="YYYY-MM-DD")
    end_date: str | None = Field(None, description="YYYY-MM-DD")
    filters: list[dict[str, Any]] | None = Field(
        None, description=f'e.g. [{{"segment_id": 220}}]; filters: {", ".join(service.FILTERABLE)}'
    )
    orders: list[str | ReportOrder] | None = None
    format: str | None = Field(None, description=f"One of {', '.join(service.FORMATS)}")
    timezone: str | None = Field(None, description="UTC only")


class ReportBody(BaseModel):
    """{"report": {...}}; checked by the service, whose messages name the field."""

    report: ReportRequest


def _report_id(report_id: str | None) -> str:
    if not report_id:
        raise Invalid("id is required (the report_id POST /report returned)")
    return report_id


@router.post(
    "/report",
    description="Refused with 400 SYNTAX, whatever the schema allows: a request that breaks the report's rules (groups among the columns, one of report_interval or start/end dates, metrics that need day or month).",
    tags=["reports"],
    summary='Request a report (report_type "segment_load"), ?member_id= for admins',
    openapi_extra=body_of(ReportBody),
)
async def post_report(
    p: Caller, db: Db, member_id: ScopedMemberIdQuery = None, body: Annotated[Any, Body()] = None
) -> Any:
    scoped = member_scope(p, member_id)
    if not await run_in_threadpool(member_exists, db, scoped):
        raise NotFound(f"member {scoped} not found")
    config = await run_in_threadpool(get_config, db, scoped)
    report_id = await run_in_threadpool(
        lambda: service.create_report(
            db,
            member_id=scoped,
            user_id=p.user_id,
            username=p.username,
            config=config,
            body={} if body is None else body,
        )
    )
    return ok(None, report_id=report_id)


@router.get("/report", tags=["reports"], summary="A report's status (?id=)")
def get_report(p: Caller, db: Db, id: ReportIdQuery = None, member_id: MemberIdQuery = None) -> Any:
    scoped = member_scope(p, member_id, required=False)
    row = service.get_report_row(db, _report_id(id), scoped)
    return ok("report", service.report_out(row), execution_status=row["execution_status"])


@router.get(
    "/report-download",
    tags=["reports"],
    summary="A ready report's data: CSV, or JSON with format=json",
)
def download_report(
    p: Caller,
    db: Db,
    id: ReportIdQuery = None,
    member_id: MemberIdQuery = None,
    format: Annotated[
        Text, Query(description=f"One of {', '.join(service.FORMATS)} (any case)")
    ] = None,
) -> Any:
    scoped = member_scope(p, member_id, required=False)
    row = service.get_report_row(db, _report_id(id), scoped)
    fmt = (format or row["format"]).lower()
    if fmt not in service.FORMATS:
        raise Invalid(f"format must be one of {', '.join(service.FORMATS)}")
    if fmt == "json":
        columns, rows = service.report_result(row)
        data = [dict(zip(columns, r, strict=True)) for r in rows]
        return ok("report_data", {"columns": columns, "rows": data})
    return Response(
        service.report_csv(row),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{row["report_id"]}.csv"'},
    )
