"""The request head guard against a real `bss serve` on loopback: a client trickling its
request head is cut off after BSS_REQUEST_HEAD_TIMEOUT, an idle connection too, a head over
1 MiB is refused, while normal requests, kept-alive connections and slow bodies are not."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc, legacy

HEAD_TIMEOUT = 1.0
#: How long a test keeps trickling before it gives up on the server closing the connection;
#: only there so that a failing test ends.
GIVE_UP = 30 * HEAD_TIMEOUT


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    proc = ServerProc(
        tmp_path_factory.mktemp("head") / "data", {"request_head_timeout": HEAD_TIMEOUT}
    ).start()
    yield proc
    proc.stop()


def metric(server: ServerProc, name: str) -> int:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))
    raise AssertionError(f"{name} missing from /metrics")


def timeouts(server: ServerProc) -> int:
    return metric(server, "bss_request_head_timeouts_total")


def connect(server: ServerProc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length: status and body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(v)
        for k, _, v in (x.partition(b":") for x in lines[1:])
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split(b" ")[1]), body


def trickle_until_closed(sock: socket.socket, start: bytes) -> bytes | None:
    """Send `start`, then one header byte every 0.1 s; what the server sent before closing,
    or None if it still had not closed after GIVE_UP."""
    sock.sendall(start)
    received = b""
    give_up = time.monotonic() + GIVE_UP
    while time.monotonic() < give_up:
        try:
            sock.sendall(b"x")
        except OSError:  # reset: the server is gone from this connection
            return received
        if select.select([sock], [], [], 0.1)[0]:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk
    return None


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


def test_trickled_head_is_cut_off(guarded: ServerProc) -> None:
    before = timeouts(guarded)
    with connect(guarded) as sock:
        received = trickle_until_closed(sock, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert received is not None, "the server kept a trickled head open"
    assert received.startswith(b"HTTP/1.1 408 ")
    assert timeouts(guarded) == before + 1


def test_trickled_head_of_a_later_request_is_cut_off(guarded: ServerProc) -> None:
    """The clock starts again at the first byte of each request on a kept-alive connection."""
    before = timeouts(guarded)
    with connect(guarded) as sock:
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
        received = trickle_until_closed(sock, b"GET /health HTTP/1.1\r\nX-Slow: ")
    assert received is not None, "the server kept a trickled head open"
    assert received.startswith(b"HTTP/1.1 408 ")
    assert timeouts(guarded) == before + 1


def test_connection_that_sends_nothing_is_closed(guarded: ServerProc) -> None:
    before = timeouts(guarded)
    with connect(guarded) as sock:
        assert sock.recv(1024) == b""  # closed without an answer
    assert timeouts(guarded) == before + 1


def test_kept_alive_connection_idle_between_requests_is_kept(guarded: ServerProc) -> None:
    """Between requests uvicorn's keep-alive bound (30 s) applies, not the head bound."""
    before = timeouts(guarded)
    with connect(guarded) as sock:
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
        time.sleep(3 * HEAD_TIMEOUT)
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
    assert timeouts(guarded) == before


def test_slow_body_is_not_cut_off(guarded: ServerProc) -> None:
    """A body sent in pieces for longer than the head bound is received whole."""
    admin = Api(guarded.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(501)
    seg = admin.segment(501, "slow-body")
    job = admin.new_job(501)
    lines = [f"{1000 + i},{seg['id']}:0" for i in range(6)]
    before = timeouts(guarded)
    url = urlsplit(job["upload_url"])
    body = legacy(lines)
    with connect(guarded) as sock:
        sock.sendall(
            f"POST {url.path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nAuthorization: {admin.token}\r\n\r\n".encode()
        )
        for line in lines:  # 6 pieces, half the head bound apart
            time.sleep(HEAD_TIMEOUT / 2)
            sock.sendall(legacy([line]))
        status, answer = read_response(sock)
    assert (status, json.loads(answer)["response"]["status"]) == (200, "OK")
    done = admin.wait(501, job["job_id"])
    assert (done["phase"], done["num_valid"]) == ("completed", 6)
    assert timeouts(guarded) == before


def too_large(server: ServerProc) -> int:
    return metric(server, "bss_request_heads_too_large_total")


def test_head_over_a_mebibyte_is_refused(guarded: ServerProc) -> None:
    """httptools alone keeps every header it is sent; the guard stops at MAX_HEAD_BYTES."""
    before = too_large(guarded)
    header = b"X-Big: " + b"a" * 8000 + b"\r\n"
    received = b""
    with connect(guarded) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
            for _ in range(1000):  # 8 MB, far past the bound, unless the server closes first
                sock.sendall(header)
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:  # reset: the server closed with our bytes unread
            pass
    # When the close overtakes the answer (a reset), only the close and the count are seen.
    assert received == b"" or received.startswith(b"HTTP/1.1 431 ")
    assert too_large(guarded) == before + 1


def test_a_large_head_under_the_bound_is_taken(guarded: ServerProc) -> None:
    cookie = "c=" + "a" * 200_000
    with httpx.Client(base_url=guarded.url) as client:
        assert client.get("/health", headers={"Cookie": cookie}).status_code == 200


def test_normal_requests_work(guarded: ServerProc) -> None:
    with httpx.Client(base_url=guarded.url) as client:
        assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 200]
