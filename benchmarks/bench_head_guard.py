"""The request head guard's cost (bss.api.head_guard): requests per second of a trivial ASGI
app served by uvicorn's own httptools protocol (the baseline) and by the guarded one, both
measured in the same run, in alternating rounds, over one kept-alive loopback connection.

A trivial app makes the protocol's share of a request as large as it can be; a real request
(a lookup, a job status) spends far longer in the app.

    .venv/bin/python benchmarks/bench_head_guard.py [--requests 4000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bss.api.head_guard import MAX_HEAD_BYTES, guarded_protocol

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def start(protocol: type, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def rate(port: int, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        began = time.perf_counter()
        for _ in range(n):
            sock.sendall(REQUEST)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(4096)
        return n / (time.perf_counter() - began)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    plain, guarded = free_port(), free_port()
    servers = [
        start(HttpToolsProtocol, plain),
        start(guarded_protocol(10.0, MAX_HEAD_BYTES), guarded),
    ]
    rates: dict[str, list[float]] = {"plain": [], "guarded": []}
    for turn in range(args.rounds):
        order = [("plain", plain), ("guarded", guarded)]
        for name, port in order if turn % 2 == 0 else order[::-1]:
            rates[name].append(rate(port, args.requests))
    base, mine = statistics.median(rates["plain"]), statistics.median(rates["guarded"])
    print(f"uvicorn httptools (baseline): {base:,.0f} req/s")
    print(f"with the head guard:          {mine:,.0f} req/s")
    print(f"ratio guarded/baseline: {mine / base:.3f}")
    print(f"per request: +{(1 / mine - 1 / base) * 1e6:.1f} us")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for server in servers:
        server.should_exit = True


if __name__ == "__main__":
    main()
