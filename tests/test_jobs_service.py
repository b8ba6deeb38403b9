"""JobService in process: the passive-upload contract, exclusive claims, lease expiry, retention."""

from __future__ import annotations

import os
import threading
import time

from sqlalchemy import update

from bss.db import init_db, make_engine, now_s
from bss.jobs.models import jobs
from bss.jobs.service import JobService
from bss.settings import Settings


def _service(tmp_path, **kw):
    settings = Settings(data_dir=tmp_path, **kw)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    return JobService(engine, settings)


def test_submit_file_contract(tmp_path):
    svc = _service(tmp_path)
    src = tmp_path / "incoming.txt"
    src.write_bytes(b"1,1:0\n")
    job = svc.submit_file(3, src, upload_source="s3", source_key="submitted/a.txt")
    assert len(job["job_id"]) == 40 and isinstance(job["id"], int)
    assert (
        job["phase"] == "validating"
        and job["upload_source"] == "s3"
        and job["source_key"] == "submitted/a.txt"
    )
    assert not src.exists() and (tmp_path / "uploads" / job["job_id"]).read_bytes() == b"1,1:0\n"
    again = svc.get_job(job["job_id"])
    assert again is not None and again["phase"] == "validating" and again["error_code"] is None
    assert svc.get_job("nope") is None
    rejected = svc.submit_rejected(
        3, upload_source="folder", source_key="k", file_bytes=9, error_code="x", error_message="y"
    )
    assert rejected["phase"] == "error" and rejected["error_code"] == "x"


def test_claims_are_exclusive_on_sqlite(tmp_path):
    svc = _service(tmp_path)
    created = set()
    for i in range(40):
        src = tmp_path / f"f{i}"
        src.write_bytes(b"x")
        created.add(svc.submit_file(1, src, upload_source="folder", source_key=str(i))["id"])
    claimed: list[int] = []

    def worker(name: str) -> None:
        while (row := svc.claim_next(name)) is not None:
            claimed.append(row["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(created)


def test_expired_lease_is_claimed_again(tmp_path):
    svc = _service(tmp_path, job_lease_seconds=1)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    job = svc.submit_file(1, src, upload_source="folder", source_key="k")
    first = svc.claim_next("dead-worker")
    assert first["id"] == job["id"] and first["attempts"] == 1
    assert svc.claim_next("other") is None  # leased
    time.sleep(2.1)
    second = svc.claim_next("other")
    assert second["id"] == job["id"] and second["attempts"] == 2
    assert not svc.renew(job["id"], "dead-worker")  # the dead worker lost it
    assert svc.renew(job["id"], "other")


def test_retention_sweep(tmp_path):
    svc = _service(tmp_path, file_retention_days=3, history_days=30)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    old = svc.submit_file(1, src, upload_source="folder", source_key="k")
    src.write_bytes(b"y")
    older = svc.submit_file(1, src, upload_source="folder", source_key="k2")
    now = now_s()
    with svc.db.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == old["id"])
            .values(phase="completed", uploaded_time=now - 4 * 86400)
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.id == older["id"])
            .values(phase="completed", uploaded_time=now - 31 * 86400, created_on=now - 31 * 86400)
        )
    part = tmp_path / "uploads" / ".stale.part"  # a partial upload whose server died
    part.write_bytes(b"partial")
    os.utime(part, (now - 600, now - 600))
    stats = svc.sweep()
    assert stats["files_deleted"] >= 1 and stats["jobs_deleted"] == 1
    assert not (tmp_path / "uploads" / old["job_id"]).exists()
    assert svc.get_job(old["job_id"]) is not None  # history stays 30 days
    assert svc.get_job(older["job_id"]) is None
    assert not part.exists()


def test_url_expiry_is_persisted(tmp_path):
    svc = _service(tmp_path, upload_url_ttl_seconds=1)
    job = svc.create_job(1, "http://x")
    assert job["phase"] == "starting"
    time.sleep(2.1)  # whole seconds: a 1 s TTL ends after 1 to 2 s
    assert svc.get_job(job["job_id"])["error_code"] == "upload_url_expired"  # shown at once
    assert svc.expire_urls() == 1
    assert svc.job_row(job["job_id"])["phase"] == "error"


def test_upload_left_by_a_dead_server_is_failed(tmp_path):
    from bss.leases import PROCESS_PREFIX, acquire, release

    svc = _service(tmp_path)
    acquire(svc.db, PROCESS_PREFIX + "receiver-a", "receiver-a", 60)
    job = svc.create_job(1, "http://x")
    row = svc.job_row(job["job_id"])
    assert svc.begin_upload(row, 1, "receiver-a")
    part = tmp_path / "uploads" / f".{job['job_id']}.part"  # what the receiver streamed so far
    part.write_bytes(b"1,1:0\n")
    assert svc.fail_orphaned_uploads() == []  # its process is alive
    release(svc.db, [PROCESS_PREFIX + "receiver-a"], "receiver-a")
    assert svc.fail_orphaned_uploads() == [job["job_id"]]
    dead = svc.get_job(job["job_id"])
    assert dead["phase"] == "error" and dead["error_code"] == "uploading-error"
    assert not part.exists()
    # the late end of that upload cannot bring the job back
    final = tmp_path / "uploads" / job["job_id"]
    final.write_bytes(b"1,1:0\n")
    assert not svc.finish_upload(row["id"], str(final), 6, 1, "receiver-a")
    assert not final.exists()
    assert svc.get_job(job["job_id"])["phase"] == "error"
    assert not (tmp_path / "uploads" / job["job_id"]).exists()
    # the member may upload again
    nxt = svc.create_job(1, "http://x")
    assert svc.begin_upload(svc.job_row(nxt["job_id"]), 1, "receiver-b")


def test_one_unused_url_under_concurrent_creates_on_sqlite(tmp_path):
    svc = _service(tmp_path)
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        for _ in range(5):
            svc.create_job(14, "http://x")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total, items = svc.list_jobs(14, num=100)
    assert total == 40
    assert sum(j["phase"] == "starting" for j in items) == 1


def test_a_database_of_an_older_version_gets_the_missing_columns_and_indexes(tmp_path):
    from sqlalchemy import inspect, text

    engine = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(engine)
    with engine.begin() as conn:  # what an older version left: no seq_base, no member index
        conn.execute(text("DROP TABLE alembic_version"))  # (and no migrations yet)
        conn.execute(text("DROP INDEX ix_jobs_member_id"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN seq_base"))
    init_db(engine)
    found = inspect(engine)
    assert "seq_base" in {c["name"] for c in found.get_columns("jobs")}
    assert "ix_jobs_member_id" in {i["name"] for i in found.get_indexes("jobs")}
