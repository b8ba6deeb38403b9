"""The documented response envelope, and the HTTP status of each kind of domain error, in
one place.

Success: {"response": {"status": "OK", <name>: payload, "dbg_info": {"output_term": <name>}}}
Error:   {"response": {"status": "ERROR", "error_id", "error", "error_description", ...}}
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from bss.errors import (
    BssError,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    NotAuthenticated,
    NotFound,
    RateLimited,
    TimedOut,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)

#: The HTTP status each kind of domain error is answered with (the most specific kind wins).
STATUS: dict[type[BssError], int] = {
    Invalid: 400,
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    TimedOut: 408,
    Conflict: 409,
    Expired: 410,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    RateLimited: 429,
    Unavailable: 503,
}


def status_of(err: BssError) -> int:
    for kind in type(err).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


def error_body(err: BssError) -> dict[str, Any]:
    resp: dict[str, Any] = {"status": "ERROR"}
    if not err.bare:
        resp["error_id"] = err.error_id
        resp["error"] = err.error
        resp["error_description"] = err.error_description or err.error
    resp["error_code"] = err.error_code
    if err.errors is not None:
        resp["errors"] = err.errors
    return {"response": {**resp, **err.extra}}


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


def http_error_response(status_code: int, error_id: str, message: str) -> JSONResponse:
    """The error envelope for a failure of HTTP itself (an unknown path, a wrong method) or
    of the server, which no domain error kind describes."""
    body: dict[str, Any] = {"status": "ERROR", "error_id": error_id, "error": message}
    body |= {"error_description": message, "error_code": None}
    return JSONResponse({"response": body}, status_code=status_code)


def error_response(err: BssError) -> JSONResponse:
    headers = None if err.retry_after is None else {"Retry-After": str(err.retry_after)}
    return JSONResponse(error_body(err), status_code=status_of(err), headers=headers)
