"""Dashboard benchmark against a real `bss serve` on a temp data dir holding N finished jobs.

Measures, with the baseline taken in the same run on the same machine:

* server time to render the job history with 100 and with 1000 jobs on the page (the page's
  own Server-Timing header: query + template), and the wall time of the same request,
  against the JSON API listing the same jobs (GET /batch-segment, 100 per request);
* page weight: bytes of HTML + JS + CSS each page loads (uncompressed).

    .venv/bin/python benchmarks/bench_dashboard.py [--jobs 5000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from harness import ADMIN, PASSWORD, start_server
from sqlalchemy import insert

from bss.db import init_db, make_engine
from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import jobs
from bss.jobs.service import new_job_id

MEMBER = 958
SETTINGS = {"BSS_REQUESTS_PER_MINUTE": "100000000", "BSS_WORKERS": "0"}


def seed(data_dir: Path, count: int) -> None:
    """`count` finished jobs of one member, with counters and logs like real ones."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(f"sqlite:///{data_dir / 'bss.db'}")
    init_db(db)
    now = int(time.time())
    rows = []
    for i in range(count):
        at = now - (count - i) * 60
        counters = {name: (i * 7 + k) % 50 for k, name in enumerate(COUNTER_NAMES)}
        counters["num_valid"] = 10_000 + i
        rows.append(
            {
                "job_id": new_job_id(),
                "member_id": MEMBER,
                "phase": "error" if i % 17 == 0 else "completed",
                "upload_source": ("api", "s3", "folder")[i % 3],
                "created_on": at,
                "last_modified": at + 30,
                "start_time": at,
                "uploaded_time": at + 5,
                "validated_time": at + 10,
                "completed_time": at + 30,
                "time_to_process": "12.34",
                "percent_complete": 100,
                "error_log_lines": "\n".join(f"num_invalid_format-bad line {n}" for n in range(20)),
                "segment_log_lines": "added:\n1:500\n2:300\nremoved:\n3:20",
                **counters,
            }
        )
    with db.begin() as conn:
        conn.execute(insert(jobs), rows)
        conn.exec_driver_sql(
            "INSERT INTO members (id, name, state, created_on, last_modified) "
            f"VALUES ({MEMBER}, 'bench', 'active', {now}, {now})"
        )
    db.dispose()


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float, float, int]:
    """Medians of server render ms and its CPU ms (Server-Timing) and of the client's wall
    ms, and the body size."""
    server, cpu, wall, size = [], [], [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        resp = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
        size = len(resp.content)
        timing = resp.headers.get("server-timing", "")
        server.append(float(re.search(r"render;dur=([\d.]+)", timing).group(1)))  # type: ignore[union-attr]
        cpu.append(float(re.search(r"cpu;dur=([\d.]+)", timing).group(1)))  # type: ignore[union-attr]
    return statistics.median(server), statistics.median(cpu), statistics.median(wall), size


def json_listing(client: httpx.Client, count: int, repeat: int) -> float:
    """Median wall ms to list `count` jobs through the JSON API, 100 per request."""
    wall = []
    for _ in range(repeat):
        started = time.perf_counter()
        for start in range(0, count, 100):
            client.get(
                "/batch-segment",
                params={"member_id": MEMBER, "start_element": start, "num_elements": 100},
            ).raise_for_status()
        wall.append((time.perf_counter() - started) * 1000)
    return statistics.median(wall)


def page_weight(client: httpx.Client, path: str) -> tuple[int, int, int]:
    """Bytes of (HTML, JS, CSS) the page loads: its module, the modules it imports, CSS."""
    html = client.get(path).text
    js = css = 0
    seen: set[str] = set()
    todo = re.findall(r'<script[^>]+src="([^"]+)"', html)
    while todo:
        src = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        body = client.get(src).text
        js += len(body.encode())
        base = src.rsplit("/", 1)[0]
        todo += [f"{base}/{name}" for name in re.findall(r'from "\./([^"]+)"', body)]
    for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', html):
        css += len(client.get(href).content)
    return len(html.encode()), js, css


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        seed(data_dir, args.jobs)
        proc, url = start_server(data_dir, SETTINGS)
        try:
            client = httpx.Client(base_url=url, timeout=60)
            token = client.post(
                "/auth", json={"auth": {"username": ADMIN, "password": PASSWORD}}
            ).json()["response"]["token"]
            client.cookies.set("bss_token", token)
            client.get(f"/?member_id={MEMBER}")  # warm up templates and connections
            print(f"{args.jobs} jobs in the history; medians of {args.repeat} requests")
            print(
                f"{'page size':>10} {'render ms':>10} {'CPU ms':>7} {'wall ms':>8} "
                f"{'JSON API ms':>12} {'ratio':>6} {'HTML bytes':>11}"
            )
            for size in (100, 1000):
                render, cpu, wall, nbytes = timed(
                    client, f"/?member_id={MEMBER}&per_page={size}", args.repeat
                )
                baseline = json_listing(client, size, args.repeat)
                print(
                    f"{size:>10} {render:>10.1f} {cpu:>7.1f} {wall:>8.1f} {baseline:>12.1f} "
                    f"{wall / baseline:>6.2f} {nbytes:>11,}"
                )
            print("(ratio: page wall time / JSON API wall time for the same jobs, 100 a request)")
            job_id = client.get(
                "/batch-segment", params={"member_id": MEMBER, "num_elements": 1}
            ).json()["response"]["batch_segment_upload_job"][0]["job_id"]
            print("\npage weight (bytes, uncompressed)")
            print(f"{'page':<28} {'HTML':>8} {'JS':>7} {'CSS':>7} {'total':>8}")
            for path in (
                "/ui/login",
                f"/?member_id={MEMBER}&per_page=25",
                f"/ui/jobs/{job_id}",
                "/ui/upload",
                "/ui/segments",
                "/ui/lookup",
                "/ui/charts",
                "/ui/admin",
            ):
                # The login page as a visitor sees it (a session is sent on to the jobs).
                visitor = httpx.Client(base_url=url) if path == "/ui/login" else client
                h, j, c = page_weight(visitor, path)
                print(f"{path[:28]:<28} {h:>8,} {j:>7,} {c:>7,} {h + j + c:>8,}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
