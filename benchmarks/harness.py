"""What the HTTP benchmarks share: a real `bss serve` on a free loopback port, and percentiles.

The benchmarks run as scripts (`python benchmarks/bench_x.py`), so this file is imported by
name from the script's own folder.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ADMIN, PASSWORD = "bench-admin", "bench-password-1"


def warm_page_cache(path: Path) -> None:
    """Read a store file once, so that lookups find its pages in the page cache as a
    running service's traffic keeps them. On a shared machine other work evicts them, and
    some machines page out what no one touched for a minute (a proactive reclaim such as
    DAMON's): a store built and then left idle is read back from disk."""
    started = time.perf_counter()
    with path.open("rb", buffering=0) as fh:
        while fh.read(64 << 20):
            pass
    took = time.perf_counter() - started
    print(f"page cache warmed: {path.stat().st_size / 1e9:.1f} GB read in {took:.0f} s")


def major_faults() -> int:
    """This process's page faults that needed a disk read, so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    data_dir: Path, settings: Mapping[str, str], *, wait_seconds: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """`bss serve` on `data_dir` with the bench admin and the given BSS_* settings; returns
    once /health answers. Its output goes to server.log beside the data dir (read it when a
    request fails)."""
    port = free_port()
    env = {**os.environ, "BSS_ADMIN_USERNAME": ADMIN, "BSS_ADMIN_PASSWORD": PASSWORD, **settings}
    bss = Path(sys.executable).with_name("bss")
    log = (data_dir.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(bss), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"bss serve did not come up; see {log.name}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
