"""The work every bss process runs beside its own: job workers, region catch-up, the
sweeper, the passive scanner and webhook senders (start_background), and `bss worker`, a
process of that work alone. Nothing here is HTTP: `bss serve` (bss.api.server) starts the
same work beside its API."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial

from sqlalchemy import Engine

from bss.accounts.service import purge_auth
from bss.db import now_s
from bss.errors import StoreUnavailable, StoreUrlError
from bss.jobs.regions import RegionCatchUp
from bss.jobs.service import JobService
from bss.jobs.worker import StoreHandle, Worker
from bss.leases import HOSTNAME, LeaseKeeper, reap_dead_local_processes
from bss.ratelimit import DatabaseRateLimiter
from bss.reports.service import purge_reports
from bss.settings import Settings
from bss.startup import check_files, engines_in_use, open_database
from bss.webhooks.service import WebhookSender, purge_deliveries

log = logging.getLogger("bss.worker")

#: How often unused upload URLs are expired (the full retention sweep runs every sweep_seconds).
URL_SWEEP_SECONDS = 5


def _thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t


def _role(name: str, settings: Settings) -> str:
    """A role held by one process per machine and data dir (its files are that machine's)."""
    return f"{name}@{HOSTNAME}:{settings.data_dir.resolve()}"


def sweeper(
    service: JobService,
    stores: StoreHandle,
    settings: Settings,
    stop: threading.Event,
    keeper: LeaseKeeper,
) -> None:
    """Expire unused upload URLs and fail orphaned uploads often; retention (files, history,
    store, tokens, rate counters) every sweep_seconds. Runs in the one process that holds
    the sweeper lease."""
    role = _role("sweeper", settings)
    last_full = 0.0
    interval = 0.0
    while not stop.wait(interval):
        interval = URL_SWEEP_SECONDS
        if not keeper.claim(role):
            continue
        try:
            service.expire_urls()
            service.fail_orphaned_uploads()
            if now_s() - last_full >= settings.sweep_seconds:
                last_full = now_s()
                stats = service.sweep()
                purge_auth(service.db, settings)
                counters = DatabaseRateLimiter(service.db).purge()
                history = now_s() - settings.history_days * 86400
                deliveries = purge_deliveries(service.db, history)
                reports = purge_reports(service.db, history)
                purged = 0
                for region in (None, *stores.remote_regions):
                    try:  # a region that is down is purged at a later sweep
                        purged += stores.get(region).purge_expired(now_s())
                    except Exception:
                        log.warning("store purge failed", extra={"region": region}, exc_info=True)
                log.info(
                    "retention sweep",
                    extra={
                        **stats,
                        "store_rows_purged": purged,
                        "rate_counters_purged": counters,
                        "webhook_deliveries_purged": deliveries,
                        "report_rows_purged": reports,
                    },
                )
        except Exception:
            log.exception("sweep failed")


def passive_role(
    settings: Settings, service: JobService, stop: threading.Event, keeper: LeaseKeeper
) -> None:
    """The passive scanner, in the one process that holds its lease (taken over when the
    holder dies)."""
    from bss.passive.scanner import run_passive

    role = _role("passive", settings)
    while not stop.is_set():
        if not keeper.claim(role):
            stop.wait(keeper.ttl / 3)
            continue
        role_stop = threading.Event()
        scanner = _thread(partial(run_passive, settings, service, role_stop), "passive")
        while not stop.wait(keeper.ttl / 3) and keeper.holds(role):
            pass
        role_stop.set()
        scanner.join(timeout=30)


def start_background(
    service: JobService,
    stores: StoreHandle,
    settings: Settings,
    stop: threading.Event,
    keeper: LeaseKeeper,
    *,
    workers: int,
) -> list[threading.Thread]:
    threads = []
    for i in range(workers):
        worker = Worker(service, stores, stop, name=f"{keeper.process_id}:w{i}")
        threads.append(_thread(worker.run_forever, f"worker-{i}"))
    if workers and stores.remote_regions:  # replays are worker's work, not an API-only one's
        catch_up = RegionCatchUp(service, stores, stop, name=f"{keeper.process_id}:regions")
        threads.append(_thread(catch_up.run_forever, "regions"))
    threads.append(_thread(lambda: sweeper(service, stores, settings, stop, keeper), "sweeper"))
    threads.append(_thread(lambda: passive_role(settings, service, stop, keeper), "passive-role"))
    for i in range(settings.webhook_threads):
        sender = WebhookSender(service.db, settings, name=f"{keeper.process_id}:h{i}")
        threads.append(_thread(partial(sender.run_forever, stop), f"webhooks-{i}"))
    return threads


def open_store_or_exit(stores: StoreHandle) -> None:
    """Open the membership store now; if it cannot be opened, say why in one line and exit."""
    try:
        stores.get()
    except (StoreUnavailable, StoreUrlError, ValueError) as exc:
        sys.stderr.write(f"bss: {exc}\n")
        raise SystemExit(2) from None


def start_leases(db: Engine, settings: Settings, stop: threading.Event) -> LeaseKeeper:
    """This process's lease; leases and uploads left by dead processes of this machine are
    dropped and failed first (a restart frees a crashed server's upload slots at once)."""
    keeper = LeaseKeeper(db, settings.lease_seconds)
    reap_dead_local_processes(db)
    keeper.start(stop)
    JobService(db, settings).fail_orphaned_uploads()
    return keeper


def run_worker(settings: Settings) -> None:
    settings.make_data_dir()
    check_files(settings)
    db = open_database(settings)
    service = JobService(db, settings)
    stores = StoreHandle.for_settings(settings)
    try:
        open_store_or_exit(stores)  # fail fast: a wrong URL, no Redis
    except SystemExit:
        db.dispose()
        raise
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    keeper = start_leases(db, settings, stop)
    threads = start_background(
        service, stores, settings, stop, keeper, workers=max(1, settings.workers)
    )
    log.info(
        "worker process running",
        extra={"workers": max(1, settings.workers), **engines_in_use(settings)},
    )
    while not stop.wait(1):
        pass
    for t in threads:
        t.join(timeout=30)
    keeper.release_all()
    stores.close()
    db.dispose()
