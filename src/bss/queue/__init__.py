"""One leased-queue primitive for all queued work, and one loop to consume it.

Queued work lives in rows of the shared database (SQLite or PostgreSQL). A consumer claims
a ready row under a lease (`LeasedQueue.claim`: FOR UPDATE SKIP LOCKED on PostgreSQL, one
guarded UPDATE on SQLite), keeps it alive with a `Heartbeat` while it works, and ends with
`finish` (the result, written only while it still holds the lease) or `release` (given
back, claimable again after a bounded backoff). A consumer that dies simply stops renewing:
its lease lapses and the row is claimed again, so all work is at least once and must be
safe to repeat. `Runner` is the one polling loop around a consumer's step.

Failures are classified once (`classify`): the infrastructure's (store, database, files
store unavailable) never use the work's attempts, the work's own do.

Its queues: jobs (bss.jobs.queue), region writes (bss.store.regions), webhook deliveries
(bss.webhooks.service) and passive claims (bss.passive.claims); docs/architecture.md
("Queued work") describes them side by side.

Adding a queue kind (e.g. link files, opt-outs):

1. In the domain's models.py, give the work's table a lease: a holder column
   (`claimed_by`, String, nullable), a lease end (`claimed_until`, BigInteger UNIX seconds,
   nullable; another type with `to_db_time`) and, if runs are counted, `attempts` (Integer);
   index what `ready` filters on; add an Alembic migration (bss/migrations/versions).
2. Describe it: `QueueTable(table=..., holder=..., until=..., ready=lambda now: <rows
   waiting>, order=(<oldest first>,), attempts=..., owned=<rows a holder may still write>,
   on_claim={...})`.
3. Consume it: a step that claims one row (`LeasedQueue(db, spec, lease_seconds).claim`,
   narrowed with `where=` when a consumer serves part of the queue),
   works it inside `with Heartbeat(name, lambda: queue.renew(row_id, holder), interval)`,
   and on failure asks `classify(exc)`: INFRASTRUCTURE -> `release(..., delay=backoff(...))`
   counting nothing; OWN -> count it against the work's attempts, then release or finish
   as failed. Run the step with `Runner(name, step, stop, poll_seconds=...)` in a thread of
   `bss worker` (bss.worker_process.start_background).
"""

from bss.queue.failures import Fault, backoff, classify
from bss.queue.leased import LeasedQueue, QueueTable, seconds
from bss.queue.runner import Heartbeat, Runner

__all__ = [
    "Fault",
    "Heartbeat",
    "LeasedQueue",
    "QueueTable",
    "Runner",
    "backoff",
    "classify",
    "seconds",
]
