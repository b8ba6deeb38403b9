"""The passive-upload scanner: submitted/ -> a job -> done/ or failed/, exactly once.

`run_passive(settings, job_service, stop_event)` is the loop `bss serve` and `bss worker`
run in a thread. Each scan (every BSS_PASSIVE_SCAN_SECONDS) it visits every area (the
local folder of every known member that has one, and, with BSS_PASSIVE_S3_ENABLED, every
existing bucket bss-<member_id>-<region>) and:

1. resumes abandoned claims of that area (a scanner died; its lease expired): a claim
   without a job starts over, a claim with a job waits for the job and finishes the move;
2. claims every new, old-enough file with an INSERT into `passive_claims` (the unique
   identity means exactly one scanner wins), downloads it to the data dir, hands it to
   `JobService.submit_file`, and records the job;
3. between scans, polls the jobs it started (without blocking scanning), and when a job
   reaches `completed` or `error` moves the file to done/ or failed/
   `<relative name>-<JOB_ID>`, then marks the claim `moved`.

A file whose name has `.links` as one of its dotted parts (`crm.links.csv.gz`,
`graph.links.avro`, `today.links`) is a link file (`file_type` links, bss.identity.ingest);
every other file is a segment file. A link file named as a replace-mode upload
(`replace.graph.links`) gets a job in error `replace_links`: replace mode is for segment files.

Every step is idempotent and recorded before the next one starts, so a crash anywhere
(including between S3's copy and delete) is finished by the next scanner without a
second job, and without losing the file.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from bss.formats.detect import EMPTY_FILE
from bss.identity.ingest import E_LINKS_REPLACE, LINKS
from bss.lifecycle.replace import REPLACE, passive_mode
from bss.passive.claims import ClaimStore, claim_identity
from bss.passive.folder import FolderBackend, UnsafePath
from bss.passive.models import CLAIMED, JOB_CREATED, MOVED, passive_claims
from bss.passive.storage import (
    DONE,
    FAILED,
    MoveError,
    PassiveArea,
    PassiveBackend,
    SubmittedFile,
    destination_key,
)
from bss.queue import Fault, Heartbeat, Runner, backoff, classify

log = logging.getLogger(__name__)

FINAL_PHASES = {"completed": DONE, "error": FAILED}

FILESIZE_LIMIT_EXCEEDED = "FILESIZE_LIMIT_EXCEEDED"
FILESIZE_MESSAGE = "Member exceeds maximum byte size allowed for a file"
EMPTY_MESSAGE = "The file is empty (0 bytes)"
#: A link file named as a replace-mode upload (replace.*): never processed.
REPLACE_LINKS = "replace_links"
#: Longest wait of a claim whose step the infrastructure failed.
INFRA_RETRY_MAX_SECONDS = 60.0


def passive_file_type(key: str) -> str:
    """The naming convention: a file named `<anything>.links[.<ext>...]` is a link file."""
    name = key.rsplit("/", 1)[-1]
    return LINKS if LINKS in name.lower().split(".")[1:] else "segments"


@dataclass(slots=True)
class _InFlight:
    claim_id: int
    area: PassiveArea
    file: SubmittedFile
    work_key: str
    job_id: str | None = None
    #: a step failed (storage or job service unreachable, ...): retry not before this
    retry_at: float = 0.0
    failures: int = 0
    outcome: str | None = None
    dest_key: str | None = None
    error: str | None = None


class _LostClaim(Exception):
    """Another scanner took the claim over (our lease had run out)."""


@dataclass(slots=True)
class ScanStats:
    """What one scan/poll did (for logs and tests)."""

    claimed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    #: old enough, but this scanner already has max_inflight files of the member in flight
    deferred: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)


def default_backends(settings: Any) -> list[PassiveBackend]:
    backends: list[PassiveBackend] = [FolderBackend(Path(settings.data_dir) / "passive")]
    if getattr(settings, "passive_s3_enabled", False):
        from bss.passive.s3 import S3Backend

        regions = [r.strip() for r in settings.passive_regions.split(",") if r.strip()]
        backends.append(S3Backend(regions, endpoint_url=settings.s3_endpoint_url))
    return backends


def members_from_db(engine: Engine) -> Callable[[], list[int]]:
    """Known members: every row of the members table."""

    def known() -> list[int]:
        from bss.accounts.models import members

        with engine.connect() as conn:
            return [int(m) for m in conn.execute(select(members.c.id)).scalars()]

    return known


def _engine_of(job_service: Any, settings: Any) -> Engine:
    for name in ("engine", "db", "_engine", "_db"):
        candidate = getattr(job_service, name, None)
        if isinstance(candidate, Engine):
            return candidate
    from bss.db import make_engine

    return make_engine(settings.resolved_database_url)


class PassiveScanner:
    def __init__(
        self,
        settings: Any,
        job_service: Any,
        *,
        engine: Engine | None = None,
        backends: list[PassiveBackend] | None = None,
        member_ids: Callable[[], Iterable[int]] | None = None,
        owner: str | None = None,
        lease_seconds: float | None = None,
        min_age_seconds: float | None = None,
        retry_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = job_service
        self.engine = engine or _engine_of(job_service, settings)
        passive_claims.create(self.engine, checkfirst=True)
        self.claims = ClaimStore(self.engine)
        self.backends = backends if backends is not None else default_backends(settings)
        self.member_ids = member_ids or members_from_db(self.engine)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        scan = float(getattr(settings, "passive_scan_seconds", 300))
        self.lease_seconds = float(
            lease_seconds
            if lease_seconds is not None
            else getattr(settings, "passive_lease_seconds", None) or max(900.0, 3 * scan)
        )
        self.min_age = float(
            min_age_seconds if min_age_seconds is not None else settings.passive_min_age_seconds
        )
        self.retry_seconds = float(retry_seconds if retry_seconds is not None else min(scan, 60))
        self.max_file_bytes = int(settings.max_file_bytes)
        self.max_inflight = max(
            1, int(getattr(settings, "passive_max_inflight_per_member", 4) or 4)
        )
        self._backlog = False
        self.tmp_dir = Path(settings.data_dir) / "passive-tmp"
        self.inflight: dict[int, _InFlight] = {}
        self._last_renew = 0.0
        # The loop's schedule (run/step).
        self._scan_every = 300.0
        self._next_scan = 0.0
        self._next_housekeeping = 0.0
        self._after_scan = 0
        #: claims another scanner took from us (our lease ran out): drop, never finish
        self._lost: set[int] = set()
        self._renew_lock = threading.Lock()

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        scan_every = float(getattr(self.settings, "passive_scan_seconds", 300))
        poll_every = float(getattr(self.settings, "passive_poll_seconds", 2.0) or 2.0)
        poll_every = max(0.05, min(poll_every, scan_every))
        self._scan_every = scan_every
        # Leases are renewed by their own thread, so a long download or a slow scan never
        # lets them run out while this scanner is alive.
        beat = Heartbeat("passive-lease", self._renew_all, max(0.05, self.lease_seconds / 4))
        try:
            with beat:
                Runner(
                    f"passive:{self.owner}", self.step, stop_event, poll_seconds=poll_every
                ).run_forever()
        finally:
            self.shutdown()

    def step(self) -> bool:
        """Housekeeping and a scan when they are due, then a poll; True when deferred files
        can be scanned again at once (a slot came free)."""
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + 3600
            try:
                self.housekeeping()
            except Exception:  # noqa: BLE001
                log.exception("passive housekeeping failed")
        if now >= self._next_scan:
            self._next_scan = now + self._scan_every
            try:
                self.scan_once()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("passive scan failed")
            self._after_scan = len(self.inflight)
        try:
            stats = self.poll_once()
        except Exception:  # noqa: BLE001
            log.exception("passive poll failed")
            stats = ScanStats()
        if self._backlog and (stats.moved or len(self.inflight) < self._after_scan):
            self._next_scan = 0.0  # files were deferred and a slot is free: scan again now
            return True
        return False

    def shutdown(self) -> None:
        """Hand our unfinished claims over: whoever scans next resumes them immediately."""
        ids = list(self.inflight)
        try:
            self.claims.let_go(ids, self.owner)
        except Exception:  # noqa: BLE001 - the leases will run out by themselves
            log.exception("releasing passive claims failed")
        self.inflight.clear()

    def housekeeping(self) -> None:
        """Drop downloads a dead scanner left behind, and claims older than the job history."""
        if self.tmp_dir.is_dir():
            cutoff = time.time() - self.lease_seconds
            for tmp in self.tmp_dir.glob("*.upload"):
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                except FileNotFoundError:
                    pass
        days = float(getattr(self.settings, "history_days", 30))
        self.claims.purge_moved(days * 86400)

    def _renew_all(self) -> bool:
        """The heartbeat's beat: the scanner's leases as a whole are never lost (a claim
        taken over is dropped by the next poll)."""
        self.renew_leases()
        return True

    def renew_leases(self) -> None:
        """Extend the leases of every claim we hold; note the ones we lost."""
        with self._renew_lock:
            ids = list(self.inflight.keys())
            if not ids:
                return
            still_ours = self.claims.renew(ids, self.owner, self.lease_seconds)
            lost = set(ids) - still_ours
            if lost:
                log.error("passive claims %s were taken over by another scanner", sorted(lost))
                self._lost |= lost
            self._last_renew = time.monotonic()

    # -- one scan ----------------------------------------------------------------------

    def areas(self) -> list[PassiveArea]:
        members = list(self.member_ids())
        out: list[PassiveArea] = []
        for backend in self.backends:
            try:
                out.extend(backend.areas(members))
            except Exception:  # noqa: BLE001 - one unreachable backend must not stop the rest
                log.exception("listing %s areas failed", backend.backend)
        return out

    def scan_once(self) -> ScanStats:
        stats = ScanStats()
        self._backlog = False
        for area in self.areas():
            try:
                self._scan_area(area, stats)
            except UnsafePath:
                pass  # a link in a member's folder: refused and logged where it was found
            except Exception:  # noqa: BLE001
                log.exception("scanning %s failed", area.location)
        if stats.claimed or stats.resumed or stats.deferred:
            log.info(
                "passive scan",
                extra={
                    "claimed": len(stats.claimed),
                    "resumed": len(stats.resumed),
                    "waiting": len(stats.waiting),
                    "deferred": len(stats.deferred),
                    "in_flight": len(self.inflight),
                },
            )
        return stats

    def _scan_area(self, area: PassiveArea, stats: ScanStats) -> None:
        area.ensure_layout()
        listing = area.list_submitted()
        # 1. abandoned claims at this place (their scanner died or let them go)
        while (
            row := self.claims.take_over_next(
                area.location, self.owner, self.lease_seconds, skip=list(self.inflight)
            )
        ) is not None:
            log.warning("taking over abandoned passive claim %s (%s)", row["id"], row["source_key"])
            stats.resumed.append(row["source_key"])
            self._resume(area, row)
        # 2. new files, oldest first, at most max_inflight of this place's at once
        min_age = timedelta(seconds=self.min_age)
        for file in sorted(listing.files, key=lambda f: (f.modified, f.key)):
            if file.key in listing.busy or listing.now - file.modified < min_age:
                stats.waiting.append(file.key)
                continue
            mine = sum(1 for f in self.inflight.values() if f.area.location == area.location)
            if mine >= self.max_inflight:
                stats.deferred.append(file.key)
                self._backlog = True
                continue
            try:
                self._claim_new(area, file, stats)
            except Exception:  # noqa: BLE001 - one bad file must not block the others
                log.exception("claiming %s in %s failed", file.key, area.location)

    def _claim_new(self, area: PassiveArea, file: SubmittedFile, stats: ScanStats) -> None:
        identity = self._free_identity(area, file)
        if identity is None:
            return  # claimed by us or another scanner, in progress
        row = self.claims.insert(
            identity=identity,
            backend=area.backend,
            location=area.location,
            member_id=area.member_id,
            source_key=file.key,
            fingerprint=file.fingerprint,
            size=file.size,
            owner=self.owner,
            lease_seconds=self.lease_seconds,
            work_key=area.work_key(file, identity[:16]),
        )
        if row is None:
            return  # another scanner won the INSERT
        stats.claimed.append(file.key)
        flight = _InFlight(row["id"], area, file, row["work_key"])
        self.inflight[row["id"]] = flight
        self._start(flight, fresh=True)

    def _file_of(self, row: dict[str, Any]) -> SubmittedFile:
        return SubmittedFile(
            key=row["source_key"],
            size=int(row["size"] or 0),
            fingerprint=row["fingerprint"],
            modified=row["created_at"],
        )

    def _resume(self, area: PassiveArea, row: dict[str, Any]) -> None:
        flight = _InFlight(
            row["id"], area, self._file_of(row), row["work_key"] or row["source_key"]
        )
        flight.job_id = row["job_id"]
        flight.outcome, flight.dest_key, flight.error = (
            row["outcome"],
            row["dest_key"],
            row["error"],
        )
        self.inflight[row["id"]] = flight
        if row["state"] == CLAIMED:
            self._start(flight, fresh=False)
        # JOB_CREATED: the next poll waits for the job and finishes the move

    def _free_identity(self, area: PassiveArea, file: SubmittedFile) -> str | None:
        """The claim identity for this file version, or None if it is being handled.

        A version whose claim is already `moved` but which is back in submitted/ is a new
        upload of identical bytes (same name, same ETag/mtime): it gets the next generation
        and is processed again, like any new upload. (A move is only recorded as done once
        the source is deleted, so this is never the old file.)
        """
        generation = 0
        while True:
            fingerprint = file.fingerprint + (f"#gen={generation}" if generation else "")
            identity = claim_identity(area.backend, area.location, file.key, fingerprint)
            existing = self.claims.get(identity)
            if existing is None:
                return identity
            if existing["state"] != MOVED:
                return None
            generation += 1

    # -- starting a job ----------------------------------------------------------------

    def _start(self, flight: _InFlight, *, fresh: bool) -> None:
        """Take the file and create its job (state claimed -> job_created)."""
        area, file = flight.area, flight.file
        try:
            if not area.take(file, flight.work_key):
                # Gone, or rewritten since we listed it (the new version is a new claim).
                log.info("passive file %s vanished or changed before it was taken", file.key)
                self.claims.release(flight.claim_id, self.owner)
                self.inflight.pop(flight.claim_id, None)
                return
            job = None if fresh else self._orphan_job(flight)
            if job is None:
                job = self._create_job(flight)
            else:
                log.warning("adopting job %s created by a scanner that died", job["job_id"])
        except _LostClaim:
            self.inflight.pop(flight.claim_id, None)
            return
        except Exception as exc:  # noqa: BLE001 - keep the claim, retry later
            self._retry_later(flight, exc, "starting the job for")
            return
        if not self.claims.set_job(flight.claim_id, self.owner, job["job_id"], job.get("id")):
            # Only possible if our lease ran out between the check in _create_job and here.
            log.error("lost passive claim %s while creating job %s", flight.claim_id, job["job_id"])
            self.inflight.pop(flight.claim_id, None)
            return
        flight.job_id = job["job_id"]
        flight.failures = 0
        flight.retry_at = 0.0

    def _orphan_job(self, flight: _InFlight) -> dict | None:
        """The job a dead scanner created for this claim but did not record, if any.

        The window is between JobService.submit_file returning and the claim's UPDATE: the
        job has this member, source, key and size, was created no earlier than the claim,
        and no claim refers to it.
        """
        from bss.jobs.models import jobs

        row = self.claims.by_id(flight.claim_id)
        if row is None:
            return None
        since = int(row["created_at"].replace(tzinfo=UTC).timestamp()) - 1
        referenced = select(passive_claims.c.job_id).where(passive_claims.c.job_id.is_not(None))
        with self.engine.connect() as conn:
            job_id = conn.execute(
                select(jobs.c.job_id)
                .where(
                    jobs.c.member_id == flight.area.member_id,
                    jobs.c.upload_source == flight.area.backend,
                    jobs.c.source_key == flight.file.key,
                    jobs.c.created_on >= since,
                    jobs.c.file_bytes == flight.file.size,
                    jobs.c.job_id.not_in(referenced),
                )
                .order_by(jobs.c.id)
                .limit(1)
            ).scalar()
        return None if job_id is None else self.jobs.get_job(job_id)

    def _create_job(self, flight: _InFlight) -> dict:
        area, file = flight.area, flight.file
        common = dict(upload_source=area.backend, source_key=file.key)
        if file.size == 0:
            self._ensure_ours(flight)
            return self._rejected_job(area.member_id, file, EMPTY_FILE, EMPTY_MESSAGE, **common)
        if file.size > self.max_file_bytes:
            self._ensure_ours(flight)
            return self._rejected_job(
                area.member_id, file, FILESIZE_LIMIT_EXCEEDED, FILESIZE_MESSAGE, **common
            )
        file_type, (mode, force) = passive_file_type(file.key), passive_mode(file.key)
        if file_type == LINKS and mode == REPLACE:
            self._ensure_ours(flight)
            return self._rejected_job(
                area.member_id, file, REPLACE_LINKS, E_LINKS_REPLACE, **common
            )
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.upload"
        try:
            area.fetch(flight.work_key, file, tmp)
            self._ensure_ours(flight)  # the download may have been long
            return self.jobs.submit_file(
                area.member_id, tmp, file_type=file_type, mode=mode, force=force, **common
            )
        finally:
            tmp.unlink(missing_ok=True)

    def _ensure_ours(self, flight: _InFlight) -> None:
        """Renew our lease on the claim right before creating its job; raise if it is gone."""
        if flight.claim_id not in self.claims.renew(
            [flight.claim_id], self.owner, self.lease_seconds
        ):
            log.error("passive claim %s was taken over before its job was created", flight.claim_id)
            raise _LostClaim(flight.claim_id)

    def _rejected_job(
        self,
        member_id: int,
        file: SubmittedFile,
        error_code: str,
        message: str,
        *,
        upload_source: str,
        source_key: str,
    ) -> dict:
        """A job that is already in phase error (the file is never processed)."""
        kwargs = dict(
            upload_source=upload_source,
            source_key=source_key,
            file_bytes=file.size,
            error_code=error_code,
            error_message=message,
        )
        return self.jobs.submit_rejected(member_id, **kwargs)

    # -- between scans -----------------------------------------------------------------

    def poll_once(self) -> ScanStats:
        """Renew our leases, retry failed starts, and move files whose job finished."""
        stats = ScanStats()
        if self.inflight and time.monotonic() - self._last_renew >= self.lease_seconds / 4:
            self.renew_leases()
        while self._lost:
            self.inflight.pop(self._lost.pop(), None)
        for flight in list(self.inflight.values()):
            if flight.retry_at > time.monotonic():
                continue
            if flight.job_id is None:
                self._start(flight, fresh=False)
                continue
            try:
                self._check(flight, stats)
            except Exception as exc:  # noqa: BLE001 - retry later
                self._retry_later(flight, exc, "finishing")
        return stats

    def _retry_later(self, flight: _InFlight, exc: Exception, doing: str) -> None:
        """A step of the claim failed: tried again later. An outage of the infrastructure
        (the database, the bucket) is retried within a minute however long it lasts, so the
        claim goes on soon after it ends; a failure of the file's own waits longer each time."""
        flight.failures += 1
        if classify(exc) is Fault.INFRASTRUCTURE:
            wait = backoff(
                flight.failures,
                first=min(self.retry_seconds, INFRA_RETRY_MAX_SECONDS),
                cap=INFRA_RETRY_MAX_SECONDS,
            )
            log.warning(
                "%s %s waits for the infrastructure (%s); will retry in %.0f s",
                doing,
                flight.file.key,
                exc,
                wait,
            )
        else:
            wait = min(self.retry_seconds * flight.failures, 3600)
            log.warning("%s %s failed (%s); will retry", doing, flight.file.key, exc)
        flight.retry_at = time.monotonic() + wait

    def _check(self, flight: _InFlight, stats: ScanStats) -> None:
        if flight.dest_key is None:
            job = self.jobs.get_job(flight.job_id)
            error: str | None
            if job is None:
                outcome, error = FAILED, f"job {flight.job_id} no longer exists"
            else:
                phase = job.get("phase")
                if phase not in FINAL_PHASES:
                    return  # still running
                outcome = FINAL_PHASES[phase]
                error = job.get("error_code") if phase == "error" else None
            dest = destination_key(
                outcome,
                flight.file.relative,
                flight.job_id,  # type: ignore[arg-type]
                max_key_bytes=flight.area.max_key_bytes(),
                max_component_bytes=flight.area.max_component_bytes(),
            )
            if not self.claims.set_outcome(flight.claim_id, self.owner, outcome, dest, error):
                row = self.claims.by_id(flight.claim_id)
                if row is None or row["owner"] != self.owner:
                    self.inflight.pop(flight.claim_id, None)
                    return
                outcome, dest, error = row["outcome"], row["dest_key"], row["error"]
            flight.outcome, flight.dest_key, flight.error = outcome, dest, error
        move_error = None
        try:
            flight.area.move(flight.work_key, flight.dest_key, flight.file)
        except MoveError as exc:
            # Neither source nor destination exists: someone deleted the file. Nothing can
            # be moved; record it rather than retry forever.
            move_error = str(exc)
            log.error("%s", exc)
        self.claims.set_moved(flight.claim_id, self.owner, error=move_error)
        self.inflight.pop(flight.claim_id, None)
        log.info(
            "passive file moved",
            extra={
                "job_id": flight.job_id,
                "member_id": flight.area.member_id,
                "location": flight.area.location,
                "source_key": flight.file.key,
                "dest_key": flight.dest_key,
            },
        )
        stats.moved.append(flight.dest_key)

    def drain(self, timeout: float = 60.0, interval: float = 0.05) -> None:
        """Poll until nothing is in flight (tests, and a clean shutdown)."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            self.poll_once()
            if self.inflight:
                time.sleep(interval)
        if self.inflight:
            raise TimeoutError(f"passive jobs still in flight: {sorted(self.inflight)}")


def run_passive(settings: Any, job_service: Any, stop_event: threading.Event) -> None:
    """Scan passive uploads until stop_event is set (the loop `bss serve` / `bss worker` run)."""
    PassiveScanner(settings, job_service).run(stop_event)


__all__ = ["PassiveScanner", "ScanStats", "run_passive", "JOB_CREATED", "CLAIMED", "MOVED"]
