"""The core flow on PostgreSQL (BSS_DATABASE_URL=postgresql+psycopg://...): same code path as SQLite.

Needs the local PostgreSQL (127.0.0.1:5432, trust auth, database `test`, user `postgres`);
a uniquely named database is created for the session and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc, legacy

psycopg = pytest.importorskip("psycopg")
ADMIN_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _database():  # type: ignore[no-untyped-def]
    name = f"bss_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="module")
def pg_url():
    yield from _database()


@pytest.fixture
def fresh_pg_url():
    """A database of its own: no server's workers compete for its jobs."""
    yield from _database()


@pytest.fixture(scope="module")
def pg_server(pg_url, tmp_path_factory):
    proc = ServerProc(
        tmp_path_factory.mktemp("pg") / "data", {"database_url": pg_url, "workers": 2}
    ).start()
    yield proc
    proc.stop()


def test_core_flow_on_postgres(pg_server, pg_url):
    admin = Api(pg_server.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(11)
    seg = admin.segment(11, "pg-seg")
    dup = admin.call(
        "POST", "/segment", params={"member_id": 11}, json={"segment": {"code": "PG-SEG"}}
    )
    assert dup["error_id"] == "SYNTAX"
    admin.config(11, num_error_log_lines=3)
    admin.user("pguser", 11)
    user = Api(pg_server.url, "pguser", "password-123")
    jobs = []
    for n in range(4):
        job = user.new_job(11)
        assert user.upload(job, legacy([f"{100 + n},{seg['id']}:0", "garbage"]))["status"] == "OK"
        jobs.append(job)
    for job in jobs:
        done = user.wait(11, job["job_id"])
        assert (
            done["phase"] == "completed"
            and done["num_valid"] == 1
            and done["num_invalid_format"] == 1
        )
    assert set(user.segments_of(uid=103)) == {seg["id"]}
    page = user.ok("GET", "/batch-segment", params={"sort": "id.asc", "num_elements": 2})
    assert page["count"] == 4 and [j["id"] for j in page["batch_segment_upload_job"]] == [
        j["id"] for j in jobs[:2]
    ]
    # the one-URL rule and the concurrent-upload guard use the same statements on PostgreSQL
    first, second = user.new_job(11), user.new_job(11)
    assert user.job(11, first["job_id"])["error_code"] == "upload_url_replaced"
    assert user.upload(second, b"")["status"] == "OK"
    # the tables really live in PostgreSQL
    sync_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(sync_url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE member_id = 11").fetchone()[0] == 6


def test_queue_claims_are_exclusive_on_postgres(fresh_pg_url, tmp_path):
    """Many workers racing for jobs: every job is claimed exactly once (FOR UPDATE SKIP LOCKED)."""
    import threading

    from bss.db import init_db, make_engine
    from bss.jobs.service import JobService
    from bss.settings import Settings

    engine = make_engine(fresh_pg_url)
    init_db(engine)
    svc = JobService(engine, Settings(data_dir=tmp_path, database_url=fresh_pg_url))
    created = set()
    for i in range(30):
        src = tmp_path / f"f{i}"
        src.write_bytes(b"1,1:0\n")
        created.add(svc.submit_file(12, src, upload_source="folder", source_key=f"k{i}")["id"])
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            row = svc.claim_next(name)
            if row is None:
                return
            with lock:
                claimed.append(row["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(created)  # each exactly once
    engine.dispose()


def test_one_unused_url_under_concurrent_creates_on_postgres(fresh_pg_url, tmp_path):
    import threading

    from bss.accounts.service import create_member
    from bss.db import init_db, make_engine
    from bss.jobs.service import JobService
    from bss.settings import Settings

    engine = make_engine(fresh_pg_url)
    init_db(engine)
    create_member(engine, {"id": 13})
    svc = JobService(engine, Settings(data_dir=tmp_path, database_url=fresh_pg_url))
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        for _ in range(5):
            svc.create_job(13, "http://x")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total, items = svc.list_jobs(13, num=100)
    assert total == 40
    assert sum(j["phase"] == "starting" for j in items) == 1
    engine.dispose()


def test_expired_lease_is_claimed_again_on_postgres(fresh_pg_url, tmp_path):
    import time

    from bss.db import init_db, make_engine
    from bss.jobs.service import JobService
    from bss.settings import Settings

    engine = make_engine(fresh_pg_url)
    init_db(engine)
    svc = JobService(
        engine, Settings(data_dir=tmp_path, database_url=fresh_pg_url, job_lease_seconds=1)
    )
    src = tmp_path / "f"
    src.write_bytes(b"1,1:0\n")
    job = svc.submit_file(1, src, upload_source="folder", source_key="k")
    assert svc.claim_next("dead")["attempts"] == 1
    assert svc.claim_next("other") is None
    time.sleep(2.1)
    again = svc.claim_next("other")
    assert again["id"] == job["id"] and again["attempts"] == 2
    assert not svc.renew(job["id"], "dead") and svc.renew(job["id"], "other")
    assert svc.finish(job["id"], "other", {"phase": "completed"})
    done = svc.get_job(job["job_id"])
    assert done["phase"] == "completed" and done["percent_complete"] == 100
    assert done["validated_time"] and done["completed_time"]
    engine.dispose()
