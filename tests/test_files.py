"""The files store (BSS_FILES_URL): local disk and S3 (a real moto S3 server on loopback).

An S3 upload streams through a multipart upload holding at most one part in memory; an
interrupted one leaves nothing behind; every reference round-trips."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from passive_util import MotoServer

from bss.files import FileStore, open_files
from bss.files import s3 as s3_files

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = MotoServer()
    import boto3

    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="files")
    yield server
    server.stop()


@pytest.fixture(params=["file", "s3"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> FileStore:
    if request.param == "file":
        return open_files(f"file://{tmp_path / 'files'}", scratch=tmp_path / "scratch")
    server: MotoServer = request.getfixturevalue("moto")
    return open_files(
        f"s3://files/{tmp_path.name}", s3_endpoint_url=server.url, scratch=tmp_path / "scratch"
    )


def stream(files: FileStore, job_id: str, data: bytes, *, peak: list[int] | None = None) -> str:
    sink = files.upload_sink(job_id)

    async def send() -> None:
        for i in range(0, len(data), CHUNK):
            await sink.awrite(data[i : i + CHUNK])
            if peak is not None:
                peak.append(len(getattr(sink, "_buffer", b"")))

    asyncio.run(send())
    return sink.commit()


def test_upload_round_trip(files: FileStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    ref = stream(files, "job1", data)
    assert files.exists(ref)
    assert b"".join(files.iter_bytes(ref)) == data
    with files.local_copy(ref) as path:
        assert path.read_bytes() == data
    report = tmp_path / "r.csv"
    report.write_bytes(b"line_no,counter,reason,raw\n")
    report_ref = files.put_report("job1", report)
    assert b"".join(files.iter_bytes(report_ref)).startswith(b"line_no")
    files.delete(ref)
    files.delete(ref)  # a missing file is not an error
    assert not files.exists(ref)


def test_s3_multipart_holds_one_part_at_most(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_files, "PART_BYTES", 5 << 20)  # S3's smallest part
    files = open_files("s3://files/multi", s3_endpoint_url=moto.url, scratch=tmp_path)
    data = os.urandom(1 << 20) * 11 + b"tail"  # 3 parts: 5 MiB, 5 MiB, the rest
    peak: list[int] = []
    ref = stream(files, "big", data, peak=peak)
    assert max(peak) < (5 << 20) + CHUNK
    head = files.client.head_object(Bucket="files", Key="multi/uploads/big")  # type: ignore[attr-defined]
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    assert b"".join(files.iter_bytes(ref)) == data


def test_interrupted_s3_upload_leaves_nothing(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_files, "PART_BYTES", 5 << 20)
    files = open_files("s3://files/cut", s3_endpoint_url=moto.url, scratch=tmp_path)
    sink = files.upload_sink("cut")

    async def send() -> None:
        for _ in range(6):
            await sink.awrite(os.urandom(1 << 20))

    asyncio.run(send())  # one part sent, the upload still open
    client = files.client  # type: ignore[attr-defined]
    assert client.list_multipart_uploads(Bucket="files", Prefix="cut/").get("Uploads")
    files.discard_partial("cut")  # what a sweep does for an upload whose process died
    assert not client.list_multipart_uploads(Bucket="files", Prefix="cut/").get("Uploads")
    assert not files.exists("s3://files/cut/uploads/cut")
