"""The report flow: POST /report, GET /report?id=, GET /report-download?id= (CSV or JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from bss.accounts.service import Principal, member_exists
from bss.api.deps import json_body, member_scope, principal
from bss.api.envelope import ok
from bss.errors import Invalid, NotFound
from bss.reports import service
from bss.segments.service import get_config

router = APIRouter()


def _report_id(request: Request) -> str:
    report_id = request.query_params.get("id")
    if not report_id:
        raise Invalid("id is required (the report_id POST /report returned)")
    return report_id


@router.post(
    "/report",
    tags=["reports"],
    summary='Request a report (report_type "segment_load"), ?member_id= for admins',
)
async def post_report(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"))
    db = request.app.state.db
    if not await run_in_threadpool(member_exists, db, member_id):
        raise NotFound(f"member {member_id} not found")
    body = await json_body(request)
    config = await run_in_threadpool(get_config, db, member_id)
    report_id = await run_in_threadpool(
        lambda: service.create_report(
            db,
            member_id=member_id,
            user_id=p.user_id,
            username=p.username,
            config=config,
            body=body,
        )
    )
    return ok(None, report_id=report_id)


@router.get("/report", tags=["reports"], summary="A report's status (?id=)")
def get_report(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"), required=False)
    row = service.get_report_row(request.app.state.db, _report_id(request), member_id)
    return ok("report", service.report_out(row), execution_status=row["execution_status"])


@router.get(
    "/report-download",
    tags=["reports"],
    summary="A ready report's data: CSV, or JSON with format=json",
)
def download_report(request: Request, p: Principal = Depends(principal)) -> Any:
    member_id = member_scope(p, request.query_params.get("member_id"), required=False)
    row = service.get_report_row(request.app.state.db, _report_id(request), member_id)
    fmt = (request.query_params.get("format") or row["format"]).lower()
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
