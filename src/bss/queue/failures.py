"""Whose fault a failure is: the work's own, or the infrastructure's.

The rule every queue follows: a failure of the infrastructure (the membership store, the
database or the files store unreachable or degraded) is nobody's fault and never uses one
of the work's attempts; the work waits and is tried again after a bounded backoff. Only a
failure the work causes itself (a bug its input triggers, a file that kills its worker)
counts against its attempts.
"""

from __future__ import annotations

import errno
from enum import Enum


class Fault(Enum):
    OWN = "own"
    INFRASTRUCTURE = "infrastructure"


#: OSError numbers that mean "the other side is not there (now)", not "this input is bad".
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def _infrastructure_types() -> tuple[type[BaseException], ...]:
    """Exception classes of the engines' clients that mean the service behind is down or
    degraded (the clients are optional dependencies: only the installed ones are named)."""
    from sqlalchemy import exc as sa_exc

    from bss.errors import StoreUnavailable

    found: list[type[BaseException]] = [
        StoreUnavailable,
        ConnectionError,  # builtins: refused, reset, aborted, broken pipe
        TimeoutError,
        sa_exc.OperationalError,  # the database is down, restarting or refused us
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,  # the connection pool is exhausted
    ]
    try:
        from redis import exceptions as redis_exc
    except ImportError:
        pass
    else:
        found += [
            redis_exc.ConnectionError,  # also covers redis' TimeoutError's siblings
            redis_exc.TimeoutError,
            redis_exc.ClusterDownError,
            redis_exc.TryAgainError,
            redis_exc.MasterDownError,
            redis_exc.ReadOnlyError,
            redis_exc.ClusterError,
            redis_exc.RedisClusterException,
        ]
    try:
        from botocore import exceptions as boto_exc
    except ImportError:
        pass
    else:
        found += [
            boto_exc.EndpointConnectionError,
            boto_exc.ConnectionClosedError,
            boto_exc.ConnectTimeoutError,
            boto_exc.ReadTimeoutError,
            boto_exc.HTTPClientError,
        ]
    return tuple(found)


_INFRASTRUCTURE: tuple[type[BaseException], ...] | None = None

#: S3 error codes of a store that is there but cannot serve now.
_S3_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})


def _infrastructure_one(exc: BaseException) -> bool:
    global _INFRASTRUCTURE
    if _INFRASTRUCTURE is None:
        _INFRASTRUCTURE = _infrastructure_types()
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    response = getattr(exc, "response", None)  # botocore.ClientError
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        return error.get("Code") in _S3_BUSY or int(status) >= 500
    return False


def classify(exc: BaseException) -> Fault:
    """INFRASTRUCTURE when `exc`, or any exception it was raised from or while handling, is
    an outage or degradation of a service the work depends on; OWN otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _infrastructure_one(current):
            return Fault.INFRASTRUCTURE
        current = current.__cause__ or current.__context__
    return Fault.OWN


def backoff(failures: int, *, first: float, cap: float) -> float:
    """Seconds to wait after `failures` failures in a row: `first`, doubling, at most `cap`."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2 ** min(failures - 1, 32))
