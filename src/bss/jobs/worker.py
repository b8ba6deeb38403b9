"""Workers: claim a queued job, run the ingest engine on its file, record the result.

Crash safety: a job is claimed with a lease that a heartbeat renews while the engine runs.
If the process dies, the lease runs out and another worker claims the job and runs it again
with the seq base recorded at its first run (jobs.seq_base): the store keeps the highest seq
per (user, segment), so the replay rewrites the same entries and yields exactly the store an
uninterrupted run would have, without undoing any job applied in between.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection

from bss.db import now_s
from bss.formats.config import BatchSegmentConfig
from bss.identity.ingest import LINKS, ingest_links_file, link_replay_config
from bss.ingest.engine import ingest_file, segment_log
from bss.ingest.registry import SegmentRegistry
from bss.jobs.service import JobService
from bss.lifecycle.optout import SuppressionList
from bss.lifecycle.replace import (
    REPLACE,
    Refused,
    ReplaceState,
    apply_floors,
    counts_before,
)
from bss.metrics import COUNTERS
from bss.reports.service import SegmentLoads
from bss.segments.service import get_config, registry_for
from bss.settings import Settings
from bss.store import JOB_SEQ_SPAN, MembershipStore, open_store, regions, seqs

log = logging.getLogger("bss.worker")

#: A job whose worker died this many times is failed instead of being retried forever.
MAX_ATTEMPTS = 5
PROGRESS_INTERVAL = 1.0


class LeaseLost(Exception):
    """Another worker owns the job now (ours was presumed dead); stop working on it."""


class Stopping(Exception):
    """The process is shutting down: give the job back for an immediate re-run elsewhere."""


def jobs_wrote_memberships(settings: Settings) -> Callable[[], bool]:
    """Asks the job database whether a completed job wrote memberships to the store."""

    def ask() -> bool:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from bss.db import make_engine
        from bss.jobs.models import jobs

        engine = make_engine(settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                query = select(jobs.c.id).where(jobs.c.phase == "completed", jobs.c.num_valid > 0)
                return conn.execute(query.limit(1)).first() is not None
        except SQLAlchemyError:
            return False  # no job database yet (or not reachable: its own check says so)
        finally:
            engine.dispose()

    return ask


class StoreHandle:
    """Opens the membership stores on first use, once per process: the one store, or with
    store regions (BSS_STORE_REGIONS) one per region. `get()` is the store this process reads
    and completes jobs in (the local region's); `get(name)` a region's."""

    def __init__(
        self,
        url: str,
        *,
        wait_replicas: int | None = None,
        regions: Mapping[str, str] | None = None,
        local_region: str | None = None,
        held_data: Callable[[], bool] | None = None,
    ) -> None:
        self.url = url
        self.wait_replicas = wait_replicas
        #: Whether the job database says the store held data (asked if its file is gone).
        self.held_data = held_data
        #: Region name -> store URL; empty without store regions.
        self.regions: dict[str, str] = dict(regions or {})
        self.local_region = local_region
        self._stores: dict[str | None, MembershipStore] = {}
        # One lock per store: a region that is down (a connect timing out) never holds up
        # the others, least of all the local one.
        self._locks: dict[str | None, threading.Lock] = {
            name: threading.Lock() for name in (None, *self.regions)
        }

    @classmethod
    def for_settings(cls, settings: Settings) -> StoreHandle:
        return cls(
            settings.resolved_store_url,
            wait_replicas=settings.store_wait_replicas,
            regions=settings.regions,
            local_region=settings.local_region,
            held_data=None if settings.store_allow_empty else jobs_wrote_memberships(settings),
        )

    @property
    def remote_regions(self) -> list[str]:
        """The regions other than the local one, which jobs are caught up in afterwards."""
        return [name for name in self.regions if name != self.local_region]

    def get(self, region: str | None = None) -> MembershipStore:
        """The local store (`region` None or the local region's name), or another region's;
        KeyError for a region that is not configured."""
        if region == self.local_region:
            region = None
        url = self.url if region is None else self.regions[region]
        with self._locks[region]:
            store = self._stores.get(region)
            if store is None:
                # Stores are thread-safe themselves (LMDB transactions serve any thread, and
                # other processes open the same environment): one instance per process.
                store = self._stores[region] = open_store(
                    url, wait_replicas=self.wait_replicas, held_data=self.held_data
                )
            return store

    def close(self) -> None:
        for region, lock in self._locks.items():
            with lock:
                store = self._stores.pop(region, None)
                if store is not None:
                    store.close()


class Worker:
    def __init__(
        self,
        service: JobService,
        stores: StoreHandle,
        stop: threading.Event,
        name: str | None = None,
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.stores = stores
        self.stop = stop
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def run_forever(self) -> None:
        log.info("worker started", extra={"worker": self.name})
        while not self.stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # infrastructure trouble (database down, ...): back off
                log.exception("worker loop failed", extra={"worker": self.name})
                worked = False
                self.stop.wait(5)
            if not worked:
                self.stop.wait(self.settings.worker_poll_seconds)
        log.info("worker stopped", extra={"worker": self.name})

    def run_once(self) -> bool:
        row = self.service.claim_next(self.name)
        if row is None:
            return False
        self.process(row)
        return True

    def process(self, row: Any) -> None:  # noqa: C901, PLR0915  to be split (issue 24.5): the job run becomes an object of its own
        job_pk, job_id = row["id"], row["job_id"]
        ctx = {
            "job_id": job_id,
            "job": job_pk,
            "member_id": row["member_id"],
            "attempt": row["attempts"],
        }
        if row["attempts"] > MAX_ATTEMPTS:
            log.error("job failed too often; giving up", extra=ctx)
            self.service.finish(
                job_pk,
                self.name,
                {
                    "phase": "error",
                    "error_code": "processing-error",
                    "error_message": "processing failed repeatedly",
                },
            )
            return
        files = self.service.files
        if not row["file_path"] or not files.exists(row["file_path"]):
            self.service.finish(
                job_pk,
                self.name,
                {
                    "phase": "error",
                    "error_code": "file_missing",
                    "error_message": "the uploaded file is gone",
                },
            )
            return
        store = self.stores.get()
        seq_base = row["seq_base"]
        if seq_base is None:
            seq_base = seqs.reserve(self.service.db, JOB_SEQ_SPAN)
            if not self.service.renew(job_pk, self.name, seq_base=seq_base):
                log.warning("lease lost before the job started", extra=ctx)
                return
        elif row["attempts"] > 1:
            # A previous worker died halfway: the replay reuses its seqs and changes nothing
            # it had written already.
            log.warning("re-running an interrupted job", extra={**ctx, "seq_base": seq_base})
        self.service.start_processing(job_pk, self.name)
        config = get_config(self.service.db, row["member_id"])
        registry = registry_for(self.service.db)
        report = self.service.reports_dir / f"{job_id}.csv"

        lost = threading.Event()
        done = threading.Event()
        state: dict[str, Any] = {"pct": 0, "last": 0.0, "phase": "validating"}

        def heartbeat() -> None:
            interval = max(1.0, self.settings.job_lease_seconds / 3)
            while not done.wait(interval):
                try:
                    alive = self.service.renew(job_pk, self.name)
                except Exception:  # database briefly unreachable: try again next beat
                    log.warning("lease renewal failed", extra=ctx, exc_info=True)
                    continue
                if not alive:
                    lost.set()
                    return

        def report_progress(phase: str, fraction: float) -> None:
            """`percent_complete` is per phase, as documented: `validating` while the file
            is read, then `processing` while the store writes what it held back."""
            if lost.is_set():
                raise LeaseLost(job_id)
            if self.stop.is_set():
                raise Stopping(job_id)
            if phase == "validating" and fraction >= 1.0:
                phase, fraction = "processing", 0.0
            pct = max(0, min(99, int(fraction * 100)))
            t = time.monotonic()
            values: dict[str, Any] = {}
            if phase != state["phase"]:
                state["phase"] = phase
                values.update(phase=phase, validated_time=now_s())
            elif t - state["last"] < PROGRESS_INTERVAL or pct == state["pct"]:
                return
            state["last"], state["pct"] = t, pct
            values["percent_complete"] = pct
            values["last_modified"] = now_s()
            if not self.service.renew(job_pk, self.name, **values):
                lost.set()
                raise LeaseLost(job_id)

        now = now_s()
        # Report figures of this run only; written with the result, so a replay counts once.
        loads = SegmentLoads.at(now)
        replace = None
        if row["mode"] == REPLACE:
            replace = self._replace_state(row, store, config, registry, now)
            if replace is None:
                log.warning("lease lost before the replace job started", extra=ctx)
                return
        suppression = SuppressionList.of(self.service.db, self.settings)
        beat = threading.Thread(target=heartbeat, name=f"lease-{job_id[:8]}", daemon=True)
        beat.start()
        log.info("job processing", extra=ctx)
        links = row["file_type"] == LINKS
        # A link file's links are asserted at the job's recorded upload time: every run and
        # every region gives them the same expiry.
        asserted_at = row["uploaded_time"] or row["created_on"]
        try:
            with files.local_copy(row["file_path"]) as path:
                if links:
                    result = ingest_links_file(
                        path,
                        member_id=row["member_id"],
                        seq_base=seq_base,
                        store=store,
                        asserted_at=asserted_at,
                        ttl_days=self.settings.link_ttl_days,
                        max_decompressed_bytes=self.settings.max_decompressed_bytes,
                        error_report_path=report,
                        log_limit=config.num_error_log_lines,
                        progress=functools.partial(report_progress, "validating"),
                        suppress=functools.partial(suppression.write_mask, row["member_id"]),
                    )
                else:
                    result = ingest_file(
                        path,
                        member_id=row["member_id"],
                        seq_base=seq_base,
                        config=config,
                        registry=registry,
                        store=store,
                        now=now,
                        error_report_path=report,
                        max_decompressed_bytes=self.settings.max_decompressed_bytes,
                        chunk_bytes=self.settings.chunk_bytes,
                        progress=functools.partial(report_progress, "validating"),
                        write_progress=functools.partial(report_progress, "processing"),
                        on_applied=loads.add,
                        suppress=functools.partial(suppression.write_mask, row["member_id"]),
                    )
            refused = None
            if replace is not None and result.error_code is None:
                # Under the lease (the heartbeat still runs): the walks take a while.
                refused = self._set_floors(
                    row, store, config, replace, result.added_by_segment, seq_base
                )
        except LeaseLost:
            log.warning("lease lost; another worker took the job over", extra=ctx)
            return
        except Stopping:
            log.warning(
                "shutting down mid-job; the job is handed back and will be re-run", extra=ctx
            )
            self.service.release(job_pk, self.name, retry_in=0)
            return
        except Exception:
            log.exception("ingest failed (infrastructure); job will be retried", extra=ctx)
            self.service.release(job_pk, self.name, retry_in=10)
            return
        finally:
            done.set()
            beat.join()

        if refused is None and replace is not None and replace.removed:
            removed = result.removed_by_segment + Counter(replace.removed)
            result.segment_log_lines = segment_log(result.added_by_segment, removed)
            loads.removals.update(replace.removed)
        fields = result.job_fields()
        values = {
            **fields,
            "phase": "error" if result.error_code else "completed",
            "error_message": result.error_message,
            "lines_read": result.lines_read,
            "pairs_added": result.pairs_added,
            "pairs_removed": result.pairs_removed,
            "num_opted_out": result.num_opted_out,
            "report_path": files.put_report(job_id, report) if report.exists() else None,
        }
        if result.lines_read:
            values["file_lines"] = result.lines_read
        if refused is not None:
            values.update(
                phase="error", error_code=refused.error_code, error_message=refused.error_message
            )

        def owe_other_regions(conn: Connection) -> None:
            # With the result, in one transaction: the other regions are owed exactly what
            # this run applied (bss.store.regions), replayed later from the kept file.
            if links:
                regions.record_job(
                    conn,
                    job_pk,
                    self.stores.remote_regions,
                    applied_as_of=asserted_at,
                    config_json=link_replay_config(self.settings.link_ttl_days),
                    registry_records=[],
                    owed=result.pairs_added + result.pairs_removed > 0,
                )
                return
            regions.record_job(
                conn,
                job_pk,
                self.stores.remote_regions,
                applied_as_of=now,
                config_json=config.model_dump_json(),
                registry_records=registry.frame.drop("code_key").to_dicts(),
                owed=result.pairs_added + result.pairs_removed > 0,
            )

        finished = self.service.finish(job_pk, self.name, values, loads, also=owe_other_regions)
        if finished:
            COUNTERS.inc("bss_pairs_applied_total", result.pairs_added + result.pairs_removed)
            COUNTERS.inc("bss_lines_processed_total", result.lines_read)
            COUNTERS.inc(f'bss_jobs_finished_total{{phase="{values["phase"]}"}}')
            log.info(
                "job finished",
                extra={
                    **ctx,
                    "phase": values["phase"],
                    "error_code": result.error_code,
                    "num_valid": fields.get("num_valid"),
                },
            )
        else:
            log.warning("job finished but lease was lost; result dropped", extra=ctx)

    def _replace_state(
        self,
        row: Any,
        store: MembershipStore,
        config: BatchSegmentConfig,
        registry: SegmentRegistry,
        now: int,
    ) -> ReplaceState | None:
        """A replace job's state: the counts its guard measures against are taken before
        its first run writes anything, and kept for its replays. None: the lease is lost."""
        state = ReplaceState.load(row["replace_state"])
        if state is not None:
            return state
        owners = config.authorized_owners(row["member_id"])
        frame = registry.frame
        writable = set(frame.filter(frame["member_id"].is_in(list(owners)))["id"].to_list())
        state = ReplaceState(before=counts_before(store, writable, now))
        if not self.service.renew(row["id"], self.name, replace_state=state.dump()):
            return None
        return state

    def _set_floors(
        self,
        row: Any,
        store: MembershipStore,
        config: BatchSegmentConfig,
        state: ReplaceState,
        added: Mapping[int, int],
        seq_base: int,
    ) -> Refused | None:
        def keep(updated: ReplaceState) -> None:
            if not self.service.renew(row["id"], self.name, replace_state=updated.dump()):
                raise LeaseLost(row["job_id"])

        return apply_floors(
            store,
            added=added,
            seq_base=seq_base,
            state=state,
            config=config,
            force=bool(row["replace_force"]),
            now=now_s(),
            keep_state=keep,
        )
