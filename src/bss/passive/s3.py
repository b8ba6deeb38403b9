"""The S3 passive-upload backend: bucket `bss-<member_id>-<region>` on any S3-compatible endpoint.

Credentials come from boto3's usual chain (environment, shared config/credentials files,
instance/container roles); the endpoint from BSS_S3_ENDPOINT_URL (unset: AWS itself).

S3 has no rename, so a move is copy + delete. Both steps are idempotent and guarded by the
object's ETag: the copy is only made from the version we processed, and the delete is
conditional (If-Match) so a file the member re-uploaded under the same name in the
meantime is never deleted; it is a new version and waits for the next scan.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bss.passive.storage import (
    DONE,
    FAILED,
    SUBMITTED,
    Listing,
    MoveError,
    PassiveArea,
    PassiveBackend,
    SubmittedFile,
)

log = logging.getLogger(__name__)

REGIONS = ("us-east-2", "us-west-2", "eu-north-1", "eu-west-1")
DEFAULT_REGION = "us-east-2"

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_PRECONDITION = {"412", "PreconditionFailed"}


def bucket_name(member_id: int, region: str) -> str:
    return f"bss-{member_id}-{region}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _fingerprint(etag: str, size: int, modified: datetime) -> str:
    return f"etag={etag};size={size};lm={_utc(modified).isoformat()}"


class S3Area(PassiveArea):
    backend = "s3"

    def __init__(self, client: Any, bucket: str, member_id: int, endpoint: str | None) -> None:
        self.client = client
        self.bucket = bucket
        self.member_id = member_id
        self.location = f"s3:{endpoint or 'aws'}/{bucket}"
        self._layout_done = False

    # -- helpers -----------------------------------------------------------------------

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise

    def _same_version(self, head: dict | None, file: SubmittedFile | None) -> bool:
        """Is head the version we listed? (ETag + size; HEAD's LastModified is coarser.)"""
        if head is None:
            return False
        if file is None:
            return True
        return head["ETag"] == _etag_of(file) and int(head["ContentLength"]) == file.size

    # -- interface -----------------------------------------------------------------------

    def ensure_layout(self) -> None:
        if self._layout_done:
            return
        for prefix in (DONE, FAILED):
            marker = f"{prefix}/"
            if self._head(marker) is None:
                self.client.put_object(Bucket=self.bucket, Key=marker, Body=b"")
        self._layout_done = True

    def list_submitted(self) -> Listing:
        files: list[SubmittedFile] = []
        now: datetime | None = None
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=SUBMITTED):
            if now is None:
                now = _server_date(page)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a "directory" marker (e.g. the console's submitted/), not a file
                files.append(
                    SubmittedFile(
                        key=key,
                        size=int(obj["Size"]),
                        fingerprint=_fingerprint(
                            obj["ETag"], int(obj["Size"]), obj["LastModified"]
                        ),
                        modified=_utc(obj["LastModified"]),
                    )
                )
        busy: set[str] = set()
        mpu = self.client.get_paginator("list_multipart_uploads")
        for page in mpu.paginate(Bucket=self.bucket, Prefix=SUBMITTED):
            for upload in page.get("Uploads", []) or []:
                busy.add(upload["Key"])
        return Listing(files=files, now=now or datetime.now(UTC), busy=frozenset(busy))

    def work_key(self, file: SubmittedFile, token: str) -> str:
        return file.key  # S3 cannot rename; the claims table alone makes it ours

    def take(self, file: SubmittedFile, work_key: str) -> bool:
        return self._same_version(self._head(work_key), file)

    def fetch(self, work_key: str, file: SubmittedFile, dest: Path) -> None:
        # Streaming (1 MiB at a time, bounded memory), and only the version we claimed.
        response = self.client.get_object(Bucket=self.bucket, Key=work_key, IfMatch=_etag_of(file))
        body = response["Body"]
        try:
            with open(dest, "wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
        finally:
            body.close()
        got = dest.stat().st_size
        if got != file.size:
            raise RuntimeError(f"downloaded {got} bytes of {work_key!r}, expected {file.size}")

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def move(self, work_key: str, dest_key: str, file: SubmittedFile | None) -> None:
        src = self._head(work_key)
        if not self._same_version(src, file):
            # Either the delete already happened (a redo) or the member replaced the file
            # after we processed it; in both cases our version is wherever the copy put it.
            if self.exists(dest_key):
                return
            raise MoveError(
                f"s3://{self.bucket}/{work_key} is gone or was replaced before it could be "
                f"moved to {dest_key}"
            )
        etag = src["ETag"]  # type: ignore[index]
        dst = self._head(dest_key)
        if dst is None or dst["ContentLength"] != src["ContentLength"]:  # type: ignore[index]
            self.client.copy(
                {"Bucket": self.bucket, "Key": work_key},
                self.bucket,
                dest_key,
                ExtraArgs={"CopySourceIfMatch": etag},
            )
        self._delete_if_match(work_key, etag)

    def _delete_if_match(self, key: str, etag: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            return
        except ClientError as exc:
            code = _code(exc)
            if code in _PRECONDITION:
                log.info(
                    "s3://%s/%s was replaced meanwhile; leaving the new version", self.bucket, key
                )
                return
            if code in _NOT_FOUND:
                return
            if code not in {"NotImplemented", "InvalidArgument", "InvalidRequest", "501", "400"}:
                raise
        # The server does not support conditional deletes: check, then delete.
        head = self._head(key)
        if head is not None and head["ETag"] == etag:
            self.client.delete_object(Bucket=self.bucket, Key=key)


def _etag_of(file: SubmittedFile) -> str:
    for part in file.fingerprint.split(";"):
        if part.startswith("etag="):
            return part[len("etag=") :]
    raise ValueError(file.fingerprint)


def _server_date(page: dict) -> datetime | None:
    headers = page.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    raw = headers.get("date")
    if not raw:
        return None
    try:
        return _utc(parsedate_to_datetime(raw))
    except (TypeError, ValueError):
        return None


class S3Backend(PassiveBackend):
    """Areas for every existing bucket bss-<member_id>-<region> of a known member."""

    backend = "s3"

    def __init__(
        self,
        regions: Iterable[str],
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.regions = [r.strip() for r in regions if r.strip()]
        self.endpoint_url = endpoint_url or None
        self.session = session or boto3.session.Session()
        self._clients: dict[str, Any] = {}
        self._areas: dict[str, S3Area] = {}

    def client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = self.session.client(
                "s3",
                region_name=region,
                endpoint_url=self.endpoint_url,
                config=Config(retries={"mode": "standard", "max_attempts": 5}),
            )
        return self._clients[region]

    def _bucket_exists(self, client: Any, bucket: str) -> bool:
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND | {"403", "AccessDenied", "Forbidden", "301"}:
                return False
            raise

    def areas(self, member_ids: Iterable[int]) -> list[S3Area]:
        out = []
        for member_id in sorted(set(member_ids)):
            for region in self.regions:
                bucket = bucket_name(member_id, region)
                client = self.client(region)
                try:
                    exists = self._bucket_exists(client, bucket)
                except ClientError:  # one bad bucket must not stop the scan
                    log.exception("checking bucket %s failed", bucket)
                    continue
                # Anything else (no credentials, endpoint unreachable) concerns every
                # bucket: it propagates, and the scanner logs it once per scan.
                if not exists:
                    self._areas.pop(bucket, None)
                    continue
                area = self._areas.get(bucket)
                if area is None:
                    area = self._areas[bucket] = S3Area(
                        client, bucket, member_id, self.endpoint_url
                    )
                out.append(area)
        return out
