"""The jobs queue: an uploaded job waits in the `jobs` table for a worker (bss.queue).

Attempts, as every queue counts them (bss.queue.failures): `attempts` counts runs started;
`failures` counts runs that failed by the job's own fault and ends the job at
BSS_JOB_MAX_ATTEMPTS. A run that the infrastructure failed (store, database or files store
unavailable) counts nothing: the job waits with its reason shown and is tried again after a
bounded backoff, until BSS_JOB_INFRA_WAIT_MAX has passed. A lease that lapsed (its worker
was killed or ran out of memory) is noticed by the next claim; LOST_LEASES_PER_FAILURE in a
row without the job getting further count as one failure, so a file that kills every worker
that reads it ends instead of looping forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, case, func, select

from bss.db import now_s
from bss.jobs.models import jobs
from bss.jobs.queries import QUEUED_PHASES, JobQueries
from bss.queue import LeasedQueue, QueueTable, backoff
from bss.reports.service import SegmentLoads, record_loads

log = logging.getLogger("bss.jobs")

LOST_LEASES_PER_FAILURE = 3
#: Waits of a job whose run the infrastructure failed: the first, growing with the time
#: waited so far up to the cap.
INFRA_RETRY_FIRST_SECONDS = 5
INFRA_RETRY_MAX_SECONDS = 60
#: Waits after a run that failed by the job's own fault: first, doubling, cap.
OWN_RETRY_FIRST_SECONDS = 10
OWN_RETRY_MAX_SECONDS = 300
#: Phases a job's progress mark ranks (a later phase is further, whatever its percent).
_PHASE_RANK = {"validating": 0, "processing": 1}

JOB_QUEUE = QueueTable(
    table=jobs,
    holder=jobs.c.claimed_by,
    until=jobs.c.claimed_until,
    ready=lambda _now: jobs.c.phase.in_(QUEUED_PHASES),
    order=(jobs.c.id,),
    attempts=jobs.c.attempts,
    owned=jobs.c.phase.in_(QUEUED_PHASES),
)


def progress_mark(phase: str, percent: int) -> int:
    """How far a run got, comparable across runs."""
    return _PHASE_RANK.get(phase, 0) * 100 + percent


def _lost_lease_values() -> dict[str, Any]:
    """Claim values that notice a lapsed lease: a holder still named at claim time never
    released the job nor finished it (a finish leaves the job out of the queue)."""
    lapsed = jobs.c.claimed_by.is_not(None)
    lost = func.coalesce(jobs.c.lost_leases, 0) + 1
    charged = lost >= LOST_LEASES_PER_FAILURE
    return {
        "lost_leases": case((lapsed & charged, 0), (lapsed, lost), else_=jobs.c.lost_leases),
        "failures": func.coalesce(jobs.c.failures, 0) + case((lapsed & charged, 1), else_=0),
    }


class JobQueue(JobQueries):
    @property
    def queue(self) -> LeasedQueue:
        return LeasedQueue(self.db, JOB_QUEUE, self.settings.job_lease_seconds)

    def claim_next(self, worker_id: str) -> Any | None:
        """Claim the oldest waiting job (or one whose worker's lease ran out)."""
        return self.queue.claim(worker_id, **_lost_lease_values())

    def renew(self, job_pk: int, worker_id: str, **values: Any) -> bool:
        """Extend the lease (and write progress); False when another worker owns the job."""
        return self.queue.renew(job_pk, worker_id, **values)

    def record_progress(
        self, job_pk: int, worker_id: str, mark: tuple[str, int], **values: Any
    ) -> bool:
        """Renew with the run's progress; a run that got further than any before it clears
        the lapsed-lease count and the infrastructure wait (it is getting through)."""
        phase, percent = mark
        reached = progress_mark(phase, percent)
        further = func.coalesce(jobs.c.progress_mark, 0) < reached
        return self.queue.renew(
            job_pk,
            worker_id,
            percent_complete=percent,
            progress_mark=case((further, reached), else_=jobs.c.progress_mark),
            lost_leases=case((further, 0), else_=jobs.c.lost_leases),
            waiting_reason=None,
            waiting_since=None,
            **values,
        )

    def start_processing(self, job_pk: int, worker_id: str) -> None:
        self.queue.write(
            job_pk,
            worker_id,
            {
                "processing_started": func.coalesce(
                    jobs.c.processing_started, int(time.time() * 1000)
                )
            },
        )

    def finish(
        self,
        job_pk: int,
        worker_id: str,
        values: dict[str, Any],
        loads: SegmentLoads | None = None,
        *,
        also: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Record the job's result; its segment load figures, its completion webhook and
        `also` (what other store regions are owed) are written in the same transaction, once:
        a job finishes only while its worker owns it, so a replayed (re-claimed) job never
        counts twice."""
        now = now_s()
        with self.db.connect() as conn:
            started = conn.execute(
                select(jobs.c.processing_started).where(jobs.c.id == job_pk)
            ).scalar()
        minutes = (time.time() * 1000 - (started or time.time() * 1000)) / 60000
        values = {
            **values,
            "time_to_process": f"{minutes:.2f}",
            "last_modified": now,
            "waiting_reason": None,
        }
        if values.get("phase") == "completed":
            values.setdefault("completed_time", now)
            values["percent_complete"] = 100
        values.setdefault("validated_time", func.coalesce(jobs.c.validated_time, now))

        def then(conn: Connection) -> None:
            if loads is not None:
                record_loads(conn, loads, source=f"job:{job_pk}")
            if also is not None:
                also(conn)
            self._job_finished(conn, job_pk)

        return self.queue.finish(job_pk, worker_id, values, then)

    def release(self, job_pk: int, worker_id: str, retry_in: float = 0) -> bool:
        """Give a job back (the process is stopping): claimed again after `retry_in` s."""
        return self.queue.release(job_pk, worker_id, retry_in)

    def charge_failure(self, job_pk: int, worker_id: str, failures_before: int) -> float:
        """The run failed by the job's own fault: one failure counted, retried after a
        doubling wait; the wait."""
        delay = backoff(
            failures_before + 1, first=OWN_RETRY_FIRST_SECONDS, cap=OWN_RETRY_MAX_SECONDS
        )
        self.queue.release(job_pk, worker_id, delay, failures=func.coalesce(jobs.c.failures, 0) + 1)
        return delay

    def wait_for_infrastructure(
        self, job_pk: int, worker_id: str, reason: str, waiting_since: int | None
    ) -> float:
        """The run failed because the infrastructure did: nothing counted, the job says why
        it waits and is tried again after a wait that grows with the time waited so far; the
        wait."""
        now = now_s()
        since = now if waiting_since is None else waiting_since
        delay = min(INFRA_RETRY_MAX_SECONDS, max(INFRA_RETRY_FIRST_SECONDS, (now - since) / 2))
        self.queue.release(
            job_pk,
            worker_id,
            delay,
            waiting_reason=reason[:500],
            waiting_since=func.coalesce(jobs.c.waiting_since, since),
            last_modified=now,
        )
        return delay

    def infrastructure_wait_over(self, waiting_since: int | None) -> bool:
        return (
            waiting_since is not None
            and now_s() - waiting_since >= self.settings.job_infra_wait_max
        )
