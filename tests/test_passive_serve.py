"""Passive upload end to end: a real `bss serve` process, moto's S3 server, boto3 as a member.

The job is then read through the normal job API, like any active upload. A server killed
with SIGKILL in the middle of passive work is restarted on the same data dir: every file
still ends up processed exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import boto3
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy

pytest.importorskip("moto.server")

from passive_util import MotoServer  # noqa: E402

from bss.passive.s3 import bucket_name  # noqa: E402

USER = 1234567890123456789


@pytest.fixture(scope="module")
def s3_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    # The service finds credentials through boto3's usual chain: here, its environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def passive_env(s3_server: MotoServer, **extra):
    return dict(
        passive_s3_enabled="true",
        s3_endpoint_url=s3_server.url,
        passive_scan_seconds=1,
        passive_poll_seconds=0.2,
        passive_min_age_seconds=0,
        **extra,
    )


def member_bucket(s3_server: MotoServer, member_id: int, region: str = "us-east-2"):
    s3 = boto3.client("s3", region_name=region, endpoint_url=s3_server.url)
    bucket = bucket_name(member_id, region)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return s3, bucket


def keys(s3, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    return sorted(out)


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_jobs(api: Api, member_id: int) -> list[dict]:
    body = api.ok("GET", "/batch-segment", params={"member_id": member_id, "num_elements": 100})
    jobs = body["batch_segment_upload_job"]
    return jobs if isinstance(jobs, list) else [jobs]


def test_serve_processes_s3_and_folder_uploads(bss_server, s3_server, aws_env):
    server = bss_server(**passive_env(s3_server))
    admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    member_id = 5301
    admin.member(member_id)
    seg = admin.segment(member_id, "passive-seg")["id"]
    s3, bucket = member_bucket(s3_server, member_id, "eu-north-1")

    s3.put_object(Bucket=bucket, Key="submitted/", Body=b"")
    s3.put_object(
        Bucket=bucket,
        Key="submitted/my segments 2026.txt",
        Body=legacy([f"{USER + i},{seg}:0" for i in range(5)]),
    )
    folder = Path(server.data_dir) / "passive" / str(member_id) / "submitted"
    folder.mkdir(parents=True)
    (folder / "from folder.txt").write_bytes(legacy([f"{USER},{seg}:0", "garbage"]))

    (done_key,) = wait_for(lambda: keys(s3, bucket, "done/"), what="the S3 file in done/")
    done_dir = folder.parent / "done"
    (folder_done,) = wait_for(
        lambda: [p.name for p in done_dir.glob("*")] if done_dir.is_dir() else [],
        what="the folder file in done/",
    )
    # A move is a copy, then a delete: the copy in done/ shows first.
    wait_for(lambda: keys(s3, bucket, "submitted/") == [], what="the S3 file gone from submitted/")

    job_id = done_key.rsplit("-", 1)[1]
    assert done_key == f"done/my segments 2026.txt-{job_id}"
    job = admin.job(member_id, job_id)  # the normal job API
    assert job["phase"] == "completed"
    assert job["num_valid"] == 5 and job["num_valid_user"] == 5
    assert job["upload_source"] == "s3" and job["source_key"] == "submitted/my segments 2026.txt"

    folder_job = admin.job(member_id, folder_done.rsplit("-", 1)[1])
    assert folder_done == f"from folder.txt-{folder_job['job_id']}"
    assert folder_job["upload_source"] == "folder"
    assert folder_job["num_valid"] == 1 and folder_job["num_invalid_format"] == 1

    # oversized files fail with the documented error, through the same API
    small = bss_server("small", **passive_env(s3_server), max_file_bytes=10)
    admin2 = Api(small.url, ADMIN_USER, ADMIN_PASSWORD)
    admin2.member(member_id + 1)
    s3b, bucket_b = member_bucket(s3_server, member_id + 1)
    s3b.put_object(Bucket=bucket_b, Key="submitted/too big.txt", Body=b"x" * 11)
    (failed_key,) = wait_for(lambda: keys(s3b, bucket_b, "failed/"), what="failed/")
    failed_job = admin2.job(member_id + 1, failed_key.rsplit("-", 1)[1])
    assert failed_job["phase"] == "error"
    assert failed_job["error_code"] == "FILESIZE_LIMIT_EXCEEDED"


def test_serve_killed_mid_work_then_restarted_processes_each_file_once(
    bss_server, s3_server, aws_env
):
    env = passive_env(s3_server, passive_lease_seconds=2, job_lease_seconds=3)
    server = bss_server(**env)
    admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    member_id = 5401
    admin.member(member_id)
    seg = admin.segment(member_id, "crash-seg")["id"]
    s3, bucket = member_bucket(s3_server, member_id)
    n = 30
    names = [f"submitted/batch {i:02d}.txt" for i in range(n)]
    for i, key in enumerate(names):
        s3.put_object(
            Bucket=bucket, Key=key, Body=legacy([f"{USER + j},{seg}:0" for j in range(1 + i % 4)])
        )

    wait_for(lambda: keys(s3, bucket, "done/"), what="the first file to be done")
    server.kill9()  # in the middle: some done, some claimed, some not yet seen

    restarted = bss_server(**env)  # same data dir, same database
    api = Api(restarted.url, ADMIN_USER, ADMIN_PASSWORD)
    wait_for(lambda: len(keys(s3, bucket, "done/")) == n, timeout=180, what="all files done")
    wait_for(lambda: keys(s3, bucket, "submitted/") == [], what="every file gone from submitted/")
    assert keys(s3, bucket, "failed/") == []

    jobs = all_jobs(api, member_id)
    assert Counter(j["source_key"] for j in jobs) == Counter(names)  # exactly one job each
    by_id = {j["job_id"]: j for j in jobs}
    for key in keys(s3, bucket, "done/"):
        name, job_id = key[len("done/") :].rsplit("-", 1)
        job = api.wait(member_id, job_id)
        assert by_id[job_id]["source_key"] == f"submitted/{name}"
        assert job["phase"] == "completed"
        assert job["num_valid"] == 1 + int(name.split()[1][:2]) % 4
