"""Errors the domain raises, with the documented error ids and texts, and no HTTP.

Each class is a kind of failure (not found, invalid, forbidden, ...); the web layer maps each
kind to its HTTP status in one place (bss.api.envelope.STATUS) and renders the documented
envelope. The CLI and workers read the message. Nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BssError(Exception):
    """A failure the caller is told about: the documented `error_id`, a message, and the
    optional documented extras (`error_code`, an `errors` list, extra fields).

    `retry_after` says, in seconds, when trying again may succeed (a throttle, a key in
    use). `bare` marks the documented upload-limit body, which carries only status,
    error_code and errors."""

    #: The documented error id this kind is reported with (a raise may name another).
    error_id_default: ClassVar[str] = "SYNTAX"
    #: The message when none is given.
    default_message: ClassVar[str] = "invalid request"

    def __init__(
        self,
        error: str | None = None,
        *,
        error_id: str | None = None,
        error_description: str | None = None,
        error_code: str | None = None,
        errors: list[str] | None = None,
        retry_after: int | None = None,
        bare: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        message = self.default_message if error is None else error
        super().__init__(message)
        self.error = message
        self.error_id = error_id or self.error_id_default
        self.error_description = error_description
        self.error_code = error_code
        self.errors = errors
        self.retry_after = retry_after
        self.bare = bare
        #: Fields after the documented ones (the documented ones are never changed).
        self.extra = extra or {}


class Invalid(BssError):
    """The request (a parameter, a body, a setting) is malformed or out of range."""


class NotAuthenticated(BssError):
    """No session, or an expired or invalid one; or a login that did not match."""

    error_id_default = "NOAUTH"
    default_message = "Authentication failed - not logged in"


class Forbidden(BssError):
    """The caller is known but may not do this."""

    error_id_default = "UNAUTH"
    default_message = "You do not have access to this resource"


class NotFound(BssError):
    """The object named does not exist (or is not the caller's to see)."""

    error_id_default = "NOTFOUND"


class Conflict(BssError):
    """The object's state does not allow this now (a used upload URL, a key being applied)."""


class Expired(BssError):
    """The object named existed but is gone for good (an upload URL past its time)."""


class TooLarge(BssError):
    """More data than a limit allows (a file, a posted body)."""


class UnsupportedMediaType(BssError):
    """A body sent in a form this operation does not take."""


class TimedOut(BssError):
    """The caller took longer than allowed (an upload past its time or stalled)."""


class RateLimited(BssError):
    """Over a budget (requests, logins, uploads); `retry_after` says when to come back."""

    error_id_default = "SYSTEM"


class Unavailable(BssError):
    """A service this one depends on cannot be reached now (not the caller's fault)."""

    error_id_default = "SYSTEM"


def limit_exceeded(text: str, kind: type[BssError] = RateLimited) -> BssError:
    """The documented upload-limit body: status, error_code and `errors`, nothing else."""
    error_code = FILESIZE_LIMIT_EXCEEDED if kind is TooLarge else RATE_LIMIT_EXCEEDED
    return kind(text, error_code=error_code, errors=[text], bare=True)


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
    """A membership store URL this build cannot open."""


def file_too_large(max_file_bytes: int, file_bytes: int) -> BssError:
    """The documented 413 body, plus the limit and the file's size (its Content-Length, or the
    bytes received when it was refused mid-stream) as extra fields."""
    error = limit_exceeded(ERR_FILE_BYTES, TooLarge)
    error.extra = {"max_file_bytes": max_file_bytes, "file_bytes": file_bytes}
    return error
