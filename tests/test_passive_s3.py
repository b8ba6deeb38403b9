"""Passive upload through S3, against moto's real S3-protocol server on loopback.

Members use boto3 the way they would against AWS (put_object, multipart uploads, list);
the service side is the real pipeline: JobService, worker threads running the ingest
engine, and the scanner with the S3 backend chosen by settings.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from datetime import timedelta

import boto3
import pytest
from sqlalchemy import select, update

pytest.importorskip("moto.server")

from passive_util import MotoServer, Pipeline  # noqa: E402

from bss.jobs.models import jobs  # noqa: E402
from bss.passive.claims import ClaimStore, utcnow  # noqa: E402
from bss.passive.models import JOB_CREATED, MOVED, passive_claims  # noqa: E402
from bss.passive.s3 import S3Backend, bucket_name  # noqa: E402
from bss.passive.scanner import default_backends  # noqa: E402
from bss.passive.storage import destination_key  # noqa: E402

_member_ids = itertools.count(4100)


@pytest.fixture(scope="session")
def s3_server():
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    # Credentials through boto3's usual chain: here, the environment.
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    server = MotoServer()
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def pipeline(tmp_path, s3_server):
    p = Pipeline(
        tmp_path / "data",
        passive_s3_enabled=True,
        s3_endpoint_url=s3_server.url,
        passive_regions="us-east-2,us-west-2,eu-north-1,eu-west-1",
        max_file_bytes=10_000,
    )
    yield p
    p.close()


class Member:
    """A member with a bucket, using boto3 like a member would."""

    def __init__(self, pipeline: Pipeline, s3_server: MotoServer, region: str = "us-east-2"):
        self.id = next(_member_ids)
        pipeline.add_member(self.id)
        self.pipeline = pipeline
        self.region = region
        self.bucket = bucket_name(self.id, region)
        self.s3 = boto3.client("s3", region_name=region, endpoint_url=s3_server.url)
        self.s3.create_bucket(
            Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def all_keys(self, prefix: str = "") -> list[str]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def files(self, prefix: str) -> list[str]:
        return [k for k in self.all_keys(prefix) if not k.endswith("/")]


def member_jobs(pipeline: Pipeline, member_id: int) -> list[dict]:
    with pipeline.engine.connect() as conn:
        ids = conn.execute(select(jobs.c.job_id).where(jobs.c.member_id == member_id)).scalars()
        return [pipeline.service.get_job(j) for j in ids]


def kill(*scanners) -> None:
    """The scanners die: they stop renewing, and their leases run out (made to, here)."""
    owners = [s.owner for s in scanners]
    for s in scanners:
        s.inflight.clear()
    with scanners[0].engine.begin() as conn:
        conn.execute(
            update(passive_claims)
            .where(passive_claims.c.owner.in_(owners))
            .values(lease_until=utcnow() - timedelta(hours=1))
        )


def job_of(key: str) -> str:
    return key.rsplit("-", 1)[1]


def test_files_are_processed_and_moved_with_job_id(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    m.put("submitted/", b"")  # the member "creates the directory", as the docs tell them to
    names = {
        "plain.txt": 3,
        "with space & plus+sign.txt": 2,
        "ünïcødé €uro.txt": 4,
        "a/b/nested.txt": 1,
        "odd ?#%[]{}'\";=.txt": 2,
        "  leading and trailing  ": 1,
        "tab\tin name.txt": 2,
        "deep/er/still/x y.gz.txt": 1,
    }
    for name, users in names.items():
        m.put(f"submitted/{name}", pipeline.good_file(m.id, users))

    scanner = pipeline.scanner(backends=default_backends(pipeline.settings))
    stats = scanner.scan_once()
    assert sorted(stats.claimed) == sorted(f"submitted/{n}" for n in names)
    scanner.drain(timeout=120)

    assert m.files("submitted/") == []
    assert "done/" in m.all_keys() and "failed/" in m.all_keys()  # the service creates them
    done = m.files("done/")
    assert len(done) == len(names)
    by_name = {k[len("done/") :].rsplit("-", 1)[0]: k for k in done}
    assert set(by_name) == set(names)
    for name, users in names.items():
        key = by_name[name]
        job = pipeline.service.get_job(job_of(key))
        assert key == f"done/{name}-{job['job_id']}"
        assert job["phase"] == "completed"
        assert job["num_valid"] == users and job["num_valid_user"] == users
        assert job["upload_source"] == "s3"
        assert job["source_key"] == f"submitted/{name}"
        assert job["member_id"] == m.id
    # the moved object holds the member's bytes
    body = m.s3.get_object(Bucket=m.bucket, Key=by_name["plain.txt"])["Body"].read()
    assert body == pipeline.good_file(m.id, 3)


def test_zero_byte_oversized_and_broken_files_fail_clearly(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    m.put("submitted/empty.txt", b"")
    m.put("submitted/big.txt", b"x" * (9 << 20))  # > 8 MB: moved with a multipart copy
    m.put("submitted/broken.gz", b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)

    scanner = pipeline.scanner(backends=default_backends(pipeline.settings))
    scanner.scan_once()
    scanner.drain(timeout=120)

    assert m.files("submitted/") == []
    assert m.files("done/") == []
    failed = {k[len("failed/") :].rsplit("-", 1)[0]: k for k in m.files("failed/")}
    assert set(failed) == {"empty.txt", "big.txt", "broken.gz"}
    codes = {}
    for name, key in failed.items():
        job = pipeline.service.get_job(job_of(key))
        assert job["phase"] == "error"
        assert job["error_code"]
        assert job["source_key"] == f"submitted/{name}"
        codes[name] = job["error_code"]
    assert codes["big.txt"] == "FILESIZE_LIMIT_EXCEEDED"
    assert codes["empty.txt"] == "empty_file"


def test_two_scanners_at_once_process_each_file_exactly_once(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    n = 12
    for i in range(n):
        m.put(f"submitted/f{i:02d}.txt", pipeline.good_file(m.id, 1 + i % 3))

    stop = threading.Event()
    scanners = [
        pipeline.scanner(backends=default_backends(pipeline.settings), owner=f"scanner-{i}")
        for i in range(2)
    ]
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in scanners]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not m.files("submitted/") and len(m.files("done/")) == n:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    done = m.files("done/")
    assert len(done) == n
    assert m.files("submitted/") == [] and m.files("failed/") == []
    all_jobs = member_jobs(pipeline, m.id)
    assert len(all_jobs) == n  # one job per file, no duplicates
    assert Counter(j["source_key"] for j in all_jobs) == Counter(
        f"submitted/f{i:02d}.txt" for i in range(n)
    )
    assert all(j["phase"] == "completed" for j in all_jobs)
    assert {job_of(k) for k in done} == {j["job_id"] for j in all_jobs}


def _run_until_job_final(pipeline: Pipeline, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = pipeline.service.get_job(job_id)
        if job["phase"] in ("completed", "error"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_scanner_killed_between_copy_and_delete(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    m.put("submitted/crash me.txt", pipeline.good_file(m.id, 2))
    backends = default_backends(pipeline.settings)

    # Scanner A claims and submits, then dies right after S3's copy (before the delete).
    a = pipeline.scanner(backends=backends, owner="scanner-a")
    a.scan_once()
    (flight,) = a.inflight.values()
    job = _run_until_job_final(pipeline, flight.job_id)
    dest = destination_key("done", "crash me.txt", job["job_id"])
    assert ClaimStore(pipeline.engine).set_outcome(flight.claim_id, "scanner-a", "done", dest, None)
    m.s3.copy_object(
        Bucket=m.bucket, Key=dest, CopySource={"Bucket": m.bucket, "Key": "submitted/crash me.txt"}
    )
    kill(a)
    assert m.files("submitted/") == ["submitted/crash me.txt"]
    assert m.files("done/") == [dest]

    # A fresh scanner finishes the move instead of processing the file again.
    b = pipeline.scanner(backends=default_backends(pipeline.settings), owner="scanner-b")
    stats = b.scan_once()
    assert stats.claimed == [] and stats.resumed == ["submitted/crash me.txt"]
    b.drain(timeout=60)
    assert m.files("submitted/") == []
    assert m.files("done/") == [dest]
    assert [j["job_id"] for j in member_jobs(pipeline, m.id)] == [job["job_id"]]
    with pipeline.engine.connect() as conn:
        row = conn.execute(select(passive_claims)).mappings().all()
    (claim,) = [r for r in row if r["member_id"] == m.id]
    assert claim["state"] == MOVED and claim["owner"] == "scanner-b"

    # Later scans leave it alone.
    assert b.scan_once().claimed == []
    assert len(member_jobs(pipeline, m.id)) == 1


def test_scanner_killed_after_claim_or_after_job_creation(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    m.put("submitted/before-job.txt", pipeline.good_file(m.id, 1))
    backends = default_backends(pipeline.settings)

    # A claims the file, but dies before creating the job.
    a = pipeline.scanner(backends=backends, owner="scanner-a")
    a.jobs = None  # makes job creation fail: the claim stays "claimed"
    a.scan_once()
    assert len(a.inflight) == 1 and member_jobs(pipeline, m.id) == []

    # C claims a second file and creates its job, then dies before moving it.
    m.put("submitted/after-job.txt", pipeline.good_file(m.id, 2))
    c = pipeline.scanner(backends=backends, owner="scanner-c")
    c.scan_once()
    (flight,) = c.inflight.values()
    assert flight.job_id
    kill(a, c)
    with pipeline.engine.connect() as conn:
        states = dict(
            conn.execute(
                select(passive_claims.c.source_key, passive_claims.c.state).where(
                    passive_claims.c.member_id == m.id
                )
            ).all()
        )
    assert states == {"submitted/before-job.txt": "claimed", "submitted/after-job.txt": JOB_CREATED}

    b = pipeline.scanner(backends=default_backends(pipeline.settings), owner="scanner-b")
    stats = b.scan_once()
    assert sorted(stats.resumed) == ["submitted/after-job.txt", "submitted/before-job.txt"]
    b.drain(timeout=120)
    assert m.files("submitted/") == []
    all_jobs = member_jobs(pipeline, m.id)
    assert sorted(j["source_key"] for j in all_jobs) == [
        "submitted/after-job.txt",
        "submitted/before-job.txt",
    ]
    assert sorted(m.files("done/")) == sorted(
        f"done/{j['source_key'][len('submitted/') :]}-{j['job_id']}" for j in all_jobs
    )


def test_recent_files_and_multipart_uploads_in_progress_wait(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    m.put("submitted/fresh.txt", pipeline.good_file(m.id, 1))
    # An older version exists, and a new version is being uploaded in parts.
    m.put("submitted/growing.txt", pipeline.good_file(m.id, 1))
    upload = m.s3.create_multipart_upload(Bucket=m.bucket, Key="submitted/growing.txt")
    part = m.s3.upload_part(
        Bucket=m.bucket,
        Key="submitted/growing.txt",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=pipeline.good_file(m.id, 4),
    )

    patient = pipeline.scanner(backends=default_backends(pipeline.settings), min_age_seconds=3600)
    stats = patient.scan_once()
    assert stats.claimed == []
    assert sorted(stats.waiting) == ["submitted/fresh.txt", "submitted/growing.txt"]

    eager = pipeline.scanner(backends=default_backends(pipeline.settings), min_age_seconds=0)
    stats = eager.scan_once()
    assert stats.claimed == ["submitted/fresh.txt"]
    assert stats.waiting == ["submitted/growing.txt"]  # the multipart upload is in progress
    eager.drain(timeout=60)

    m.s3.complete_multipart_upload(
        Bucket=m.bucket,
        Key="submitted/growing.txt",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    stats = eager.scan_once()
    assert stats.claimed == ["submitted/growing.txt"]
    eager.drain(timeout=60)
    assert m.files("submitted/") == []
    (key,) = [k for k in m.files("done/") if "growing" in k]
    assert pipeline.service.get_job(job_of(key))["num_valid"] == 4  # the completed version


def test_same_name_uploaded_again_is_a_new_job(pipeline, s3_server):
    m = Member(pipeline, s3_server)
    body = pipeline.good_file(m.id, 2)
    scanner = pipeline.scanner(backends=default_backends(pipeline.settings))
    for _ in range(2):
        m.put("submitted/daily.txt", body)  # identical bytes, possibly in the same second
        assert scanner.scan_once().claimed == ["submitted/daily.txt"]
        scanner.drain(timeout=60)
    assert m.files("submitted/") == []
    assert len(m.files("done/")) == 2
    assert len(member_jobs(pipeline, m.id)) == 2


def test_every_region_bucket_of_known_members_only(pipeline, s3_server):
    m = Member(pipeline, s3_server, region="us-east-2")
    west = boto3.client("s3", region_name="eu-west-1", endpoint_url=s3_server.url)
    west.create_bucket(
        Bucket=bucket_name(m.id, "eu-west-1"),
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
    )
    west.put_object(
        Bucket=bucket_name(m.id, "eu-west-1"), Key="submitted/w.txt", Body=pipeline.good_file(m.id)
    )
    m.put("submitted/e.txt", pipeline.good_file(m.id))
    stranger = next(_member_ids)  # a bucket for a member the service does not know
    m.s3.create_bucket(
        Bucket=bucket_name(stranger, "us-east-2"),
        CreateBucketConfiguration={"LocationConstraint": "us-east-2"},
    )
    m.s3.put_object(Bucket=bucket_name(stranger, "us-east-2"), Key="submitted/x.txt", Body=b"1")

    backend = S3Backend(["us-east-2", "us-west-2", "eu-north-1", "eu-west-1"], s3_server.url)
    areas = backend.areas([m.id])
    assert sorted(a.bucket for a in areas) == sorted(
        [bucket_name(m.id, "us-east-2"), bucket_name(m.id, "eu-west-1")]
    )
    scanner = pipeline.scanner(backends=default_backends(pipeline.settings))
    scanner.scan_once()
    scanner.drain(timeout=60)
    assert m.files("submitted/") == [] and len(m.files("done/")) == 1
    west_done = [
        o["Key"]
        for o in west.list_objects_v2(Bucket=bucket_name(m.id, "eu-west-1")).get("Contents", [])
    ]
    assert any(k.startswith("done/w.txt-") for k in west_done)
    stranger_keys = [
        o["Key"]
        for o in m.s3.list_objects_v2(Bucket=bucket_name(stranger, "us-east-2"))["Contents"]
    ]
    assert stranger_keys == ["submitted/x.txt"]  # untouched


def test_large_multipart_objects_are_downloaded_and_moved(tmp_path, s3_server):
    """Members' multipart uploads (ETag "...-N"), streamed download, multipart copy."""
    from boto3.s3.transfer import TransferConfig

    p = Pipeline(tmp_path / "big", passive_s3_enabled=True, s3_endpoint_url=s3_server.url)
    try:
        m = Member(p, s3_server)
        users = 250_000  # about 7 MB: two parts (5 MB is the minimum part size)
        src = tmp_path / "big.txt"
        src.write_bytes(p.good_file(m.id, users))
        cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
        m.s3.upload_file(str(src), m.bucket, "submitted/big file.txt", Config=cfg)
        etag = m.s3.head_object(Bucket=m.bucket, Key="submitted/big file.txt")["ETag"]
        assert "-" in etag  # really a multipart object

        scanner = p.scanner(backends=default_backends(p.settings))
        assert scanner.scan_once().claimed == ["submitted/big file.txt"]
        scanner.drain(timeout=300)
        (key,) = m.files("done/")
        job = p.service.get_job(job_of(key))
        assert job["phase"] == "completed" and job["num_valid"] == users
        head = m.s3.head_object(Bucket=m.bucket, Key=key)
        assert head["ContentLength"] == src.stat().st_size
        assert m.files("submitted/") == []
    finally:
        p.close()
