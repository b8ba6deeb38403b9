"""Scale-out figures on the test topology, all started here on loopback: a Redis Cluster
(3 masters + 3 replicas), a throwaway PostgreSQL database, a moto S3 server, one API-only
`bss serve` and 1 then 2 `bss worker` processes; the embedded default (`bss serve` with LMDB)
runs the same files in the same run as the baseline.

Prints, with ratios:
  - redis-benchmark -P 64 -t hset against one master (the Redis ceiling on this machine);
  - the Redis store's own apply rate (seq rule, counts, indexes, WAIT), one writer thread,
    for a first load and for a rewrite with newer seqs, with CPU per pair by process role;
  - end-to-end pairs/s (upload to completed) with 1 and 2 workers, and embedded;
  - GET /user-segments p50/p99 over HTTP against the cluster-backed API and the embedded one;
  - Redis memory per membership (used_memory of the masters, before/after);
  - the load average at start and end (the machine may be shared: compare within a run).

    .venv/bin/python benchmarks/bench_cluster.py --lines 100000 --files 4
    .venv/bin/python benchmarks/bench_cluster.py --store-only   # the first two only, ~20 s
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster_util import RedisClusterProcs  # noqa: E402
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc  # noqa: E402
from passive_util import MotoServer  # noqa: E402

from bss.store import APPLY_SCHEMA, open_store  # noqa: E402

PG_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MEMBER = 700
SEGMENTS = 20


def make_file(seed: int, lines: int, segs: list[int]) -> tuple[bytes, int]:
    """Legacy lines of 1-6 segments each (3.5 on average); returns (content, pairs)."""
    rng = random.Random(seed)
    out, pairs = [], 0
    for i in range(lines):
        uid = 7_000_000_000_000_000 + seed * 10_000_000 + i
        chosen = rng.sample(segs, rng.randint(1, 6))
        pairs += len(chosen)
        out.append(f"{uid}," + ";".join(f"{s}:{rng.choice((0, 1440, 43200))}" for s in chosen))
    return ("\n".join(out) + "\n").encode(), pairs


def redis_benchmark(port: int) -> float:
    done = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-P", "64", "-t", "hset", "-n", "2000000", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(re.findall(r"HSET: ([\d.]+) requests per second", done.stdout)[-1])


def store_apply_rate(cluster: RedisClusterProcs, pairs: int) -> dict[str, float]:
    """RedisStore.apply on engine-sized batches (seq rule, counts, indexes, WAIT 1): pairs/s
    of a first load and of a rewrite of the same pairs with newer seqs (a daily refresh);
    CPU microseconds per pair of this process, the masters and the replicas; bytes of
    master memory per membership."""
    store = open_store(cluster.url)
    masters = store._masters()  # type: ignore[attr-defined]
    nodes = [redis.Redis(port=n.port) for n in cluster.nodes]
    before = sum(m.info("memory")["used_memory"] for m in masters)
    batch_rows = 240_000  # about what one 4 MiB chunk of a legacy file holds
    now = int(time.time())
    out: dict[str, float] = {}
    for label, seq_base in (("first", 1 << 50), ("rewrite", 1 << 51)):
        elapsed, cpu = 0.0, 0.0
        masters_now = [n.info("replication")["role"] == "master" for n in nodes]
        server_cpu = [_cpu(n) for n in nodes]
        for start in range(0, pairs, batch_rows):
            table = _store_batch(start, min(batch_rows, pairs - start), now, seq_base)
            t, c = time.perf_counter(), time.process_time()
            store.apply(table)
            elapsed += time.perf_counter() - t
            cpu += time.process_time() - c
        spent = [_cpu(n) - c0 for n, c0 in zip(nodes, server_cpu, strict=True)]
        out[f"{label}_rate"] = pairs / elapsed
        out[f"{label}_py_us"] = cpu / pairs * 1e6
        for role in ("master", "replica"):
            total = sum(
                x for x, m in zip(spent, masters_now, strict=True) if m == (role == "master")
            )
            out[f"{label}_{role}_us"] = total / pairs * 1e6
        if label == "first":
            after = sum(m.info("memory")["used_memory"] for m in masters)
            out["bytes_per_membership"] = (after - before) / pairs
    store.close()
    return out


def _cpu(node: redis.Redis) -> float:
    info = node.info("cpu")
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def _store_batch(start: int, n: int, now: int, seq_base: int) -> pa.Table:
    """Users in 3 segments each (of 50), expiring over a day 30 days on."""
    idx = np.arange(start, start + n)
    users = idx // 3
    return pa.table(
        {
            "user_kind": np.ones(n, dtype=np.uint8),
            "user_key": pa.array((users + 9_000_000_000_000_000).astype(str)),
            "segment_id": (idx % 3 + 1 + users % 50).astype(np.int64),
            "value": pa.nulls(n, pa.int64()),
            "timestamp": np.full(n, now, dtype=np.int64),
            "expires_at": np.full(n, now + 30 * 86400, dtype=np.int64) + users % 86400,
            "removed": np.zeros(n, dtype=bool),
            "seq": (idx + seq_base).astype(np.int64),
        },
        schema=APPLY_SCHEMA,
    )


def run_jobs(api: Api, files: list[tuple[bytes, int]]) -> float:
    """Upload every file, then time until all are completed: pairs/s end to end."""
    jobs = []
    started = time.perf_counter()
    for content, _ in files:
        job = api.new_job(MEMBER)
        assert api.upload(job, content)["status"] == "OK"
        jobs.append(job)
    for job in jobs:
        done = api.wait(MEMBER, job["job_id"], timeout=3600)
        assert done["phase"] == "completed", done
    elapsed = time.perf_counter() - started
    return sum(p for _, p in files) / elapsed


def lookups(api: Api, uids: list[int], n: int) -> tuple[float, float]:
    times = []
    for uid in random.Random(1).choices(uids, k=n):
        t = time.perf_counter()
        resp = api.raw("GET", "/user-segments", params={"uid": uid, "member_id": MEMBER})
        times.append((time.perf_counter() - t) * 1000)
        assert resp.status_code == 200
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def set_up(api: Api) -> list[int]:
    api.member(MEMBER)
    return [api.segment(MEMBER, f"s{i}")["id"] for i in range(SEGMENTS)]


def store_figures(cluster: RedisClusterProcs, pairs: int) -> None:
    """redis-benchmark before and after RedisStore.apply, with the ratios."""
    port = cluster.master_of("myhash").port  # the key redis-benchmark writes
    hset_before = redis_benchmark(port)
    st = store_apply_rate(cluster, pairs)
    hset = (hset_before + redis_benchmark(port)) / 2
    print(
        f"redis-benchmark -P 64 -t hset, one master: {hset:,.0f} ops/s (mean of before and after)"
    )
    for label, name in (("first", "first load"), ("rewrite", "rewrite, newer seqs")):
        rate = st[f"{label}_rate"]
        print(
            f"RedisStore.apply, {name} (seq rule, counts, indexes, WAIT 1), one writer: "
            f"{rate:,.0f} pairs/s = {rate / hset:.2f} x redis-benchmark hset (goal >= 0.33)"
        )
        print(
            f"  CPU us per pair: writer {st[f'{label}_py_us']:.2f}, masters "
            f"{st[f'{label}_master_us']:.2f}, replicas {st[f'{label}_replica_us']:.2f}"
        )
    print(
        f"Redis memory per membership (masters' used_memory): {st['bytes_per_membership']:.0f} bytes"
    )


def store_only(pairs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = RedisClusterProcs(root / "redis").start()
    try:
        print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)")
        store_figures(cluster, pairs)
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="lines per file")
    parser.add_argument("--files", type=int, default=4, help="files per run")
    parser.add_argument("--store-pairs", type=int, default=960_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument(
        "--store-only",
        action="store_true",
        help="only redis-benchmark and RedisStore.apply (no PostgreSQL, S3, API or workers)",
    )
    args = parser.parse_args()
    if args.store_only:
        store_only(args.store_pairs)
        return

    import logging

    import boto3
    import psycopg

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    os.environ.update(AWS)
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = RedisClusterProcs(root / "redis").start()
    moto = MotoServer()
    db = f"bss_bench_{uuid.uuid4().hex[:10]}"
    admin_conn = psycopg.connect(PG_DSN, autocommit=True)
    admin_conn.execute(f'CREATE DATABASE "{db}"')
    pg_url = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{db}"
    procs: list = []
    try:
        print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)")
        store_figures(cluster, args.store_pairs)
        for m in cluster.nodes[:3]:
            m.cli("flushall")

        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="bench")
        shared = {
            "database_url": pg_url,
            "store_url": cluster.url,
            "files_url": "s3://bench/bss",
            "s3_endpoint_url": moto.url,
            "workers": 0,
            "requests_per_minute": 10_000_000,
        }
        api_proc = ServerProc(root / "api", shared)
        api_proc.env.update(AWS)
        procs.append(api_proc.start())
        api = Api(api_proc.url, ADMIN_USER, ADMIN_PASSWORD)
        segs = set_up(api)
        files = [make_file(i, args.lines, segs) for i in range(args.files * 2 + 1)]
        print(f"files: {args.files} x {args.lines} lines, {files[0][1]:,} pairs each (about)")

        results = {}
        for n_workers, batch in ((1, files[: args.files]), (2, files[args.files : 2 * args.files])):
            workers = [
                subprocess.Popen(
                    [str(BSS), "worker", "--data-dir", str(root / f"w{n_workers}-{i}")],
                    env={**api_proc.env, "BSS_WORKERS": "1"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(n_workers)
            ]
            try:
                results[n_workers] = run_jobs(api, batch)
            finally:
                for w in workers:
                    w.terminate()
                    w.wait()
            print(f"cluster, {n_workers} worker(s): {results[n_workers]:,.0f} pairs/s end to end")
        print(f"2 workers / 1 worker: {results[2] / results[1]:.2f}")

        embedded = ServerProc(root / "embedded", {"workers": 1, "requests_per_minute": 10_000_000})
        procs.append(embedded.start())
        eapi = Api(embedded.url, ADMIN_USER, ADMIN_PASSWORD)
        set_up(eapi)
        emb = run_jobs(eapi, files[: args.files])
        print(f"embedded (LMDB), 1 worker thread: {emb:,.0f} pairs/s end to end")
        print(f"cluster 1 worker / embedded: {results[1] / emb:.2f}")

        uids = [7_000_000_000_000_000 + i for i in range(args.lines)]
        p50, p99 = lookups(api, uids, args.lookups)
        e50, e99 = lookups(eapi, uids, args.lookups)
        print(f"GET /user-segments, cluster: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        print(f"GET /user-segments, embedded: p50 {e50:.2f} ms, p99 {e99:.2f} ms")
        print(f"cluster / embedded: p50 {p50 / e50:.2f}, p99 {p99 / e99:.2f}")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        for proc in procs:
            proc.stop()
        moto.stop()
        cluster.stop()
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin_conn.close()


if __name__ == "__main__":
    main()
