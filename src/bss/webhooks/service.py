"""Completion webhooks: a finished job is POSTed, signed, to its member's `webhook_url`.

The `webhook_deliveries` table is an outbox written in the same transaction that finishes
the job, so no finished job is missed however the process ends. Senders (threads of
`bss serve` and `bss worker`, any number of processes) claim the oldest pending delivery of
a member from the leased queue (bss.queue): one delivery per member in flight, in order. A
delivery that keeps failing is retried with doubling delays and marked failed once the
retry window has passed; then the member's next delivery goes.

Delivery is at least once: a sender that dies after the receiver answered but before the
answer was recorded sends again after its lease runs out, with the same X-BSS-Delivery id.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, func, insert, select

from bss.db import fmt_ts, now_s, write_tx
from bss.errors import Invalid
from bss.formats.config import WEBHOOK_FIELDS
from bss.queue import Fault, LeasedQueue, QueueTable, Runner, backoff, classify
from bss.segments.models import batch_segment_configs
from bss.settings import Settings
from bss.webhooks.models import webhook_deliveries
from bss.webhooks.sender import Attempt, TargetRefused, TargetUnresolved, resolve_target, send
from bss.webhooks.sender import sign as sign  # the documented signature's helper

log = logging.getLogger("bss.webhooks")

#: Config fields a member may set on its own config (everything else is admin-only).
MEMBER_WRITABLE_FIELDS = frozenset(WEBHOOK_FIELDS)
EVENT_JOB_FINISHED = "batch_segment_upload_job.finished"


def check_webhook_target(body: Any, settings: Settings) -> None:
    """Refuse a config whose webhook_url is not a permitted target (400, with the reason)."""
    if isinstance(body, dict) and "batch_segment_upload_config" in body:
        body = body["batch_segment_upload_config"]
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    url = body.get("webhook_url") if isinstance(body, dict) else None
    if not url or not isinstance(url, str):
        return
    try:
        resolve_target(url, settings)
    except TargetUnresolved:
        return  # checked again at every attempt; DNS may be down for a moment
    except TargetRefused as exc:
        raise Invalid(str(exc)) from exc


# --- the outbox ------------------------------------------------------------------------------


def _webhook_of(conn: Connection, member_id: int) -> tuple[str | None, str | None]:
    text = conn.execute(
        select(batch_segment_configs.c.config_json).where(
            batch_segment_configs.c.member_id == member_id
        )
    ).scalar()
    if text is None:
        return None, None
    data = json.loads(text)
    return data.get("webhook_url"), data.get("webhook_secret")


def enqueue_job_finished(conn: Connection, job: dict[str, Any]) -> None:
    """In the transaction that finished the job: queue its delivery if the member has a
    webhook_url."""
    url, _secret = _webhook_of(conn, job["member_id"])
    if not url:
        return
    now = now_s()
    conn.execute(
        insert(webhook_deliveries).values(
            delivery_id=str(uuid.uuid4()),
            member_id=job["member_id"],
            job_id=job["job_id"],
            event=EVENT_JOB_FINISHED,
            body=json.dumps({"batch_segment_upload_job": job}, separators=(",", ":")),
            state="pending",
            attempts=0,
            created_on=now,
            next_attempt_ms=now * 1000,
        )
    )


def delivery_out(row: Any) -> dict[str, Any]:
    return {
        "id": row["delivery_id"],
        "member_id": row["member_id"],
        "job_id": row["job_id"],
        "event": row["event"],
        "state": row["state"],
        "attempts": row["attempts"],
        "url": row["url"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "created_on": fmt_ts(row["created_on"]),
        "first_attempt_on": fmt_ts(row["first_attempt_on"]),
        "last_attempt_on": fmt_ts(row["last_attempt_on"]),
        "next_attempt_on": (
            fmt_ts(row["next_attempt_ms"] / 1000) if row["state"] == "pending" else None
        ),
        "finished_on": fmt_ts(row["finished_on"]),
    }


def list_deliveries(
    db: Engine,
    member_id: int | None,
    *,
    job_id: str | None = None,
    state: str | None = None,
    start: int = 0,
    num: int = 100,
) -> tuple[int, list[dict[str, Any]]]:
    """The delivery log, newest first."""
    q = select(webhook_deliveries)
    if member_id is not None:
        q = q.where(webhook_deliveries.c.member_id == member_id)
    if job_id:
        q = q.where(webhook_deliveries.c.job_id == job_id)
    if state:
        q = q.where(webhook_deliveries.c.state == state)
    with db.connect() as conn:
        total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        rows = conn.execute(
            q.order_by(webhook_deliveries.c.id.desc()).offset(start).limit(num)
        ).mappings()
        return total, [delivery_out(r) for r in rows]


def purge_deliveries(db: Engine, before: int) -> int:
    """Retention: finished deliveries (delivered or failed) created before `before`."""
    d = webhook_deliveries
    with write_tx(db) as conn:
        return conn.execute(
            d.delete().where(d.c.state != "pending", d.c.created_on < before)
        ).rowcount


# --- sending ---------------------------------------------------------------------------------


def retry_delay(settings: Settings, failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones: doubling, capped."""
    delay = settings.webhook_first_retry_seconds * 2 ** max(0, failures - 1)
    return min(delay, settings.webhook_max_retry_seconds)


#: Waits of a delivery whose sending the infrastructure failed (the database or the
#: config unreadable): first, doubling, cap; no attempt is counted.
INFRA_RETRY_FIRST_SECONDS = 5.0
INFRA_RETRY_MAX_SECONDS = 60.0

_earlier = webhook_deliveries.alias("earlier")


def _due(now: float) -> ColumnElement[bool]:
    """Pending, past its next attempt, and the oldest pending delivery of its member (one
    delivery per member in flight, in order)."""
    d = webhook_deliveries
    earlier = select(_earlier.c.id).where(
        _earlier.c.member_id == d.c.member_id,
        _earlier.c.state == "pending",
        _earlier.c.id < d.c.id,
    )
    return and_(d.c.state == "pending", d.c.next_attempt_ms <= int(now * 1000), ~exists(earlier))


DELIVERY_QUEUE = QueueTable(
    table=webhook_deliveries,
    holder=webhook_deliveries.c.claimed_by,
    until=webhook_deliveries.c.claimed_until,
    ready=_due,
    order=(webhook_deliveries.c.next_attempt_ms, webhook_deliveries.c.id),
    owned=webhook_deliveries.c.state == "pending",
)


class WebhookSender:
    """Claims due deliveries (the oldest pending one per member) and sends them.

    Up to webhook_in_flight claimed deliveries are sent at once, each on a thread of its own.
    A member has at most one delivery in flight, and an attempt ends by its total deadline,
    so a slow receiver holds one of those places for at most webhook_timeout_seconds while
    the other members' deliveries go on. The lease outlasts one attempt with room to record
    it, so no heartbeat renews it.

    An attempt that could not be made because the infrastructure failed (bss.queue.classify)
    counts nothing: the delivery says why in last_error and waits a bounded backoff.
    """

    def __init__(self, db: Engine, settings: Settings, name: str) -> None:
        self.db = db
        self.settings = settings
        self.name = name
        # The lease outlasts one attempt (its total deadline) with room to record it.
        self.lease_seconds = int(2 * settings.webhook_timeout_seconds) + 5
        self.queue = LeasedQueue(db, DELIVERY_QUEUE, self.lease_seconds)
        self._places = threading.BoundedSemaphore(settings.webhook_in_flight)
        self._sending: set[threading.Thread] = set()
        #: Infrastructure failures in a row, of this sender (the database is everyone's).
        self._infra_failures = 0

    def run_forever(self, stop: threading.Event) -> None:
        log.info("webhook sender started", extra={"sender": self.name})
        poll = self.settings.webhook_poll_seconds
        Runner(self.name, self.run_once, stop, poll_seconds=poll).run_forever()
        for thread in list(self._sending):
            thread.join()

    def run_once(self) -> bool:
        """Claim one due delivery and start sending it; False if none is due or no place is free."""
        if not self._places.acquire(blocking=False):
            return False
        try:
            row = self.claim_next()
        except BaseException:
            self._places.release()
            raise
        if row is None:
            self._places.release()
            return False
        thread = threading.Thread(
            target=self._send_and_free, args=(row,), name=f"webhook-{row['id']}", daemon=True
        )
        self._sending.add(thread)
        thread.start()
        return True

    def _send_and_free(self, row: dict[str, Any]) -> None:
        try:
            self.deliver(row)
            self._infra_failures = 0
        except Exception as exc:
            self._failed(row, exc)
        finally:
            self._sending.discard(threading.current_thread())
            self._places.release()

    def _failed(self, row: dict[str, Any], exc: Exception) -> None:
        """Sending raised: the infrastructure's failure waits, the delivery's own is an attempt
        that failed. If even that cannot be written, the lease runs out and it goes again."""
        reason = f"{type(exc).__name__}: {exc}"[:500]
        try:
            if classify(exc) is Fault.INFRASTRUCTURE:
                self._infra_failures += 1
                self._wait_for_infrastructure(row, reason)
            else:
                log.exception("webhook delivery failed", extra={"sender": self.name})
                self._record(row, Attempt(None, reason, None))
        except Exception:
            log.exception("webhook delivery failed", extra={"sender": self.name})

    def _wait_for_infrastructure(self, row: dict[str, Any], reason: str) -> None:
        delay = backoff(
            self._infra_failures, first=INFRA_RETRY_FIRST_SECONDS, cap=INFRA_RETRY_MAX_SECONDS
        )
        log.warning(
            "webhook delivery waits for the infrastructure",
            extra={"delivery_id": row["delivery_id"], "reason": reason, "retry_in": delay},
        )
        self.queue.release(
            row["id"],
            self.name,
            delay,
            last_error=f"service unavailable, will retry: {reason}",
            next_attempt_ms=int((time.time() + delay) * 1000),
        )

    def claim_next(self) -> dict[str, Any] | None:
        """Claim the due delivery that waited longest, under a lease."""
        return self.queue.claim(self.name)

    def deliver(self, row: dict[str, Any]) -> None:
        with self.db.connect() as conn:
            url, secret = _webhook_of(conn, row["member_id"])
        attempt = send(url, secret or "", row["delivery_id"], row["body"].encode(), self.settings)
        self._record(row, attempt)

    def _record(self, row: dict[str, Any], attempt: Attempt) -> None:
        now = now_s()
        attempts = row["attempts"] + 1
        first = row["first_attempt_on"] or now
        values: dict[str, Any] = {
            "attempts": attempts,
            "first_attempt_on": first,
            "last_attempt_on": now,
            "url": attempt.url,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
        }
        delay = retry_delay(self.settings, attempts)
        if attempt.ok:
            state = "delivered"
        elif now + delay > first + self.settings.webhook_retry_window_seconds:
            state = "failed"
        else:
            state = "pending"
        if state == "pending":
            values["next_attempt_ms"] = int((time.time() + delay) * 1000)
            self.queue.release(row["id"], self.name, **values)
        else:
            self.queue.finish(row["id"], self.name, {**values, "state": state, "finished_on": now})
        log.info(
            "webhook attempt",
            extra={
                "delivery_id": row["delivery_id"],
                "member_id": row["member_id"],
                "job_id": row["job_id"],
                "attempt": attempts,
                "status_code": attempt.status_code,
                "error": attempt.error,
                "state": state,
            },
        )
