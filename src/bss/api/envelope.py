"""The documented response envelope, in one place.

Success: {"response": {"status": "OK", <name>: payload, "dbg_info": {"output_term": <name>}}}
Error:   {"response": {"status": "ERROR", "error_id", "error", "error_description", ...}}
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


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


class ApiError(Exception):
    """Any error an endpoint reports; the app's one handler renders it."""

    def __init__(
        self,
        error_id: str,
        error: str,
        *,
        http_status: int = 400,
        error_description: str | None = None,
        error_code: str | None = None,
        errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
        bare: bool = False,
    ) -> None:
        super().__init__(error)
        self.error_id = error_id
        self.error = error
        self.http_status = http_status
        self.error_description = error_description
        self.error_code = error_code
        self.errors = errors
        self.headers = headers
        #: Render only status/error_code/errors: the documented upload-limit bodies, verbatim.
        self.bare = bare

    def body(self) -> dict[str, Any]:
        if self.bare:
            resp: dict[str, Any] = {"status": "ERROR", "error_code": self.error_code}
            if self.errors is not None:
                resp["errors"] = self.errors
            return {"response": resp}
        resp = {
            "status": "ERROR",
            "error_id": self.error_id,
            "error": self.error,
            "error_description": self.error_description or self.error,
            "error_code": self.error_code,
        }
        if self.errors is not None:
            resp["errors"] = self.errors
        return {"response": resp}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.http_status, headers=self.headers)


def noauth(msg: str = "Authentication failed - not logged in") -> ApiError:
    return ApiError("NOAUTH", msg, http_status=401)


def unauth(msg: str = "You do not have access to this resource") -> ApiError:
    return ApiError("UNAUTH", msg, http_status=403)


def notfound(msg: str) -> ApiError:
    return ApiError("NOTFOUND", msg, http_status=404)


def syntax(msg: str, **kw: Any) -> ApiError:
    return ApiError("SYNTAX", msg, http_status=400, **kw)


def upload_limit(error_code: str, text: str, http_status: int) -> ApiError:
    """The documented upload-limit body: status, error_code and `errors`, nothing else."""
    return ApiError(
        "SYNTAX", text, http_status=http_status, error_code=error_code, errors=[text], bare=True
    )


# The documented `errors` texts, word for word.
FILESIZE_LIMIT_EXCEEDED = "FILESIZE_LIMIT_EXCEEDED"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
ERR_FILE_BYTES = "Member exceeds maximum byte size allowed for a file"
ERR_DAILY_BYTES = "Member exceeds maximum allowed bytes per day"
ERR_HOURLY_BYTES = "Member exceeds maximum allowed bytes per hour"
ERR_DAILY_LINES = "Member exceeds maximum allowed number of lines per day"
ERR_HOURLY_LINES = "Member exceeds maximum allowed number of lines per hour"
ERR_UPLOAD_TIME = "Maximum upload time exceeded"
# Not documented word for word; same shape.
ERR_CONCURRENT = "Member exceeds maximum number of concurrent uploads"
ERR_PENDING = "Member exceeds maximum number of jobs waiting to be processed"
