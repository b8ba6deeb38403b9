"""Real-time segment API benchmark against a real `bss serve` (started here on a temp data dir).

Measures, with a baseline taken in the same run on the same machine:

* users/s through POST /rt-segment: posts of 1000 users (3 SEG blocks each) from 16
  concurrent clients, with the per-member real-time limits raised for the run;
* baseline: the same posts, same clients, but each body refused after it is read and parsed
  (`"rt_segment"` given as an object: HTTP 400) -- the floor of HTTP, token check and JSON
  parsing that any post pays; the ratio says what checking and applying add;
* time from response to lookup: after each post's answer, a GET /user-segments for one of
  its users; the membership must be there on that first lookup (it is visible when the answer
  is sent), and the time from the answer to the lookup's answer is reported.

    .venv/bin/python benchmarks/bench_realtime.py [--posts 200] [--clients 16] [--users 1000]
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import ADMIN, PASSWORD, percentile, start_server

MEMBER = 700
SETTINGS = {
    "BSS_REQUESTS_PER_MINUTE": "100000000",
    # the documented real-time limits, raised for the run
    "BSS_RT_POSTS_PER_SECOND": "100000000",
    "BSS_RT_USERS_PER_SECOND": "100000000",
    "BSS_WORKERS": "0",
}


def bodies(
    posts: int, users: int, segments: list[int], *, first_user: int, refused: bool = False
) -> list[bytes]:
    out = []
    for n in range(posts):
        entries = [
            {
                "user_id": str(first_user + n * users + i),
                "seg_block": [
                    {"seg_id": segments[(i + k) % len(segments)], "value": k, "expiration": 1440}
                    for k in range(3)
                ],
            }
            for i in range(users)
        ]
        out.append(json.dumps({"rt_segment": {} if refused else entries}).encode())
    return out


def run(url: str, token: str, payloads: list[bytes], clients: int, lookups: bool) -> dict:
    latencies: list[float] = []
    visible_after: list[float] = []
    misses = 0
    lock = threading.Lock()
    queue = list(reversed(payloads))
    statuses: set[int] = set()

    def client() -> None:
        nonlocal misses
        with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=120) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                t0 = time.perf_counter()
                resp = http.post("/rt-segment", content=body)
                t1 = time.perf_counter()
                with lock:
                    latencies.append(t1 - t0)
                    statuses.add(resp.status_code)
                if lookups:
                    uid = json.loads(body)["rt_segment"][-1]["user_id"]
                    found = http.get("/user-segments", params={"uid": uid}).json()["response"]
                    t2 = time.perf_counter()
                    with lock:
                        visible_after.append(t2 - t1)
                        if found.get("count", 0) != 3:
                            misses += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "seconds": time.perf_counter() - started,
        "latencies": latencies,
        "visible_after": visible_after,
        "misses": misses,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "data", SETTINGS)
        try:
            http = httpx.Client(base_url=url, timeout=60)
            auth = {"auth": {"username": ADMIN, "password": PASSWORD}}
            token = http.post("/auth", json=auth).json()["response"]["token"]
            h = {"Authorization": token}
            http.post("/member", json={"member": {"id": MEMBER, "name": "bench"}}, headers=h)
            segments = [
                http.post(
                    "/segment",
                    params={"member_id": MEMBER},
                    json={"segment": {"code": f"s{i}"}},
                    headers=h,
                ).json()["response"]["segment"]["id"]
                for i in range(10)
            ]
            # a member login, so that posts need no member_id and lookups are its own
            http.post(
                "/user",
                json={
                    "user": {
                        "username": "bench-member",
                        "password": PASSWORD,
                        "user_type": "member",
                        "member_id": MEMBER,
                    }
                },
                headers=h,
            )
            member_auth = {"auth": {"username": "bench-member", "password": PASSWORD}}
            token = http.post("/auth", json=member_auth).json()["response"]["token"]

            warm = bodies(args.clients, args.users, segments, first_user=10**12)
            run(url, token, warm, args.clients, lookups=False)  # warm up (first store writes)
            floor_bodies = bodies(
                args.posts, args.users, segments, first_user=2 * 10**12, refused=True
            )
            floor = run(url, token, floor_bodies, args.clients, lookups=False)
            real_bodies = bodies(args.posts, args.users, segments, first_user=3 * 10**12)
            real = run(url, token, real_bodies, args.clients, lookups=False)
            seen_bodies = bodies(
                max(args.clients, args.posts // 4), args.users, segments, first_user=4 * 10**12
            )
            seen = run(url, token, seen_bodies, args.clients, lookups=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    users = args.posts * args.users
    posted = users / real["seconds"]
    floor_rate = users / floor["seconds"]
    print(
        f"POST /rt-segment: {args.posts} posts x {args.users} users x 3 segments, "
        f"{args.clients} clients (statuses {sorted(real['statuses'])})"
    )
    print(
        f"  applied: {posted:,.0f} users/s ({3 * posted:,.0f} pairs/s); post latency "
        f"p50 {percentile(real['latencies'], 50) * 1000:.0f} ms, "
        f"p99 {percentile(real['latencies'], 99) * 1000:.0f} ms"
    )
    print(
        f"  baseline (read + parse + refuse, statuses {sorted(floor['statuses'])}): "
        f"{floor_rate:,.0f} users/s; p50 {percentile(floor['latencies'], 50) * 1000:.0f} ms"
    )
    print(f"  ratio applied/baseline time: {floor_rate / posted:.2f}")
    print(
        f"  response -> lookup: the first lookup found the user in "
        f"{len(seen['visible_after']) - seen['misses']}/{len(seen['visible_after'])} posts "
        f"(a second run, each post followed by a lookup); answer-to-lookup-answer "
        f"p50 {percentile(seen['visible_after'], 50) * 1000:.1f} ms, "
        f"p99 {percentile(seen['visible_after'], 99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
