"""User lookups on a big store: in process and over HTTP, against baselines of the same run.

Fills an LMDB store with the bench_store workload (job 1 of N lines, about 3.5 N pairs, and
the overlapping job 2), then measures:

* in process, one core: single-user `user_segments` (lookups/s, p50/p99) and batches of
  1000 users (`users_segments`, p50/p99);
* over HTTP against a real `bss serve` on that data dir, with bench_api's asyncio load
  generator: GET /user-segments with a few concurrent clients (p50/p99, req/s) and POST
  /user-segments with 1000 users, each next to GET /health at the same concurrency (the
  HTTP floor).

Ends with the issue's targets, each marked met or unmet.

    python benchmarks/bench_lookup.py --lines 10000000 --clients 4 --data-dir /tmp/bss-35m

With --data-dir the filled data dir is kept and reused by later runs with the same --lines
(filling 35M pairs takes minutes); bench_api.py --data-dir measures over the same store.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import operator
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bench_store
import harness
import httpx
import numpy as np
import pyarrow as pa
from bench_api import get_request, measure, wait_for_sweep
from bench_store import NOW, jobs
from harness import ADMIN, PASSWORD

from bss.store.keyvalue import LmdbStore


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    settings = {"BSS_REQUESTS_PER_MINUTE": "100000000", "BSS_WORKERS": "0"}
    return harness.start_server(data_dir, settings, wait_seconds=120)


def fill(data_dir: Path, lines: int) -> tuple[np.ndarray, int]:
    """Fill the data dir's store with the bench_store workload of `lines` lines, once: a
    marker file names the size, and a kept dir filled earlier is reused."""
    marker = data_dir / "bench-filled.json"
    if marker.exists():
        filled = json.loads(marker.read_text())
        if filled["lines"] != lines:
            raise SystemExit(f"{data_dir} holds {filled['lines']} lines, not {lines}")
        print(f"reusing {data_dir}: {filled['pairs']:,} pairs")
        return bench_store.lookup_uids(lines), filled["pairs"]
    store = LmdbStore(data_dir / "memberships.lmdb")
    pairs, started, cpu = 0, time.perf_counter(), time.process_time()

    def counted(job: Iterator[tuple[str, pa.Table]]) -> Iterator[pa.Table]:
        nonlocal pairs
        for _, batch in job:
            pairs += batch.num_rows
            yield batch

    # Each job as the service writes it: one stream, sorted and written in key order.
    for _, job in itertools.groupby(jobs(lines), key=operator.itemgetter(0)):
        store.apply_many(counted(job))
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    store.close()
    print(
        f"filled {pairs:,} pairs in {took:.0f} s ({pairs / took:,.0f} pairs/s, "
        f"{pairs / cpu:,.0f} per CPU second)"
    )
    marker.write_text(json.dumps({"lines": lines, "pairs": pairs}))
    return bench_store.lookup_uids(lines), pairs


def in_process(data_dir: Path, uids: np.ndarray, lookups: int, batches: int) -> dict:
    store = LmdbStore(data_dir / "memberships.lmdb")
    rng = np.random.default_rng(5)
    keys = uids[rng.integers(0, len(uids), lookups)].astype(str).tolist()
    # One untimed pass first: a long-running process has the store's pages mapped already,
    # a fresh one takes a page fault at the first touch of each.
    for key in keys:
        store.user_segments(1, key, NOW)
    times = np.empty(lookups)
    cpu = time.process_time()
    for i, key in enumerate(keys):
        t0 = time.perf_counter()
        store.user_segments(1, key, NOW)
        times[i] = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    # As `bss serve` does once started: long-lived objects out of the collector's full passes.
    gc.freeze()
    batch_times = np.empty(batches)
    batch_cpu = 0.0
    for i in range(batches):
        users = [(1, u) for u in uids[rng.integers(0, len(uids), 1000)].astype(str).tolist()]
        t0, c0 = time.perf_counter(), time.process_time()
        store.users_segments(users, NOW)
        batch_times[i] = time.perf_counter() - t0
        batch_cpu += time.process_time() - c0
    store.close()
    return {
        "lookups_s": lookups / times.sum(),
        "lookups_per_cpu_s": lookups / cpu,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "batch1000_p50_ms": float(np.percentile(batch_times, 50) * 1e3),
        "batch1000_p99_ms": float(np.percentile(batch_times, 99) * 1e3),
        "batch1000_cpu_ms": batch_cpu / batches * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0, help="HTTP seconds per case")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, help="keep the filled data dir here, reuse it")
    parser.add_argument("--fill-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        uids, pairs = fill(data_dir, args.lines)
        if args.fill_only:
            return
        harness.warm_page_cache(data_dir / "memberships.lmdb" / "data.mdb")
        local = in_process(data_dir, uids, args.lookups, args.batches)
        print(f"load average {os.getloadavg()[0]:.1f}")
        print("in process:", {k: round(float(v), 3) for k, v in local.items()})
        proc, url = start_server(data_dir)
        port = int(url.rsplit(":", 1)[1])
        wait_for_sweep(data_dir.parent / "server.log")
        try:
            token = httpx.post(
                f"{url}/auth", json={"auth": {"username": ADMIN, "password": PASSWORD}}
            ).json()["response"]["token"]
            keys = uids[np.random.default_rng(9).integers(0, len(uids), 10_000)].astype(str)
            gets = [get_request(token, f"/user-segments?uid={k}") for k in keys.tolist()]
            body = json.dumps({"users": [{"uid": k} for k in keys[:1000].tolist()]}).encode()
            post = (
                f"POST /user-segments HTTP/1.1\r\nHost: bench\r\nAuthorization: {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            # bench_api's load generator: asyncio on raw sockets, so the figures are the
            # server's, not a threaded client's GIL.
            cases = {
                "GET /health": lambda i: get_request("", "/health"),
                "GET /user-segments": lambda i: gets[i % len(gets)],
                "POST /user-segments (1000 users)": lambda i: post,
            }
            http = measure(port, cases, [args.clients], args.seconds, 2)[args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(
            f"\n{pairs:,} pairs, {args.clients} concurrent clients; p99 ratios to /health; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print("| request | req/s | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|")
        health = http["GET /health"]
        for name, r in http.items():
            ratio = "" if r is health else f" ({r['p99_ms'] / health['p99_ms']:.1f}x)"
            print(
                f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}{ratio} |"
                f" {r['errors']} |"
            )
        get = http["GET /user-segments"]
        print("\nissue 7 targets (meaningful on a quiet machine):")
        for label, met in (
            (f"in process >= 100k lookups/s: {local['lookups_s']:,.0f}", local["lookups_s"] >= 1e5),
            (f"in process p99 <= 1 ms: {local['p99_ms']:.3f} ms", local["p99_ms"] <= 1),
            (
                f"batch of 1000 users <= 20 ms: p99 {local['batch1000_p99_ms']:.1f} ms",
                local["batch1000_p99_ms"] <= 20,
            ),
            (
                f"GET /user-segments p99 <= 10 ms at {args.clients} clients: "
                f"{get['p99_ms']:.2f} ms",
                get["p99_ms"] <= 10,
            ),
        ):
            print(f"  {'met  ' if met else 'UNMET'} {label}")


if __name__ == "__main__":
    main()
