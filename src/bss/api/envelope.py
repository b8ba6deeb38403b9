"""The documented response envelope, in one place.

Success: {"response": {"status": "OK", <name>: payload, "dbg_info": {"output_term": <name>}}}
Error:   {"response": {"status": "ERROR", "error_id", "error", "error_description", ...}}
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from bss.errors import BssError


def ok(
    name: str | None, payload: Any = None, *, status_code: int = 200, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"status": "OK"}
    if name is not None:
        body[name] = payload
    body.update(extra)
    body["dbg_info"] = {"output_term": name, "version": "bss"}
    return JSONResponse({"response": body}, status_code=status_code)


def ok_list(
    name: str, items: list[Any], *, count: int, start_element: int, num_elements: int, **extra: Any
) -> JSONResponse:
    return ok(
        name,
        items,
        count=count,
        start_element=start_element,
        num_elements=num_elements,
        **extra,
    )


def error_response(err: BssError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.http_status, headers=err.headers)
