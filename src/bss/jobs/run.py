"""One run of one job: from a claimed row to a recorded result, a wait or a charged failure.

Crash safety: the job is claimed with a lease that a heartbeat renews while the engine runs.
If the process dies, the lease runs out and another worker claims the job and runs it again
with the seq base recorded at its first run (jobs.seq_base): the store keeps the highest seq
per (user, segment), so the replay rewrites the same entries and yields exactly the store an
uninterrupted run would have, without undoing any job applied in between.

Whose fault a failed run is decides what follows (bss.queue.failures): the infrastructure's
makes the job wait and retry, counting nothing, until BSS_JOB_INFRA_WAIT_MAX; the job's own
counts one of its BSS_JOB_MAX_ATTEMPTS.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from bss.db import now_s
from bss.formats.config import BatchSegmentConfig
from bss.identity.ingest import LINKS, link_replay_config
from bss.ingest.engine import segment_log
from bss.ingest.files import FileRun, LinkFile, SegmentFile, run_file
from bss.ingest.registry import SegmentRegistry
from bss.ingest.result import IngestResult
from bss.lifecycle.floors import set_floors
from bss.lifecycle.optout import MemberSuppression, SuppressionList
from bss.lifecycle.replace import (
    REPLACE,
    Refused,
    ReplaceState,
    apply_floors,
    counts_before,
    written_keys,
)
from bss.metrics import COUNTERS
from bss.queue import Fault, Heartbeat, classify
from bss.reports.service import SegmentLoads
from bss.segments.service import get_config, registry_for
from bss.store import JOB_SEQ_SPAN, MembershipStore, regions, seqs
from bss.store.sorted_runs import WrittenKeys

if TYPE_CHECKING:
    from bss.jobs.worker import Worker

log = logging.getLogger("bss.worker")

PROGRESS_INTERVAL = 1.0
INFRASTRUCTURE_TIMEOUT = "infrastructure-timeout"


class LeaseLost(Exception):
    """Another worker owns the job now (ours was presumed dead); stop working on it."""


class Stopping(Exception):
    """The process is shutting down: give the job back for an immediate re-run elsewhere."""


class JobRun:
    def __init__(self, worker: Worker, row: Any) -> None:
        self.worker = worker
        self.service = worker.service
        self.name = worker.name
        self.row = row
        self.job_pk: int = row["id"]
        self.job_id: str = row["job_id"]
        self.ctx = {
            "job_id": self.job_id,
            "job": self.job_pk,
            "member_id": row["member_id"],
            "attempt": row["attempts"],
        }
        self.links = row["file_type"] == LINKS
        # A link file's links are asserted at the job's recorded upload time: every run and
        # every region gives them the same expiry.
        self.asserted_at: int = row["uploaded_time"] or row["created_on"]
        self.heartbeat: Heartbeat | None = None
        self.phase = "validating"
        self.percent = 0
        self.last_progress = 0.0

    # --- the run ---------------------------------------------------------------------------

    def execute(self) -> None:
        if (self.row["failures"] or 0) >= self.service.settings.job_max_attempts:
            log.error("job failed too often; giving up", extra=self.ctx)
            self._end_in_error("processing-error", "processing failed repeatedly")
            return
        try:
            self._run()
        except LeaseLost:
            log.warning("lease lost; another worker took the job over", extra=self.ctx)
        except Stopping:
            log.warning(
                "shutting down mid-job; the job is handed back and will be re-run", extra=self.ctx
            )
            self.service.release(self.job_pk, self.name)
        except Exception as exc:
            self._failed(exc)

    def _run(self) -> None:
        files = self.service.files
        if not self.row["file_path"] or not files.exists(self.row["file_path"]):
            self._end_in_error("file_missing", "the uploaded file is gone")
            return
        store = self.worker.stores.get()
        seq_base = self._seq_base()
        self.service.start_processing(self.job_pk, self.name)
        unconfirmed = _unconfirmed_writes(store)
        now = now_s()
        # Report figures of this run only; written with the result, so a replay counts once.
        loads = SegmentLoads.at(now)
        result, inputs = self._ingest(store, seq_base, now, loads)
        self._record(result, loads, inputs, now, _unconfirmed_writes(store) > unconfirmed)

    def _seq_base(self) -> int:
        seq_base = self.row["seq_base"]
        if seq_base is None:
            seq_base = seqs.reserve(self.service.db, JOB_SEQ_SPAN)
            if not self.service.renew(self.job_pk, self.name, seq_base=seq_base):
                raise LeaseLost(self.job_id)
        elif self.row["attempts"] > 1:
            # A previous run ended halfway: the replay reuses its seqs and changes nothing it
            # had written already.
            log.warning("re-running an interrupted job", extra={**self.ctx, "seq_base": seq_base})
        return int(seq_base)

    def _ingest(
        self, store: MembershipStore, seq_base: int, now: int, loads: SegmentLoads
    ) -> tuple[IngestResult, _RunInputs]:
        db = self.service.db
        member_id = self.row["member_id"]
        inputs = _RunInputs(get_config(db, member_id), registry_for(db))
        if self.row["mode"] == REPLACE:
            inputs.replace = self._replace_state(store, inputs, now)
        suppression = SuppressionList.of(db, self.service.settings)
        report = self.service.reports_dir / f"{self.job_id}.csv"
        settings = self.service.settings
        beat = Heartbeat(
            f"lease-{self.job_id[:8]}",
            functools.partial(self.service.renew, self.job_pk, self.name),
            max(1.0, settings.job_lease_seconds / 3),
        )
        self.heartbeat = beat
        log.info("job processing", extra=self.ctx)
        kind: SegmentFile | LinkFile = (
            LinkFile(settings.link_ttl_days, inputs.config.num_error_log_lines)
            if self.links
            else SegmentFile(inputs.config, inputs.registry)
        )
        with (
            beat,
            self.service.files.local_copy(self.row["file_path"]) as path,
            written_keys(store, replacing=inputs.replace is not None) as written,
        ):
            run = FileRun(
                member_id,
                seq_base,
                store,
                applied_as_of=self.asserted_at if self.links else now,
                kind=kind,
                error_report_path=report,
                progress=functools.partial(self._progress, "validating"),
                write_progress=functools.partial(self._progress, "processing"),
                on_applied=loads.add,
                suppress=MemberSuppression(suppression, member_id),
                written=written,
            )
            result = run_file(path, run, settings)
            if inputs.replace is not None and result.error_code is None:
                # Under the lease (the heartbeat still runs): the walks take a while.
                inputs.refused = self._set_floors(
                    store,
                    inputs.replace,
                    inputs.config,
                    result.added_by_segment,
                    seq_base,
                    written,
                )
        inputs.report = report
        return result, inputs

    def _replace_state(self, store: MembershipStore, inputs: _RunInputs, now: int) -> ReplaceState:
        """A replace job's state: the counts its guard measures against are taken before
        its first run writes anything, and kept for its replays."""
        state = ReplaceState.load(self.row["replace_state"])
        if state is not None:
            return state
        owners = inputs.config.authorized_owners(self.row["member_id"])
        frame = inputs.registry.frame
        writable = set(frame.filter(frame["member_id"].is_in(list(owners)))["id"].to_list())
        state = ReplaceState(before=counts_before(store, writable, now))
        self._keep_replace_state(state)
        return state

    def _keep_replace_state(self, state: ReplaceState) -> None:
        if not self.service.renew(self.job_pk, self.name, replace_state=state.dump()):
            raise LeaseLost(self.job_id)

    def _set_floors(
        self,
        store: MembershipStore,
        state: ReplaceState,
        config: BatchSegmentConfig,
        added: Mapping[int, int],
        seq_base: int,
        written: WrittenKeys | None,
    ) -> Refused | None:
        return apply_floors(
            store,
            added=added,
            seq_base=seq_base,
            state=state,
            config=config,
            force=bool(self.row["replace_force"]),
            now=now_s(),
            keep_state=self._keep_replace_state,
            publish=functools.partial(
                set_floors, self.service.db, seq=seq_base, region=self.worker.stores.local_region
            ),
            written=written,
        )

    def _progress(self, phase: str, fraction: float) -> None:
        """`percent_complete` is per phase, as documented: `validating` while the file is
        read, then `processing` while the store writes what it held back."""
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            raise LeaseLost(self.job_id)
        if self.worker.stop.is_set():
            raise Stopping(self.job_id)
        if phase == "validating" and fraction >= 1.0:
            phase, fraction = "processing", 0.0
        pct = max(0, min(99, int(fraction * 100)))
        t = time.monotonic()
        values: dict[str, Any] = {}
        if phase != self.phase:
            self.phase = phase
            values.update(phase=phase, validated_time=now_s())
        elif t - self.last_progress < PROGRESS_INTERVAL or pct == self.percent:
            return
        self.last_progress, self.percent = t, pct
        values["last_modified"] = now_s()
        if not self.service.record_progress(self.job_pk, self.name, (phase, pct), **values):
            raise LeaseLost(self.job_id)

    # --- outcomes ---------------------------------------------------------------------------

    def _record(
        self,
        result: IngestResult,
        loads: SegmentLoads,
        inputs: _RunInputs,
        now: int,
        unreplicated: bool,
    ) -> None:
        replace, refused = inputs.replace, inputs.refused
        if refused is None and replace is not None and replace.removed:
            removed = result.removed_by_segment + Counter(replace.removed)
            result.segment_log_lines = segment_log(result.added_by_segment, removed)
            loads.removals.update(replace.removed)
        fields = result.job_fields()
        files = self.service.files
        report = inputs.report
        values = {
            **fields,
            "phase": "error" if result.error_code else "completed",
            "error_message": result.error_message,
            "lines_read": result.lines_read,
            "pairs_added": result.pairs_added,
            "pairs_removed": result.pairs_removed,
            "num_opted_out": result.num_opted_out,
            "report_path": (
                files.put_report(self.job_id, report)
                if report is not None and report.exists()
                else None
            ),
            "waiting_since": None,
        }
        if unreplicated:
            values["written_without_replica"] = 1
        if result.lines_read:
            values["file_lines"] = result.lines_read
        if refused is not None:
            values.update(
                phase="error", error_code=refused.error_code, error_message=refused.error_message
            )

        def owe_other_regions(conn: Connection) -> None:
            # With the result, in one transaction: the other regions are owed exactly what
            # this run applied (bss.store.regions), replayed later from the kept file.
            if self.links:
                regions.record_job(
                    conn,
                    self.job_pk,
                    self.worker.stores.remote_regions,
                    applied_as_of=self.asserted_at,
                    config_json=link_replay_config(self.service.settings.link_ttl_days),
                    registry_records=[],
                    owed=result.pairs_added + result.pairs_removed > 0,
                )
                return
            regions.record_job(
                conn,
                self.job_pk,
                self.worker.stores.remote_regions,
                applied_as_of=now,
                config_json=inputs.config.model_dump_json(),
                registry_records=inputs.registry.frame.drop("code_key").to_dicts(),
                owed=result.pairs_added + result.pairs_removed > 0,
            )

        if not self.service.finish(self.job_pk, self.name, values, loads, also=owe_other_regions):
            log.warning("job finished but lease was lost; result dropped", extra=self.ctx)
            return
        COUNTERS.inc("bss_pairs_applied_total", result.pairs_added + result.pairs_removed)
        COUNTERS.inc("bss_lines_processed_total", result.lines_read)
        COUNTERS.inc(f'bss_jobs_finished_total{{phase="{values["phase"]}"}}')
        log.info(
            "job finished",
            extra={
                **self.ctx,
                "phase": values["phase"],
                "error_code": result.error_code,
                "num_valid": fields.get("num_valid"),
                "written_without_replica": unreplicated,
            },
        )

    def _failed(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if classify(exc) is Fault.OWN:
            delay = self.service.charge_failure(self.job_pk, self.name, self.row["failures"] or 0)
            log.exception(
                "job run failed; it is retried and the failure counted",
                extra={**self.ctx, "failures": (self.row["failures"] or 0) + 1, "retry_in": delay},
            )
            return
        since = self.row["waiting_since"]
        if self.service.infrastructure_wait_over(since):
            log.error(
                "job gave up waiting for the infrastructure", extra={**self.ctx, "reason": reason}
            )
            self._end_in_error(
                INFRASTRUCTURE_TIMEOUT,
                "the store, database or files store stayed unavailable for longer than "
                f"BSS_JOB_INFRA_WAIT_MAX ({self.service.settings.job_infra_wait_max} s); the "
                f"file is kept: submit it again. Last failure: {reason}"[:2000],
            )
            return
        delay = self.service.wait_for_infrastructure(self.job_pk, self.name, reason, since)
        log.warning(
            "job waiting for the infrastructure; retried without counting an attempt",
            extra={**self.ctx, "reason": reason, "waiting_since": since, "retry_in": delay},
        )

    def _end_in_error(self, error_code: str, message: str) -> None:
        self.service.finish(
            self.job_pk,
            self.name,
            {"phase": "error", "error_code": error_code, "error_message": message},
        )


def _unconfirmed_writes(store: MembershipStore) -> int:
    """Writes the store made without a replica to confirm them (Redis, `attached` mode)."""
    replicas = getattr(store, "replicas", None)
    return int(getattr(replicas, "unconfirmed_writes", 0))


@dataclass(slots=True)
class _RunInputs:
    """What a run read besides its file, kept for what other regions are owed, and a replace
    job's state and whether its removal guard refused the replacement."""

    config: BatchSegmentConfig
    registry: SegmentRegistry
    report: Path | None = None
    replace: ReplaceState | None = None
    refused: Refused | None = None
