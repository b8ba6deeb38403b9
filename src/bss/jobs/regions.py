"""The catch-up loop of store regions: apply to each other region what it is owed.

A job completes in the local region; every other region is owed a replay of its kept file
with the job's seq base, as of the job's own time, with the config and segment registry of
its run (bss.store.regions keeps them), so the replay writes exactly the local memberships.
Real-time posts are owed their batch as applied (seqs and all), segment deletions their
seq. One loop per process (a bss.queue Runner) takes due rows from the
leased queue (never two processes on one row), and a region that cannot be reached is
retried with a backoff until it is back: nothing is lost, and the file stays until every
region has it.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from bss.formats.config import BatchSegmentConfig
from bss.identity.ingest import LINKS, replay_ttl_days
from bss.ingest.files import FileRun, LinkFile, SegmentFile, run_file
from bss.ingest.registry import SegmentRegistry
from bss.jobs.models import jobs
from bss.jobs.service import JobService
from bss.jobs.worker import LeaseLost, Stopping, StoreHandle
from bss.lifecycle.floors import set_floors
from bss.lifecycle.optout import MemberSuppression, SuppressionList
from bss.lifecycle.replace import REPLACE, replay_floors, written_keys
from bss.queue import Fault, Heartbeat, Runner, classify
from bss.store import regions

log = logging.getLogger("bss.regions")


class RegionCatchUp:
    def __init__(
        self, service: JobService, stores: StoreHandle, stop: threading.Event, name: str
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.db = service.db
        self.stores = stores
        self.stop = stop
        self.name = name
        self.lease = self.settings.job_lease_seconds

    def run_forever(self) -> None:
        Runner(
            self.name, self.run_once, self.stop, poll_seconds=self.settings.worker_poll_seconds
        ).run_forever()

    def run_once(self) -> bool:
        """Apply one due row; False when none was due."""
        row = regions.claim_due(self.db, self.name, self.lease)
        if row is None:
            return False
        ctx = {"region": row["region"], "attempt": row["attempts"]}
        try:
            self._apply(row, ctx)
        except (LeaseLost, Stopping) as exc:
            if isinstance(exc, Stopping):
                regions.give_back(self.db, row, self.name)
            return True
        except _Gone as exc:
            log.error("region write cannot be applied", extra={**ctx, "reason": str(exc)})
            regions.mark_failed(self.db, row, self.name, str(exc), retry_max_seconds=0, final=True)
            return True
        except Exception as exc:
            self._failed(row, ctx, exc)
            return True
        if regions.mark_applied(self.db, row, self.name):
            log.info("region caught up", extra={**ctx, "job": row["job_id"]})
        return True

    def _apply(self, row: dict[str, Any], ctx: dict[str, Any]) -> None:
        if row["job_id"] is not None:
            self._replay(row, ctx)
        elif row["batch"] is not None:
            regions.apply_batch(self.stores.get(row["region"]), regions.read_batch(row["batch"]))
        else:
            store = self.stores.get(row["region"])
            if row["segment_id"] is not None:
                store.delete_segment(row["segment_id"], row["delete_seq"])
            if row["links_scope"] is not None:
                store.delete_scope_links(row["links_scope"])

    def _failed(self, row: dict[str, Any], ctx: dict[str, Any], exc: Exception) -> None:
        """Retried after a backoff, whoever's fault it is (a region is owed its writes for as
        long as it takes). The region being down holds its other rows back as long, so it
        is tried once per backoff; a failure of the row's own holds back only that row."""
        down = classify(exc) is Fault.INFRASTRUCTURE
        reason = f"{type(exc).__name__}: {exc}"
        if down:
            log.warning("region catch-up failed; will retry", extra={**ctx, "reason": reason})
        else:
            log.exception("region write failed; will retry", extra=ctx)
        regions.mark_failed(
            self.db,
            row,
            self.name,
            reason,
            retry_max_seconds=self.settings.region_retry_max_seconds,
            region_waits=down,
        )

    def _replay(self, row: dict[str, Any], ctx: dict[str, Any]) -> None:
        job = self._job(row["job_id"])
        inputs = regions.replay_inputs(self.db, row["job_id"])
        files = self.service.files
        if job is None or inputs is None:
            raise _Gone("the job is gone")
        if not job["file_path"] or job["file_deleted"] or not files.exists(job["file_path"]):
            raise _Gone("the kept file is gone")
        ctx["job_id"] = job["job_id"]
        applied_as_of, config_json, records = inputs
        store = self.stores.get(row["region"])  # a region that is down raises here
        beat = Heartbeat(
            "region-lease",
            lambda: regions.renew(self.db, row["id"], self.name, self.lease),
            max(1.0, self.lease / 3),
        )

        def progress(_fraction: float) -> None:
            if beat.lost.is_set():
                raise LeaseLost(job["job_id"])
            if self.stop.is_set():
                raise Stopping(job["job_id"])

        replacing = job["mode"] == REPLACE
        with beat, written_keys(store, replacing) as written:
            with files.local_copy(job["file_path"]) as path:
                # The same list decides as locally: by seq, whenever the replay runs.
                suppress = MemberSuppression(
                    SuppressionList.of(self.db, self.settings), job["member_id"]
                )
                kind: SegmentFile | LinkFile = (
                    LinkFile(replay_ttl_days(config_json))
                    if job["file_type"] == LINKS
                    else SegmentFile(
                        BatchSegmentConfig.model_validate_json(config_json),
                        SegmentRegistry.from_records(records),
                    )
                )
                run = FileRun(
                    job["member_id"],
                    job["seq_base"],
                    store,
                    applied_as_of,
                    kind,
                    progress=progress,
                    write_progress=progress,
                    suppress=suppress,
                    written=written,
                )
                result = run_file(path, run, self.settings)
            if replacing and job["phase"] == "completed":
                # The region gets the floors with the job: after its pairs, as locally.
                replay_floors(
                    store,
                    job["replace_state"],
                    job["seq_base"],
                    functools.partial(
                        set_floors, self.db, seq=job["seq_base"], region=row["region"]
                    ),
                    written,
                )
        applied = (result.pairs_added, result.pairs_removed)
        if applied != (job["pairs_added"], job["pairs_removed"]):
            # Same file, seqs, time, config and registry: this would be a bug, not a fault.
            log.error(
                "region replay applied other counts than the job",
                extra={
                    **ctx,
                    "replayed": applied,
                    "job": (job["pairs_added"], job["pairs_removed"]),
                },
            )

    def _job(self, job_pk: int) -> Any | None:
        with self.db.connect() as conn:
            return conn.execute(jobs.select().where(jobs.c.id == job_pk)).mappings().first()


class _Gone(Exception):
    """What a region is owed can never be applied (the job or its kept file is gone)."""
