"""Files on local disk under one directory (`uploads/`, `reports/`): the embedded default."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bss.files import UploadSink

CHUNK = 1 << 20


class LocalSink:
    """Streams to `.<job_id>.part` and renames it into place on commit."""

    def __init__(self, part: Path, final: Path) -> None:
        self.part, self.final = part, final
        self._fh: BinaryIO | None = part.open("wb")

    async def awrite(self, chunk: bytes) -> None:
        assert self._fh is not None
        self._fh.write(chunk)

    def commit(self) -> str:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        os.replace(self.part, self.final)
        return str(self.final)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.part.unlink(missing_ok=True)


class LocalFiles:
    def __init__(self, root: Path) -> None:
        self.url = f"file://{root}"
        self.uploads = root / "uploads"
        self.reports = root / "reports"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.reports.mkdir(parents=True, exist_ok=True)

    def upload_sink(self, job_id: str) -> UploadSink:
        return LocalSink(self.uploads / f".{job_id}.part", self.uploads / job_id)

    def put_upload(self, job_id: str, source: Path) -> str:
        return self._move(source, self.uploads / job_id)

    def put_report(self, job_id: str, source: Path) -> str:
        return self._move(source, self.reports / f"{job_id}.csv")

    def _move(self, source: Path, final: Path) -> str:
        if source.resolve() == final.resolve():
            return str(final)
        part = final.with_name(f".{final.name}.part")
        try:
            os.replace(source, part)
        except OSError:  # another file system: copy, then rename into place
            shutil.copyfile(source, part)
        os.replace(part, final)
        return str(final)

    @contextlib.contextmanager
    def local_copy(self, ref: str) -> Iterator[Path]:
        yield Path(ref)

    def exists(self, ref: str) -> bool:
        return Path(ref).exists()

    def iter_bytes(self, ref: str) -> Iterator[bytes]:
        with open(ref, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def delete(self, ref: str) -> None:
        Path(ref).unlink(missing_ok=True)

    def discard_partial(self, job_id: str) -> None:
        (self.uploads / f".{job_id}.part").unlink(missing_ok=True)
