"""The small interface every passive-upload storage backend implements.

A *backend* (the local folder, S3) discovers *areas*: one per member and place (a member's
folder, or one bucket per region). An area has the documented layout

    submitted/   the member drops files here (nested prefixes allowed)
    done/        <relative name>-<JOB_ID> once the job completed
    failed/      <relative name>-<JOB_ID> once the job ended in error

and offers the handful of operations the scanner needs. Every operation that changes the
area is idempotent, so a scanner that died half-way can simply redo it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

SUBMITTED = "submitted/"
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SubmittedFile:
    """One version of one file under submitted/."""

    key: str  # full key inside the area, always starting with "submitted/"
    size: int
    #: Changes whenever the file is rewritten (S3: ETag + size + LastModified;
    #: folder: size + mtime_ns + inode). Part of the exactly-once identity.
    fingerprint: str
    modified: datetime  # timezone-aware UTC

    @property
    def relative(self) -> str:
        return self.key[len(SUBMITTED) :]


@dataclass(frozen=True, slots=True)
class Listing:
    files: list[SubmittedFile]
    #: The storage's own idea of "now" (S3: the response's Date header) so that the
    #: minimum-age rule does not depend on clock skew between us and the storage.
    now: datetime
    #: Keys that have an upload in progress (S3 multipart uploads); they wait.
    busy: frozenset[str] = frozenset()


class MoveError(RuntimeError):
    """Neither the source nor the destination of a move exists: the file is gone."""


class PassiveArea(ABC):
    """One member's submitted/done/failed area in one place."""

    #: "s3" or "folder": the job's upload_source.
    backend: str
    member_id: int
    #: A stable identity of the place (part of every claim's identity).
    location: str

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

    @abstractmethod
    def ensure_layout(self) -> None:
        """Create done/ and failed/ (idempotent)."""

    @abstractmethod
    def list_submitted(self) -> Listing:
        """Every complete file under submitted/ (directory markers excluded)."""

    @abstractmethod
    def work_key(self, file: SubmittedFile, token: str) -> str:
        """Where the file sits while its job runs (S3: where it is; folder: a parking spot)."""

    @abstractmethod
    def take(self, file: SubmittedFile, work_key: str) -> bool:
        """Make the file ours at work_key. False if it is gone (someone else took it).

        Idempotent: if the file is already at work_key, that is success.
        """

    @abstractmethod
    def fetch(self, work_key: str, file: SubmittedFile, dest: Path) -> None:
        """Put the file's bytes at dest (a local path); streaming, bounded memory."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def move(self, work_key: str, dest_key: str, file: SubmittedFile | None) -> None:
        """Move work_key to dest_key; idempotent (redoing a finished move is a no-op).

        Raises MoveError if neither exists.
        """

    def max_key_bytes(self) -> int:
        return 1024

    def max_component_bytes(self) -> int | None:
        return None


class PassiveBackend(ABC):
    """Finds the areas of known members."""

    backend: str

    @abstractmethod
    def areas(self, member_ids: Iterable[int]) -> Sequence[PassiveArea]: ...


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def destination_key(
    outcome: str,
    relative: str,
    job_id: str,
    *,
    max_key_bytes: int = 1024,
    max_component_bytes: int | None = None,
) -> str:
    """`<outcome>/<relative>-<JOB_ID>`, deterministic, shortened only when a limit demands it.

    Nested names keep their prefixes: submitted/a/b.txt -> done/a/b.txt-JOBID. If the name
    would exceed the storage's limits, its last component is cut and a short hash of the
    full name is added so distinct long names stay distinct:
    done/a/<start of name>~<hash8>-JOBID.
    """
    head, _, name = relative.rpartition("/")
    prefix = f"{outcome}/{head}/" if head else f"{outcome}/"
    suffix = f"-{job_id}"
    key = f"{prefix}{name}{suffix}"
    comp_ok = max_component_bytes is None or len((name + suffix).encode()) <= max_component_bytes
    if len(key.encode()) <= max_key_bytes and comp_ok:
        return key
    tag = "~" + hashlib.sha256(relative.encode()).hexdigest()[:8]
    budget = max_key_bytes - len(prefix.encode()) - len(tag) - len(suffix)
    if max_component_bytes is not None:
        budget = min(budget, max_component_bytes - len(tag) - len(suffix))
    return f"{prefix}{_truncate_utf8(name, max(budget, 0))}{tag}{suffix}"
