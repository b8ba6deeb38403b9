"""The embedded passive-upload backend: a local folder per member.

    <data-dir>/passive/<member_id>/submitted/...   the member (or an rsync/sftp drop) writes
    <data-dir>/passive/<member_id>/.processing/    files whose job is running (ours)
    <data-dir>/passive/<member_id>/done/, failed/  created by the service

Taking a file is one os.rename from submitted/ into .processing/<token>/ (atomic on one
filesystem), so two scanners can never both take it, even without a shared database; moving
it to done/ or failed/ is another rename. Names starting with "." (anywhere in the path)
are ignored, so writers can upload to ".name.part" and rename when complete, and only
regular files are considered (no symlinks, devices, ...).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

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

PROCESSING = ".processing"

log = logging.getLogger(__name__)


class FolderArea(PassiveArea):
    backend = "folder"

    def __init__(self, root: Path, member_id: int) -> None:
        self.root = root
        self.member_id = member_id
        self.location = str(root.resolve())

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe key {key!r}")
        return self.root.joinpath(*parts)

    def ensure_layout(self) -> None:
        for name in (DONE, FAILED, PROCESSING):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def list_submitted(self) -> Listing:
        now = datetime.now(UTC)
        base = self.root / SUBMITTED.rstrip("/")
        files: list[SubmittedFile] = []
        if not base.is_dir():
            return Listing(files=files, now=now)
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            names = (_utf8_name(Path(dirpath), d) for d in dirnames if not d.startswith("."))
            dirnames[:] = sorted(d for d in names if d is not None)
            for raw in sorted(filenames):
                if raw.startswith("."):
                    continue
                name = _utf8_name(Path(dirpath), raw)
                if name is None:
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = path.relative_to(self.root).as_posix()
                files.append(
                    SubmittedFile(
                        key=rel,
                        size=st.st_size,
                        fingerprint=f"size={st.st_size};mtime_ns={st.st_mtime_ns};ino={st.st_ino}",
                        modified=datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
        return Listing(files=files, now=now)

    def work_key(self, file: SubmittedFile, token: str) -> str:
        return f"{PROCESSING}/{token}/{file.relative}"

    def take(self, file: SubmittedFile, work_key: str) -> bool:
        src, dst = self._path(file.key), self._path(work_key)
        if dst.exists():
            return True
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = src.lstat()
        except FileNotFoundError:
            return False
        current = f"size={st.st_size};mtime_ns={st.st_mtime_ns};ino={st.st_ino}"
        if current != file.fingerprint:
            return False  # rewritten since listed: a new version, the next scan sees it
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        return True

    def fetch(self, work_key: str, file: SubmittedFile, dest: Path) -> None:
        src = self._path(work_key)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def move(self, work_key: str, dest_key: str, file: SubmittedFile | None) -> None:
        src, dst = self._path(work_key), self._path(dest_key)
        if not src.exists():
            if dst.exists():
                return
            raise MoveError(f"{work_key!r} vanished before it could be moved to {dest_key!r}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        # Tidy the now-empty parking directories (best effort).
        parent = src.parent
        stop = self.root / PROCESSING
        while parent != stop and stop in parent.parents:
            try:
                parent.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    break
                raise
            parent = parent.parent

    def max_key_bytes(self) -> int:
        return 4000

    def max_component_bytes(self) -> int | None:
        return 255


def _utf8_name(parent: Path, name: str) -> str | None:
    """Names that are not valid UTF-8 are renamed in place to a readable, valid form.

    Keys are stored in the database and shown in the job API as text; a name such as
    b"caf\\xe9.txt" becomes "caf\\xe9.txt" (a literal backslash), and is then processed
    like any other file.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    safe = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if (parent / safe).exists() or (parent / safe).is_symlink():
        log.error("cannot rename %r to %r in %s: the name is taken", name, safe, parent)
        return None
    try:
        os.rename(parent / name, parent / safe)
    except FileNotFoundError:
        return None
    return safe


class FolderBackend(PassiveBackend):
    """Areas under <data-dir>/passive/<member_id>/ for known members."""

    backend = "folder"

    def __init__(self, base: Path) -> None:
        self.base = base

    def areas(self, member_ids: Iterable[int]) -> list[FolderArea]:
        known = set(member_ids)
        if not self.base.is_dir():
            return []
        out = []
        for child in sorted(self.base.iterdir()):
            name = child.name
            if name.isdigit() and str(int(name)) == name and int(name) in known and child.is_dir():
                out.append(FolderArea(child, int(name)))
        return out
