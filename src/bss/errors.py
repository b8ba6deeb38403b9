"""Errors the domain services raise, with the documented error ids and texts.

Below the web layer nothing imports FastAPI: services raise `BssError`, and bss.api.envelope
renders it as the documented error envelope.
"""

from __future__ import annotations

from typing import Any


class BssError(Exception):
    """An error a service reports to its caller: the documented `error_id`, a message, and the
    HTTP status the documented API answers it with. The web layer renders it (bss.api.envelope);
    the CLI and workers read its message."""

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
        extra: dict[str, Any] | None = None,
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
        #: Fields after the documented ones (the documented ones are never changed).
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        if self.bare:
            resp: dict[str, Any] = {"status": "ERROR", "error_code": self.error_code}
            if self.errors is not None:
                resp["errors"] = self.errors
            return {"response": {**resp, **self.extra}}
        resp = {
            "status": "ERROR",
            "error_id": self.error_id,
            "error": self.error,
            "error_description": self.error_description or self.error,
            "error_code": self.error_code,
        }
        if self.errors is not None:
            resp["errors"] = self.errors
        return {"response": {**resp, **self.extra}}


def noauth(msg: str = "Authentication failed - not logged in") -> BssError:
    return BssError("NOAUTH", msg, http_status=401)


def unauth(msg: str = "You do not have access to this resource") -> BssError:
    return BssError("UNAUTH", msg, http_status=403)


def notfound(msg: str) -> BssError:
    return BssError("NOTFOUND", msg, http_status=404)


def syntax(msg: str, **kw: Any) -> BssError:
    return BssError("SYNTAX", msg, http_status=400, **kw)


def upload_limit(error_code: str, text: str, http_status: int) -> BssError:
    """The documented upload-limit body: status, error_code and `errors`, nothing else."""
    return BssError(
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


class StoreUnavailable(Exception):
    """The membership store (or a replica it must confirm writes on) cannot be reached.

    Infrastructure, not bad input: start-up reports it in one line, a worker gives the job
    back to be retried (its replay re-applies the same seqs, so nothing is counted twice)."""


class StoreUrlError(ValueError):
    """A membership store URL this build cannot open, or an old store to convert first."""


def file_too_large(max_file_bytes: int, file_bytes: int) -> BssError:
    """The documented 413 body, plus the limit and the file's size (its Content-Length, or the
    bytes received when it was refused mid-stream) as extra fields."""
    error = upload_limit(FILESIZE_LIMIT_EXCEEDED, ERR_FILE_BYTES, 413)
    error.extra = {"max_file_bytes": max_file_bytes, "file_bytes": file_bytes}
    return error
