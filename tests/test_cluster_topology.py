"""The scale-out topology, all real, on loopback: a Redis Cluster (3 masters + 3 replicas),
the local PostgreSQL (a throwaway database), a moto S3 server, 2 API-only `bss serve`
processes and 2 `bss worker` processes, each with a data dir of its own (separate hosts).

The same members, segments and files also go through a default embedded `bss serve`; every
job's counters and every user's memberships must come out the same on both. Faults: a worker
and a Redis master are killed with SIGKILL in the middle of a job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_util import RedisClusterProcs, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc
from passive_util import MotoServer

from bss.formats.records import UserKind
from bss.ingest.result import COUNTER_NAMES
from bss.store import MembershipStore, open_store

psycopg = pytest.importorskip("psycopg")
pytestmark = needs_redis
ADMIN_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BUCKET = "bss-files"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MEMBERS = list(range(801, 811))
UID_BASE = 10**15


class WorkerProc:
    """One `bss worker` subprocess (a host of its own: its own data dir)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, env
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProc:
        """Start the worker and wait until it says it started: a test that kills a Redis
        master right after restarting a worker must not do so while the worker still
        checks the store at start-up (it would stop there, as it does on an unreachable
        store, and leave no survivor to take a job over)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BSS), "worker", "--data-dir", str(self.data_dir)],
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        pid = f":{self.proc.pid}:"  # the worker's id is host:pid:...
        deadline = time.monotonic() + timeout
        while not any(
            '"worker started"' in line and pid in line
            for line in self.log_path.read_text(errors="replace").splitlines()
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise AssertionError(f"worker did not start (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.1)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Topology:
    cluster: RedisClusterProcs
    pg_url: str
    apis: list[ServerProc]
    workers: list[WorkerProc]
    reference: ServerProc
    store: MembershipStore

    def api(self, i: int) -> Api:
        return Api(self.apis[i % 2].url, ADMIN_USER, ADMIN_PASSWORD)

    def claimed_by(self, job_pk: int) -> str | None:
        dsn = self.pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT claimed_by FROM jobs WHERE id = %s", (job_pk,)).fetchone()
        return row[0] if row else None


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    name = f"bss_cluster_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + f"/{name}"
        )
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    import boto3

    root = tmp_path_factory.mktemp("topology")
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(_pg_database())
        cluster = RedisClusterProcs(root / "redis").start()
        stack.callback(cluster.stop)
        moto = MotoServer()
        stack.callback(moto.stop)
        os.environ.update(AWS_ENV)  # for the test's own boto3 and store clients
        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=BUCKET)
        shared = {
            "database_url": pg_url,
            "store_url": cluster.url,
            "files_url": f"s3://{BUCKET}/bss",
            "s3_endpoint_url": moto.url,
            "job_lease_seconds": 6,
            "chunk_bytes": 32768,
        }
        apis = [ServerProc(root / name, {**shared, "workers": 0}) for name in ("api-a", "api-b")]
        reference = ServerProc(root / "embedded", {"chunk_bytes": 32768, "workers": 2})
        for proc in [*apis, reference]:
            proc.env.update(AWS_ENV)
            stack.callback(proc.stop)
        for proc in [*apis, reference]:
            proc.start()
        workers = []
        for name in ("worker-a", "worker-b"):
            env = {**apis[0].env, "BSS_WORKERS": "1"}
            worker = WorkerProc(root / name, env).start()
            workers.append(worker)
            stack.callback(worker.stop)
        store = open_store(cluster.url)
        stack.callback(store.close)
        topology = Topology(cluster, pg_url, apis, workers, reference, store)
        _set_up_members(topology)
        yield topology


def _set_up_members(topo: Topology) -> None:
    """The same members and segments, created in the same order (so with the same ids), on
    the cluster and on the embedded reference."""
    for url in (topo.apis[0].url, topo.reference.url):
        admin = Api(url, ADMIN_USER, ADMIN_PASSWORD)
        for member_id in [*MEMBERS, 900]:
            admin.member(member_id)
            for code in ("a", "b", "c"):
                admin.segment(member_id, f"{member_id}-{code}", expire_minutes=600)


def segment_ids(api: Api, member_id: int) -> list[int]:
    body = api.ok("GET", "/segment", params={"member_id": member_id})
    return sorted(s["id"] for s in body["segments"])


def member_file(member_id: int, segs: list[int], lines: int) -> tuple[bytes, list[int]]:
    """Adds, removals (after ^), repeated users and invalid lines; returns (file, users)."""
    a, b, c = segs
    out, users = [], []
    for i in range(lines):
        uid = UID_BASE + member_id * 100_000 + i
        if i % 10 == 1:
            out.append(f"not-a-uid,{a}:0")
            continue
        if i % 10 == 2:
            uid -= 2  # the user of two lines above again: remove what it got there
            out.append(f"{uid},{b}:30^{a}")
        elif i % 10 == 0:
            out.append(f"{uid},{a}:0;{b}:1440^{c}")
        else:
            out.append(f"{uid},{a}:0;{c}:{60 * (i % 5 + 1)}")
        users.append(uid)
    return ("\n".join(out) + "\n").encode(), sorted(set(users))


def reference_job(topo: Topology, member_id: int, content: bytes) -> dict[str, Any]:
    return Api(topo.reference.url, ADMIN_USER, ADMIN_PASSWORD).run(member_id, content)


def memberships(store: MembershipStore, users: list[int]) -> list[list[tuple[int, Any, int]]]:
    """Per user: (segment, value, lifetime). Start and expiry times differ between two runs
    by the time each ran; the lifetime does not."""
    now = int(time.time())
    return [
        [(m.segment_id, m.value, m.expires_at - m.timestamp) for m in found]
        for found in store.users_segments([(int(UserKind.ANID), str(u)) for u in users], now)
    ]


def reference_memberships(topo: Topology, users: list[int]) -> list[list[tuple[int, Any, int]]]:
    api = Api(topo.reference.url, ADMIN_USER, ADMIN_PASSWORD)
    out = []
    for uid in users:
        found = api.ok("GET", "/user-segments", params={"uid": uid})["segments"]
        out.append(
            [
                (s["id"], s["value"], _ts(s["expiry"]) - _ts(s["timestamp"]))
                for s in sorted(found, key=lambda s: s["id"])
            ]
        )
    return out


def _ts(text: str) -> int:
    from bss.db import parse_ts

    return parse_ts(text)


def assert_counts_equal(topo: Topology, member_id: int) -> None:
    """Every segment's exact member count (kept by the store, no scan) equals the reference."""
    ref = Api(topo.reference.url, ADMIN_USER, ADMIN_PASSWORD)
    body = ref.ok("GET", "/segment", params={"member_id": member_id})
    expected = {s["id"]: s["member_count"] or 0 for s in body["segments"]}
    counts = topo.store.segment_member_counts(int(time.time()))
    assert {seg: counts.get(seg, 0) for seg in expected} == expected
    assert sum(expected.values()) > 0


def counters(job: dict[str, Any]) -> dict[str, Any]:
    return {name: job[name] for name in (*COUNTER_NAMES, "error_log_lines", "segment_log_lines")}


def wait_job(api: Api, member_id: int, job_id: str, timeout: float = 240) -> dict[str, Any]:
    return api.wait(member_id, job_id, timeout=timeout)


# --- the tests -------------------------------------------------------------------------------


def test_ten_members_upload_at_once_through_both_apis(topo: Topology) -> None:
    files = {}
    for m in MEMBERS:
        files[m] = member_file(m, segment_ids(topo.api(0), m), 200)
    jobs: dict[int, dict[str, Any]] = {}
    start = threading.Barrier(len(MEMBERS))
    errors: list[BaseException] = []
    with ThreadPoolExecutor(4) as pool:  # the reference runs meanwhile
        references = {m: pool.submit(reference_job, topo, m, files[m][0]) for m in MEMBERS}
        _upload_all(topo, files, jobs, start, errors)

    for i, m in enumerate(MEMBERS):
        # Each job is read back, and its error report served, by the API it was NOT sent to.
        other = topo.api(i + 1)
        done = wait_job(other, m, jobs[m]["job_id"])
        expected = references[m].result()
        assert done["phase"] == expected["phase"] == "completed"
        assert counters(done) == counters(expected)
        report = other.raw("GET", "/batch-segment/error-report", params={"job_id": done["job_id"]})
        assert report.status_code == 200
        assert report.text.count("not-a-uid") == 20
        users = files[m][1][::3]  # a third of the users, looked up one by one over HTTP
        assert memberships(topo.store, users) == reference_memberships(topo, users)
        assert_counts_equal(topo, m)
    # uploads and reports live in S3, not on the API hosts
    for api in topo.apis:
        assert not list((api.data_dir / "uploads").glob("*"))


def _upload_all(
    topo: Topology,
    files: dict[int, tuple[bytes, list[int]]],
    jobs: dict[int, dict[str, Any]],
    start: threading.Barrier,
    errors: list[BaseException],
) -> None:
    """Ten members upload at the same moment, alternating between the two APIs."""

    def upload(i: int, member_id: int) -> None:
        try:
            api = topo.api(i)
            job = api.new_job(member_id)
            start.wait()
            body = api.upload(job, files[member_id][0])
            assert body["status"] == "OK", body
            jobs[member_id] = job
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i, m)) for i, m in enumerate(MEMBERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _big_job(topo: Topology, api: Api, member_id: int, lines: int) -> tuple[dict, bytes, list[int]]:
    content, users = member_file(member_id, segment_ids(api, member_id), lines)
    job = api.new_job(member_id)
    assert api.upload(job, content)["status"] == "OK"
    return job, content, users


def _wait_mid_job(api: Api, member_id: int, job_id: str) -> dict[str, Any]:
    """Until the job is being processed and has applied some of its file."""
    deadline = time.monotonic() + 120
    while True:
        job = api.job(member_id, job_id)
        if job["phase"] == "processing" or (job["percent_complete"] or 0) > 0:
            return job
        assert job["phase"] not in ("completed", "error"), "the job ended before the fault"
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_worker_killed_mid_job_is_taken_over(topo: Topology) -> None:
    api = topo.api(0)
    job, content, users = _big_job(topo, api, 900, 15_000)
    _wait_mid_job(api, 900, job["job_id"])
    owner = topo.claimed_by(job["id"])
    assert owner is not None
    pid = int(owner.split(":")[1])
    victim = next(w for w in topo.workers if w.proc is not None and w.proc.pid == pid)
    victim.kill9()
    try:
        done = wait_job(topo.api(1), 900, job["job_id"])
    finally:
        victim.start()
    expected = reference_job(topo, 900, content)
    assert done["phase"] == "completed"
    assert counters(done) == counters(expected)
    assert topo.claimed_by(job["id"]) != owner  # finished by the other worker
    users = users[::40]
    assert memberships(topo.store, users) == reference_memberships(topo, users)
    assert_counts_equal(topo, 900)


def test_redis_master_killed_mid_job(topo: Topology) -> None:
    api = topo.api(1)
    member_id = MEMBERS[0]
    job, content, users = _big_job(topo, api, member_id, 15_000)
    _wait_mid_job(api, member_id, job["job_id"])
    victim = topo.cluster.master_of("{1}")
    victim.kill9()
    try:
        topo.cluster.wait_ok(timeout=60)  # the replica has been promoted
    finally:
        victim.start()  # rejoins (nodes.conf) as the new master's replica, empty, and syncs
    topo.cluster.wait_ok(timeout=60)
    done = wait_job(api, member_id, job["job_id"])
    expected = reference_job(topo, member_id, content)
    assert done["phase"] == "completed"
    assert counters(done) == counters(expected)
    users = users[::40]
    assert memberships(topo.store, users) == reference_memberships(topo, users)
    assert_counts_equal(topo, member_id)


def test_metrics_and_health_on_every_api(topo: Topology) -> None:
    for proc in topo.apis:
        assert httpx.get(f"{proc.url}/health").status_code == 200


def _job_row(topo: Topology, job_pk: int) -> dict[str, Any]:
    dsn = topo.pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT attempts, failures, lost_leases, written_without_replica FROM jobs "
            "WHERE id = %s",
            (job_pk,),
        )
        names = [d.name for d in cur.description or ()]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def test_master_and_worker_killed_mid_job_dead_node_stays_dead(topo: Topology) -> None:
    """The failover the hardening issue found: a master AND the worker holding the job are
    killed mid-job and the dead master is not brought back, so its promoted replica has no
    replica of its own. With the default BSS_STORE_WAIT_REPLICAS=attached the other worker
    takes the job over and completes it with exact counters; no failure is counted against
    the job. (Runs last: the cluster stays degraded.)"""
    api = topo.api(0)
    member_id = MEMBERS[1]
    job, content, users = _big_job(topo, api, member_id, 15_000)
    _wait_mid_job(api, member_id, job["job_id"])
    owner = topo.claimed_by(job["id"])
    assert owner is not None
    pid = int(owner.split(":")[1])
    worker = next(w for w in topo.workers if w.proc is not None and w.proc.pid == pid)
    master = topo.cluster.master_of("{1}")
    master.kill9()
    worker.kill9()
    try:
        topo.cluster.wait_ok(timeout=60)  # the replica is promoted; the dead node stays dead
        done = wait_job(topo.api(1), member_id, job["job_id"], timeout=300)
    finally:
        worker.start()
    expected = reference_job(topo, member_id, content)
    assert done["phase"] == "completed", done
    assert counters(done) == counters(expected)
    assert done["num_valid"] > 0
    assert done["waiting_reason"] is None
    # The other worker's replay wrote to the promoted master, which has no replica.
    assert done["written_without_replica"] is True
    row = _job_row(topo, job["id"])
    assert row["failures"] == 0 and row["attempts"] >= 2
    assert topo.claimed_by(job["id"]) != owner
    users = users[::40]
    assert memberships(topo.store, users) == reference_memberships(topo, users)
    assert_counts_equal(topo, member_id)
    survivor = next(w for w in topo.workers if w is not worker)
    assert "has no replica attached" in survivor.log_path.read_text(errors="replace")
