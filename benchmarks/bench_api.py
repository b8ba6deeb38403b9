"""HTTP API under concurrent load, against a real `bss serve` started here, with /health as the
baseline measured in the same run at the same concurrency.

For each concurrency level (keep-alive connections, each sending its next request as soon as
the previous answer is in) it measures GET /health, job status (GET /batch-segment?job_id=),
GET /user-segments on a store filled first (--store-lines of the bench_ingest file, real uids
from it) and job creation, and prints req/s, p50 and p99, the ratios against /health (req/s
ratio, p99 ratio), the server's CPU microseconds per answer, the load average, and req/s at
the highest level against the lowest. Levels and cases are measured in rotation, in short
turns, so that a change in the machine's load during the run falls on all of them alike. Then upload throughput of a streamed file against a
raw loopback socket copy of the same bytes.

The load generator is one asyncio process on raw sockets (a thread per client in Python
measures the client's own GIL, not the server); it shares the machine's cores with the server.

    .venv/bin/python benchmarks/bench_api.py [--concurrency 8,32,128] [--seconds 6] [--rounds 3]
        [--store-lines 100000] [--processes 1] [--upload-mb 100]

The issue's 35M-pair store takes long to fill through uploads: fill a data dir once with
`bench_lookup.py --lines 10000000 --data-dir DIR --fill-only` and pass `--data-dir DIR` here
(its segments are registered on first use; lookups name users of that store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from bench_ingest import MEMBER_ID, SEGMENTS, write_file  # noqa: E402
from harness import ADMIN, PASSWORD, percentile  # noqa: E402


def start_server(data_dir: Path, processes: int) -> tuple[subprocess.Popen[bytes], str]:
    settings = {
        "BSS_REQUESTS_PER_MINUTE": "100000000",
        "BSS_MAX_PENDING_JOBS": "100000000",
        "BSS_LOGINS_PER_WINDOW": "1000",
        "BSS_MAX_FILE_BYTES": str(4 << 30),  # the 10M-line file is about the 0.5 GB limit
        "BSS_WORKERS": "1",  # fills the store first; idle while the API is measured
        "BSS_PROCESSES": str(processes),
    }
    return harness.start_server(data_dir, settings)


def wait_for_sweep(log_path: Path, timeout: float = 900) -> None:
    """Wait for the retention sweep a server runs when it starts (a pass over the whole store,
    minutes at 35M pairs): the figures are of a server in its steady state."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        text = log_path.read_text(errors="replace")
        if '"retention sweep"' in text or '"sweep failed"' in text:
            print(
                f"server's start-up retention sweep done after {time.perf_counter() - started:.0f} s"
            )
            return
        time.sleep(0.5)
    print("warning: the start-up retention sweep was not done in time; measuring anyway")


async def _client(
    port: int,
    make_request: Callable[[int], bytes],
    start: float,
    warm_until: float,
    until: float,
    out: list[float],
    errors: list[int],
    offset: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= until:
                return
            writer.write(make_request(i))
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= warm_until:
                out.append(t1 - t0)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def _load(
    port: int, make_request: Callable[[int], bytes], clients: int, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    warm_until = start + min(0.5, seconds / 5)
    until = warm_until + seconds
    await asyncio.gather(
        *(
            _client(port, make_request, start, warm_until, until, latencies, errors, k * 7919)
            for k in range(clients)
        )
    )
    return latencies, len(errors)


def load(
    port: int, make_request: Callable[[int], bytes], clients: int, seconds: float
) -> tuple[list[float], int]:
    """Latencies of the answers received in `seconds` (after a short warm-up), and errors."""
    try:
        import uvloop

        return uvloop.run(_load(port, make_request, clients, seconds))
    except ImportError:
        return asyncio.run(_load(port, make_request, clients, seconds))


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of the server process and its children (Linux /proc;
    0 elsewhere): the load generator's own CPU is not in it."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(
    port: int,
    cases: dict[str, Callable[[int], bytes]],
    levels: list[int],
    seconds: float,
    rounds: int,
    pid: int = 0,
) -> dict[int, dict[str, dict]]:
    """Each case at each concurrency level for `seconds` in all, in `rounds` short turns
    taken in rotation (levels and cases): on a machine others load too, every case (the
    baseline included) and every level sees the same mix of quiet and busy."""
    latencies = {c: {name: [] for name in cases} for c in levels}
    errors = {c: dict.fromkeys(cases, 0) for c in levels}
    cpu = {c: dict.fromkeys(cases, 0.0) for c in levels}
    for _ in range(rounds):
        for clients in levels:
            for name, make in cases.items():
                before = server_cpu_seconds(pid) if pid else 0.0
                got, failed = load(port, make, clients, seconds / rounds)
                cpu[clients][name] += (server_cpu_seconds(pid) - before) if pid else 0.0
                latencies[clients][name] += got
                errors[clients][name] += failed
    return {
        clients: {
            name: {
                "rps": len(values) / seconds,
                "p50_ms": percentile(values, 50) * 1000,
                "p99_ms": percentile(values, 99) * 1000,
                "errors": errors[clients][name],
                # server CPU per answer, warm-up included in the CPU (a slight overestimate)
                "server_cpu_s": cpu[clients][name],
                "cpu_us_per_req": cpu[clients][name] / max(len(values), 1) * 1e6,
            }
            for name, values in latencies[clients].items()
        }
        for clients in levels
    }


def get_request(token: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {token}\r\n\r\n".encode()
        if token
        else f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    )


def fill_store(url: str, auth: dict[str, str], tmpdir: Path, lines: int) -> list[int]:
    """Upload `lines` lines of the bench_ingest file for member MEMBER_ID; return sample uids."""
    with httpx.Client(base_url=url, headers=auth, timeout=None) as client:
        client.post("/member", json={"member": {"id": MEMBER_ID}})
        for i in range(1, SEGMENTS + 1):
            client.post(
                "/segment",
                params={"member_id": MEMBER_ID},
                json={"segment": {"code": f"s{i}"}},
            )
        path = tmpdir / "store.txt"
        pairs = write_file(path, lines)
        job = client.post("/batch-segment", params={"member_id": MEMBER_ID}).json()["response"][
            "batch_segment_upload_job"
        ]
        started = time.perf_counter()

        def chunks():  # type: ignore[no-untyped-def]
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        resp = client.post(
            job["upload_url"],
            content=chunks(),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )
        assert resp.json()["response"]["status"] == "OK", resp.text[:500]
        while True:
            state = client.get(
                "/batch-segment", params={"member_id": MEMBER_ID, "job_id": job["job_id"]}
            ).json()["response"]["batch_segment_upload_job"]
            if state["phase"] in ("completed", "error"):
                break
            time.sleep(1)
        print(
            f"store: {lines} lines, {pairs} pairs applied in {time.perf_counter() - started:.1f} s "
            f"(phase {state['phase']}, num_valid {state['num_valid']})"
        )
    uids = []
    with path.open() as fh:
        for line in fh:
            uids.append(int(line.split(",", 1)[0]))
            if len(uids) >= 10_000:
                break
    path.unlink()
    return uids


def kept_store(url: str, auth: dict[str, str], data_dir: Path) -> list[int]:
    """Users of a data dir filled by bench_lookup.py; registers its segments on first use."""
    import bench_store

    lines = json.loads((data_dir / "bench-filled.json").read_text())["lines"]
    with httpx.Client(base_url=url, headers=auth, timeout=None) as client:
        client.post("/member", json={"member": {"id": MEMBER_ID}})
        have = client.get("/segment", params={"member_id": MEMBER_ID, "num_elements": 1})
        if have.json()["response"].get("count", 0) < bench_store.SEGMENTS:
            for i in range(1, bench_store.SEGMENTS + 1):
                client.post(
                    "/segment", params={"member_id": MEMBER_ID}, json={"segment": {"code": f"s{i}"}}
                )
    print(f"store: kept data dir {data_dir} ({lines} lines of bench_store's workload)")
    return bench_store.lookup_uids(lines)[:10_000].tolist()


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
    ap.add_argument("--concurrency", default="8,32,128", help="client counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per case")
    ap.add_argument("--rounds", type=int, default=3, help="turns each case's seconds are cut in")
    ap.add_argument("--store-lines", type=int, default=100_000)
    ap.add_argument("--processes", type=int, default=1, help="API processes (BSS_PROCESSES)")
    ap.add_argument("--upload-mb", type=int, default=100)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--data-dir", type=Path, help="a data dir filled by bench_lookup.py, kept")
    ap.add_argument("--port", type=int, help="the server's port (default: any free one)")
    args = ap.parse_args()
    if args.port:
        harness.free_port = lambda: args.port
    levels = [int(x) for x in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="bss-bench-") as tmp:
        tmpdir = Path(tmp)
        proc, url = start_server(args.data_dir or tmpdir / "data", args.processes)
        port = int(url.rsplit(":", 1)[1])
        try:
            token = httpx.post(
                f"{url}/auth", json={"auth": {"username": ADMIN, "password": PASSWORD}}
            ).json()["response"]["token"]
            auth = {"Authorization": token}
            if args.data_dir:
                uids = kept_store(url, auth, args.data_dir)
                wait_for_sweep(args.data_dir.parent / "server.log")
            else:
                uids = fill_store(url, auth, tmpdir, args.store_lines) if args.store_lines else [1]
            members = list(range(1, 17))
            for m in members:
                httpx.post(f"{url}/member", json={"member": {"id": m}}, headers=auth)
            jobs = [
                httpx.post(f"{url}/batch-segment", params={"member_id": m}, headers=auth).json()[
                    "response"
                ]["batch_segment_upload_job"]["job_id"]
                for m in members
            ]
            health = get_request("", "/health")
            status = [
                get_request(token, f"/batch-segment?member_id={m}&job_id={j}")
                for m, j in zip(members, jobs, strict=True)
            ]
            lookups = [get_request(token, f"/user-segments?uid={u}") for u in uids]
            cases: dict[str, Callable[[int], bytes]] = {
                "GET /health (baseline)": lambda i: health,
                "job status GET /batch-segment?job_id=": lambda i: status[i % len(status)],
                "GET /user-segments?uid=": lambda i: lookups[i % len(lookups)],
            }
            print(
                f"server {url}  processes={args.processes} cpus={os.cpu_count()} "
                f"seconds/case={args.seconds} store_lines={args.store_lines} "
                f"data_dir={args.data_dir} load average {os.getloadavg()[0]:.1f}"
            )
            print(
                f"{'case':40s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
                f"{'errors':>6s} {'rps/health':>10s} {'p99/health':>10s} {'CPU us/req':>10s}"
            )
            results: dict[str, dict[int, dict]] = {name: {} for name in cases}
            load_before = os.getloadavg()[0]
            by_level = measure(port, cases, levels, args.seconds, args.rounds, proc.pid)
            for clients, measured in by_level.items():
                base = measured["GET /health (baseline)"]
                for name, r in measured.items():
                    results[name][clients] = r
                    print(
                        f"{name:40s} {clients:7d} {r['rps']:8.0f} {r['p50_ms']:8.2f} "
                        f"{r['p99_ms']:8.2f} {r['errors']:6d} {r['rps'] / base['rps']:10.2f} "
                        f"{r['p99_ms'] / base['p99_ms']:10.2f} {r['cpu_us_per_req']:10.0f}"
                    )
            load_after = os.getloadavg()[0]
            print(f"load average {load_before:.1f} before the levels, {load_after:.1f} after")
            lo, hi = min(levels), max(levels)
            for name in cases:
                ratio = results[name][hi]["rps"] / results[name][lo]["rps"]
                print(f"{name:40s} req/s at {hi} clients / at {lo}: {ratio:.2f}")
            create = measure(
                port,
                {
                    "create": lambda i: (
                        f"POST /batch-segment?member_id={members[i % len(members)]} HTTP/1.1\r\n"
                        f"Host: bench\r\nAuthorization: {token}\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
                },
                [lo],
                args.seconds,
                1,
            )[lo]["create"]
            print(
                f"job create POST /batch-segment at {lo} clients: {create['rps']:.0f} req/s, "
                f"p50 {create['p50_ms']:.2f} ms, p99 {create['p99_ms']:.2f} ms"
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
                f"\nupload {payload.stat().st_size / 1e6:.0f} MB: HTTP {up:.0f} MB/s, raw loopback "
                f"socket -> file {raw:.0f} MB/s, ratio {up / raw:.2f}"
            )
            if any(r["errors"] for levels in results.values() for r in levels.values()):
                print("\nserver log (errors seen):")
                lines = (
                    ((args.data_dir or tmpdir / "data").parent / "server.log")
                    .read_text(errors="replace")
                    .splitlines()
                )
                print("\n".join(line for line in lines if '"level": "error"' in line)[-4000:])
            if args.json:
                args.json.write_text(
                    json.dumps(
                        {"levels": results, "create": create, "load": [load_before, load_after]},
                        indent=2,
                    )
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
