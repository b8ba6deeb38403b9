"""HTTP API benchmark against a real `bss serve` (started here on a temp data dir).

Measures, with baselines taken in the same run on the same machine:

* job create (POST /batch-segment) and job status (GET /batch-segment?job_id=) latency,
  p50/p99 under concurrent load (threads, bounded request count), against a trivial GET
  of /health and of /openapi.json;
* upload throughput (MB/s) of POST <upload_url> with a streamed body, against a raw
  loopback socket copy of the same bytes into a file.

    .venv/bin/python benchmarks/bench_api.py [--requests 2000] [--threads 16] [--upload-mb 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ADMIN, PASSWORD = "bench-admin", "bench-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "BSS_ADMIN_USERNAME": ADMIN,
        "BSS_ADMIN_PASSWORD": PASSWORD,
        "BSS_REQUESTS_PER_MINUTE": "100000000",
        "BSS_MAX_PENDING_JOBS": "100000000",
        "BSS_WORKERS": "0",  # measure the API, not the engine
    }
    bss = Path(sys.executable).with_name("bss")
    log = (data_dir.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(bss), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def load(
    make_request: Callable[[httpx.Client, int], httpx.Response],
    requests: int,
    threads: int,
    url: str,
    token: str,
) -> dict:
    """`requests` requests spread over `threads` threads (each with its own keep-alive client)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def run() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=60) as client:
            for i in counter:
                t0 = time.perf_counter()
                resp = make_request(client, i)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if resp.status_code != 200:
                        errors += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "rps": len(latencies) / wall,
        "errors": errors,
    }


def raw_socket_copy(path: Path, out_dir: Path) -> float:
    """Baseline MB/s: the same bytes over a loopback TCP socket into a file, no HTTP."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    done = threading.Event()

    def receive() -> None:
        conn, _ = server.accept()
        with conn, (out_dir / "raw-copy").open("wb") as fh:
            while chunk := conn.recv(1 << 20):
                fh.write(chunk)
        done.set()

    threading.Thread(target=receive, daemon=True).start()
    size = path.stat().st_size
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sock.sendall(block)
    done.wait()
    dt = time.perf_counter() - t0
    server.close()
    (out_dir / "raw-copy").unlink()
    return size / dt / 1e6


def http_upload(url: str, token: str, member_id: int, path: Path) -> float:
    with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=None) as client:
        job = client.post("/batch-segment", params={"member_id": member_id}).json()["response"][
            "batch_segment_upload_job"
        ]

        def chunks():  # type: ignore[no-untyped-def]
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        size = path.stat().st_size
        t0 = time.perf_counter()
        resp = client.post(
            job["upload_url"],
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        dt = time.perf_counter() - t0
        assert resp.json()["response"]["status"] == "OK", resp.text[:500]
    return size / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--upload-mb", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bss-bench-") as tmp:
        tmpdir = Path(tmp)
        proc, url = start_server(tmpdir / "data")
        try:
            token = httpx.post(
                f"{url}/auth", json={"auth": {"username": ADMIN, "password": PASSWORD}}
            ).json()["response"]["token"]
            auth = {"Authorization": token}
            members = list(range(1, args.threads + 1))
            for m in members:
                httpx.post(f"{url}/member", json={"member": {"id": m}}, headers=auth)
            # a job per member to poll
            jobs = [
                httpx.post(f"{url}/batch-segment", params={"member_id": m}, headers=auth).json()[
                    "response"
                ]["batch_segment_upload_job"]["job_id"]
                for m in members
            ]
            print(
                f"server {url}  requests={args.requests} threads={args.threads} cpus={os.cpu_count()}"
            )
            results = {
                "baseline GET /health": load(
                    lambda c, i: c.get("/health"), args.requests, args.threads, url, token
                ),
                "baseline GET /openapi.json": load(
                    lambda c, i: c.get("/openapi.json"), args.requests, args.threads, url, token
                ),
                "job status GET /batch-segment?job_id=": load(
                    lambda c, i: c.get(
                        "/batch-segment",
                        params={
                            "member_id": members[i % len(members)],
                            "job_id": jobs[i % len(jobs)],
                        },
                    ),
                    args.requests,
                    args.threads,
                    url,
                    token,
                ),
                "job create POST /batch-segment": load(
                    lambda c, i: c.post(
                        "/batch-segment", params={"member_id": members[i % len(members)]}
                    ),
                    args.requests,
                    args.threads,
                    url,
                    token,
                ),
            }
            base = results["baseline GET /health"]
            print(
                f"{'':42s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'errors':>6s} {'p99 / health p99':>17s}"
            )
            for name, r in results.items():
                print(
                    f"{name:42s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['rps']:8.0f} {r['errors']:6d} "
                    f"{r['p99_ms'] / base['p99_ms']:17.2f}"
                )

            payload = tmpdir / "upload.txt"
            line = b"1234567890123456789,1:1440;2:1440;3:0\n"
            block = line * ((1 << 20) // len(line))
            with payload.open("wb") as fh:
                for _ in range(args.upload_mb):
                    fh.write(block)
            raw = raw_socket_copy(payload, tmpdir)
            up = http_upload(url, token, members[0], payload)
            print(
                f"\nupload {payload.stat().st_size / 1e6:.0f} MB: HTTP {up:.0f} MB/s, raw loopback socket -> file {raw:.0f} MB/s, ratio {up / raw:.2f}"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
