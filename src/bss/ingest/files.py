"""One call for every run of an uploaded file: a job's run, its replay in another store
region and `bss validate`. `FileRun` says what the run is (whose file, which seqs, which
store, as of when, what kind of file with its own inputs, and the hooks of its caller);
`run_file` sends it down the segment path (bss.ingest.engine) or the link path
(bss.identity.ingest) with the limits of the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bss.formats.config import BatchSegmentConfig
from bss.identity.ingest import ingest_links_file
from bss.ingest.engine import Suppress, ingest_file
from bss.ingest.registry import SegmentRegistry
from bss.ingest.result import IngestResult
from bss.settings import Settings
from bss.store.base import MembershipStore
from bss.store.sorted_runs import WrittenKeys


@dataclass(frozen=True)
class SegmentFile:
    """A segment file's own inputs: the member's config and the segments it may name."""

    config: BatchSegmentConfig
    registry: SegmentRegistry


@dataclass(frozen=True)
class LinkFile:
    """A link file's own inputs: the TTL its links get (fixed by the job's first run) and
    how many error lines its log keeps."""

    ttl_days: int
    log_limit: int = 100


@dataclass(frozen=True)
class FileRun:
    member_id: int
    seq_base: int
    store: MembershipStore
    #: The time the run applies as of: memberships' `now`, links' assertion time. A
    #: replay passes the job's, so it writes what the job wrote.
    applied_as_of: int
    kind: SegmentFile | LinkFile
    error_report_path: Path | None = None
    progress: Callable[[float], None] | None = None
    #: Segment files only: the fraction written of what the store held back, and each
    #: applied batch (the load figures).
    write_progress: Callable[[float], None] | None = None
    on_applied: Callable[[pl.DataFrame], None] | None = None
    suppress: Suppress | None = None
    #: Segment files of a replace job only: keeps the keys the store writes (`ingest_file`).
    written: WrittenKeys | None = None


def run_file(path: Path, run: FileRun, settings: Settings) -> IngestResult:
    """Validate and apply the file; never raises for bad input (see ingest_file)."""
    kind = run.kind
    if isinstance(kind, LinkFile):
        return ingest_links_file(
            path,
            member_id=run.member_id,
            seq_base=run.seq_base,
            store=run.store,
            asserted_at=run.applied_as_of,
            ttl_days=kind.ttl_days,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            error_report_path=run.error_report_path,
            log_limit=kind.log_limit,
            progress=run.progress,
            suppress=run.suppress,
        )
    return ingest_file(
        path,
        member_id=run.member_id,
        seq_base=run.seq_base,
        config=kind.config,
        registry=kind.registry,
        store=run.store,
        now=run.applied_as_of,
        error_report_path=run.error_report_path,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        chunk_bytes=settings.chunk_bytes,
        progress=run.progress,
        write_progress=run.write_progress,
        on_applied=run.on_applied,
        suppress=run.suppress,
        written=run.written,
    )
