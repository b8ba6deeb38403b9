"""Bounds on a request head: how long a client may take to send it
(BSS_REQUEST_HEAD_TIMEOUT) and how large it may be (MAX_HEAD_BYTES).

uvicorn bounds the wait between requests of a kept-alive connection, but not the head of a
request: a client that trickles a header byte now and then (slowloris) holds its connection,
and its file descriptor, for as long as it likes, and its httptools parser keeps every header
it is sent, however many megabytes. This protocol closes such a connection. The clock starts
when the connection opens, or when the first part of a later request's head on it arrives
without the rest (a head that arrives whole costs no timer), and stops once the head is
parsed: a slow body is left to the upload's own idle bound (BSS_UPLOAD_IDLE_SECONDS).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bss.metrics import COUNTERS

#: The largest request head (request line and headers) taken: far above any real one.
MAX_HEAD_BYTES = 1 << 20
TIMEOUTS_METRIC = "bss_request_head_timeouts_total"
TOO_LARGE_METRIC = "bss_request_heads_too_large_total"


def _plain_response(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, len(text), text)
    )


_TIMEOUT_RESPONSE = _plain_response(b"408 Request Timeout", b"Request head not received in time.\n")
_TOO_LARGE_RESPONSE = _plain_response(
    b"431 Request Header Fields Too Large", b"Request head too large.\n"
)


class HeadGuardProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its choice when httptools is installed, as it is here)
    with the head bounds; `head_timeout` and `max_head_bytes` are set by `guarded_protocol`."""

    head_timeout: ClassVar[float] = 10.0
    max_head_bytes: ClassVar[int] = MAX_HEAD_BYTES
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False
    _head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._head_started and self._head_timer is None:
            return  # the usual case: no head in progress, the last one came whole
        if self.transport.is_closing():
            return
        if self._head_timer is None:  # a later request on a kept-alive connection, in parts
            self._arm_head_timer()
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head(TOO_LARGE_METRIC, _TOO_LARGE_RESPONSE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_started = False
        self._head_bytes = 0
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse_head(TIMEOUTS_METRIC, _TIMEOUT_RESPONSE)

    def _refuse_head(self, metric: str, response: bytes) -> None:
        self._cancel_head_timer()
        COUNTERS.inc(metric)
        # A connection that never began a request is closed silently (a browser may open one
        # ahead of need), and so is one still answering an earlier request (an answer here
        # would land inside that one); one stuck inside a head is told why.
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._head_started and not answering:
            self.transport.write(response)
        self.transport.close()


def guarded_protocol(head_timeout: float, max_head_bytes: int) -> type[HeadGuardProtocol]:
    """The protocol class to give uvicorn's `http=`, with these bounds."""
    attributes = {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes}
    return type("HeadGuardProtocol", (HeadGuardProtocol,), attributes)
