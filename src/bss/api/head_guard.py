"""A bound on how long a client may take to send its request head (BSS_REQUEST_HEAD_TIMEOUT).

uvicorn bounds the wait between requests of a kept-alive connection, but not the head of a
request: a client that trickles a header byte now and then (slowloris) holds its connection,
and its file descriptor, for as long as it likes. This protocol closes such a connection. The
clock starts when the connection opens, or at the first byte of each later request on it, and
stops once the head is parsed: a slow body is left to the upload's own idle bound
(BSS_UPLOAD_IDLE_SECONDS).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bss.metrics import COUNTERS

TIMEOUTS_METRIC = "bss_request_head_timeouts_total"

_TIMEOUT_BODY = b"Request head not received in time.\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n"
    b"\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its choice when httptools is installed, as it is here)
    with the head bound; `head_timeout` is set by `protocol_with_head_timeout`."""

    head_timeout: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_started = False
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        COUNTERS.inc(TIMEOUTS_METRIC)
        # A connection that never began a request is closed silently (a browser may open one
        # ahead of need), and so is one still answering an earlier request (a 408 would land
        # inside that answer); one stuck inside a head is told why.
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._head_started and not answering:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_with_head_timeout(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class to give uvicorn's `http=`, bound to `seconds`."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": seconds})
