"""Where uploaded files and error reports are kept, chosen by `BSS_FILES_URL`.

`file:///path` (the default: the data dir) keeps them on local disk, as one process needs;
`s3://bucket/prefix` keeps them in any S3-compatible store (`BSS_S3_ENDPOINT_URL`), so an
upload received by one API process is processed by a worker on another host and its error
report served by a third.

Files are named by references stored with the job (`file_path`, `report_path`): a local
absolute path, or `s3://bucket/key`. Every method takes such a reference, so jobs written
before a move to S3 (local paths) keep working on the host that has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol


class UploadSink(Protocol):
    """A file being received: written in order, then committed (or aborted)."""

    async def awrite(self, chunk: bytes) -> None: ...

    def commit(self) -> str:
        """Make the file durable under its final name; returns its reference."""

    def abort(self) -> None:
        """Forget everything written (idempotent)."""


class FileStore(Protocol):
    url: str

    def upload_sink(self, job_id: str) -> UploadSink:
        """Where a job's uploaded file is streamed to (never whole in memory)."""

    def put_upload(self, job_id: str, source: Path) -> str:
        """Keep a local file (moved when possible) as the job's upload; its reference."""

    def put_report(self, job_id: str, source: Path) -> str:
        """Keep a finished local error report (moved); its reference."""

    def local_copy(self, ref: str) -> AbstractContextManager[Path]:
        """The file as a local path for as long as the context lasts."""

    def exists(self, ref: str) -> bool: ...

    def iter_bytes(self, ref: str) -> Iterator[bytes]:
        """The file's content in chunks (error reports are served this way)."""

    def delete(self, ref: str) -> None:
        """Remove the file; a missing file is not an error."""

    def discard_partial(self, job_id: str) -> None:
        """Drop what an interrupted upload of the job left behind."""


def open_files(url: str, *, s3_endpoint_url: str | None = None, scratch: Path) -> FileStore:
    """`file:///path` or `s3://bucket/prefix`; `scratch` is local room for temporary copies."""
    if url.startswith("file://"):
        from bss.files.local import LocalFiles

        return LocalFiles(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from bss.files.s3 import S3Files

        return S3Files(url, endpoint_url=s3_endpoint_url, scratch=scratch)
    raise ValueError(f"unsupported files URL {url!r}; use file:///path or s3://bucket/prefix")
