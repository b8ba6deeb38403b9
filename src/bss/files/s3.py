"""Files in an S3-compatible bucket under a prefix (`<prefix>/uploads/`, `<prefix>/reports/`).

Uploads stream through a multipart upload: at most one part (PART_BYTES) is held in memory
per upload, and a part is sent on a worker thread so the event loop keeps serving. A file
smaller than one part is sent with a single PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bss.files import UploadSink

#: S3's minimum part size is 5 MiB (all parts but the last).
PART_BYTES = 8 << 20
READ_CHUNK = 1 << 20


def _client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


def probe_client(endpoint_url: str | None) -> Any:
    """A client for one start-up check: a few seconds, not the retries of real work."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )


def split_ref(ref: str) -> tuple[str, str]:
    parts = urlsplit(ref)
    return parts.netloc, parts.path.lstrip("/")


class S3Sink:
    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def awrite(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= PART_BYTES:
            part, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(self._send_part, part)

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            created = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def commit(self) -> str:
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()
        return f"s3://{self.bucket}/{self.key}"

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
                )
            self._upload_id = None


class S3Files:
    def __init__(self, url: str, *, endpoint_url: str | None, scratch: Path) -> None:
        self.url = url.rstrip("/")
        self.bucket, prefix = split_ref(self.url)
        self.prefix = f"{prefix}/" if prefix else ""
        self.scratch = scratch
        self.client = _client(endpoint_url)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    def upload_sink(self, job_id: str) -> UploadSink:
        return S3Sink(self.client, self.bucket, self._key("uploads", job_id))

    def put_upload(self, job_id: str, source: Path) -> str:
        return self._put(source, self._key("uploads", job_id))

    def put_report(self, job_id: str, source: Path) -> str:
        return self._put(source, self._key("reports", f"{job_id}.csv"))

    def _put(self, source: Path, key: str) -> str:
        # upload_file streams from disk in parts (multipart above its threshold).
        self.client.upload_file(str(source), self.bucket, key)
        source.unlink(missing_ok=True)
        return f"s3://{self.bucket}/{key}"

    @contextlib.contextmanager
    def local_copy(self, ref: str) -> Iterator[Path]:
        bucket, key = split_ref(ref)
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            path = Path(tmp) / Path(key).name
            self.client.download_file(bucket, key, str(path))
            yield path

    def exists(self, ref: str) -> bool:
        bucket, key = split_ref(ref)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def iter_bytes(self, ref: str) -> Iterator[bytes]:
        bucket, key = split_ref(ref)
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def delete(self, ref: str) -> None:
        bucket, key = split_ref(ref)
        self.client.delete_object(Bucket=bucket, Key=key)

    def discard_partial(self, job_id: str) -> None:
        key = self._key("uploads", job_id)
        listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload["Key"] == key:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )
