"""The embedded passive-upload backend: a local folder per member.

    <data-dir>/passive/<member_id>/submitted/...   the member (or an rsync/sftp drop) writes
    <data-dir>/passive/<member_id>/.processing/    files whose job is running (ours)
    <data-dir>/passive/<member_id>/done/, failed/  created by the service

Taking a file is one os.rename from submitted/ into .processing/<token>/ (atomic on one
filesystem), so two scanners can never both take it, even without a shared database; moving
it to done/ or failed/ is another rename. Names starting with "." (anywhere in the path)
are ignored, so writers can upload to ".name.part" and rename when complete, and only
regular files are considered (no symlinks, devices, ...).

A member can write its own folder, so everything in it is untrusted: no symbolic link is
ever followed below the passive root, folders included. Every path is opened one component
at a time from the member folder's descriptor with O_NOFOLLOW, so a link placed (or swapped
in) anywhere, even between a check and the use, can point neither at another member's folder
nor outside the data dir: the operation is refused and logged instead.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
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

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

log = logging.getLogger(__name__)


class UnsafePath(OSError):
    """A symbolic link (or a non-folder) where a member's folder path needs a real folder."""


def _fingerprint(st: os.stat_result) -> str:
    return f"size={st.st_size};mtime_ns={st.st_mtime_ns};ino={st.st_ino}"


class FolderArea(PassiveArea):
    backend = "folder"

    def __init__(self, root: Path, member_id: int) -> None:
        self.root = root
        self.member_id = member_id
        self.location = str(root.resolve())

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe key {key!r}")
        return parts

    def _refuse(self, where: str, err: int = errno.ELOOP) -> UnsafePath:
        """Log the refusal once, here; the caller raises what this returns, or skips."""
        log.error(
            "passive folder of member %s: refusing %s: a symbolic link or not a regular "
            "file or folder (links are never followed in passive folders)",
            self.member_id,
            os.path.join(self.root, where),
        )
        return UnsafePath(err, f"refused {where}: a link, or not a regular file or folder")

    @contextmanager
    def _folder(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of root/parts..., each component opened without following links."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._refuse(".", exc.errno) from exc
            raise
        try:
            for i, name in enumerate(parts):
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, dir_fd=fd)
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise self._refuse("/".join(parts[: i + 1]), exc.errno) from exc
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _lstat(self, key: str) -> os.stat_result | None:
        *head, name = self._parts(key)
        try:
            with self._folder(head) as fd:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def ensure_layout(self) -> None:
        for name in (DONE, FAILED, PROCESSING):
            with self._folder([name], create=True):
                pass

    def list_submitted(self) -> Listing:
        now = datetime.now(UTC)
        files: list[SubmittedFile] = []
        top = SUBMITTED.rstrip("/")
        with self._folder([]) as root_fd:
            try:
                st = os.stat(top, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                return Listing(files=files, now=now)
            if not stat.S_ISDIR(st.st_mode):
                raise self._refuse(top, errno.ENOTDIR)
            walk = os.fwalk(top, dir_fd=root_fd, follow_symlinks=False)
            for dirpath, dirnames, filenames, dir_fd in walk:
                dirnames[:] = sorted(self._subfolders(dirpath, dirnames, dir_fd))
                for raw in sorted(filenames):
                    if raw.startswith("."):
                        continue
                    name = _utf8_name(dir_fd, dirpath, raw)
                    if name is None:
                        continue
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISLNK(st.st_mode):
                        self._refuse(f"{dirpath}/{name}")
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    files.append(
                        SubmittedFile(
                            key=f"{dirpath}/{name}",
                            size=st.st_size,
                            fingerprint=_fingerprint(st),
                            modified=datetime.fromtimestamp(st.st_mtime, UTC),
                        )
                    )
        return Listing(files=files, now=now)

    def _subfolders(self, dirpath: str, dirnames: list[str], dir_fd: int) -> Iterator[str]:
        """The folders fwalk may enter; fwalk lists links to folders here but never enters them."""
        for raw in dirnames:
            if raw.startswith("."):
                continue
            try:
                st = os.stat(raw, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                self._refuse(f"{dirpath}/{raw}")
                continue
            name = _utf8_name(dir_fd, dirpath, raw)
            if name is not None:
                yield name

    def work_key(self, file: SubmittedFile, token: str) -> str:
        return f"{PROCESSING}/{token}/{file.relative}"

    def take(self, file: SubmittedFile, work_key: str) -> bool:
        *src_head, src_name = self._parts(file.key)
        *dst_head, dst_name = self._parts(work_key)
        if self._lstat(work_key) is not None:
            return True
        with self._folder(dst_head, create=True) as dst_fd:
            try:
                with self._folder(src_head) as src_fd:
                    st = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode) or _fingerprint(st) != file.fingerprint:
                        return False  # rewritten since listed: a new version, the next scan sees it
                    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except FileNotFoundError:
                return False
        return True

    def fetch(self, work_key: str, file: SubmittedFile, dest: Path) -> None:
        *head, name = self._parts(work_key)
        with self._folder(head) as dir_fd:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._refuse(work_key) from exc
                raise
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise self._refuse(work_key, errno.EINVAL)
                os.set_blocking(fd, True)
                try:
                    # A hard link to the same inode, which fstat saw is a regular file.
                    os.link(name, dest, src_dir_fd=dir_fd, follow_symlinks=False)
                    if os.stat(dest, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                        return
                    os.unlink(dest)  # swapped between open and link: copy what we opened
                except OSError:
                    pass
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)

    def exists(self, key: str) -> bool:
        return self._lstat(key) is not None

    def move(self, work_key: str, dest_key: str, file: SubmittedFile | None) -> None:
        *src_head, src_name = self._parts(work_key)
        *dst_head, dst_name = self._parts(dest_key)
        if self._lstat(work_key) is None:
            if self._lstat(dest_key) is not None:
                return
            raise MoveError(f"{work_key!r} vanished before it could be moved to {dest_key!r}")
        with self._folder(src_head) as src_fd, self._folder(dst_head, create=True) as dst_fd:
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        self._tidy(src_head)

    def _tidy(self, head: list[str]) -> None:
        """Remove the now-empty parking folders under .processing/ (best effort)."""
        while len(head) > 1 and head[0] == PROCESSING:
            *parent, name = head
            with self._folder(parent) as fd:
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        return
                    raise
            head = parent

    def max_key_bytes(self) -> int:
        return 4000

    def max_component_bytes(self) -> int | None:
        return 255


def _utf8_name(dir_fd: int, dirpath: str, name: str) -> str | None:
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
    try:
        os.stat(safe, dir_fd=dir_fd, follow_symlinks=False)
        log.error("cannot rename %r to %r in %s: the name is taken", name, safe, dirpath)
        return None
    except FileNotFoundError:
        pass
    try:
        os.rename(name, safe, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return safe


class FolderBackend(PassiveBackend):
    """Areas under <data-dir>/passive/<member_id>/ for known members.

    A member's folder must be a real folder: a link named after a member (to another
    member's folder, or anywhere else) is refused and logged.
    """

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
            if not (
                name.isascii() and name.isdigit() and str(int(name)) == name and int(name) in known
            ):
                continue
            mode = child.lstat().st_mode
            if stat.S_ISLNK(mode):
                log.error(
                    "passive folder of member %s: refusing %s: a symbolic link "
                    "(links are never followed in passive folders)",
                    name,
                    child,
                )
            elif stat.S_ISDIR(mode):
                out.append(FolderArea(child, int(name)))
        return out
