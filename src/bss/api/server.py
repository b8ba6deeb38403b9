"""Process runners: `bss serve` (API + workers + sweeps + passive scanners) and `bss worker`."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

import uvicorn

from bss.accounts.service import purge_auth
from bss.db import init_db, make_engine, now_s
from bss.jobs.service import JobService
from bss.jobs.worker import StoreHandle, Worker
from bss.settings import Settings

log = logging.getLogger("bss.server")

#: How often unused upload URLs are expired (the full retention sweep runs every sweep_seconds).
URL_SWEEP_SECONDS = 5


def _thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t


def sweeper(
    service: JobService, stores: StoreHandle, settings: Settings, stop: threading.Event
) -> None:
    """Expire unused upload URLs often; retention (files, history, store, tokens) hourly."""
    last_full = 0.0
    while not stop.wait(URL_SWEEP_SECONDS if last_full else 0):
        try:
            service.expire_urls()
            service.fail_stale_uploads()
            if now_s() - last_full >= settings.sweep_seconds:
                last_full = now_s()
                stats = service.sweep()
                purge_auth(service.db, settings)
                purged = 0
                try:
                    purged = stores.get().purge_expired(now_s())
                except Exception:
                    log.warning("store purge failed", exc_info=True)
                log.info("retention sweep", extra={**stats, "store_rows_purged": purged})
        except Exception:
            log.exception("sweep failed")


def start_background(
    service: JobService,
    stores: StoreHandle,
    settings: Settings,
    stop: threading.Event,
    *,
    workers: int,
    sweeps: bool,
) -> list[threading.Thread]:
    threads = []
    for i in range(workers):
        worker = Worker(service, stores, stop, name=f"{_host_id()}:w{i}")
        threads.append(_thread(worker.run_forever, f"worker-{i}"))
    if sweeps:
        threads.append(_thread(lambda: sweeper(service, stores, settings, stop), "sweeper"))
    threads.extend(_start_passive(settings, service, stop))
    return threads


def _start_passive(
    settings: Settings, service: JobService, stop: threading.Event
) -> list[threading.Thread]:
    from bss.passive.scanner import run_passive

    return [_thread(lambda: run_passive(settings, service, stop), "passive")]


def _host_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def serve(settings: Settings, host: str, port: int) -> None:
    from bss.api.app import create_app

    settings.make_data_dir()
    db = make_engine(settings.resolved_database_url)
    init_db(db)
    stores = StoreHandle(settings.resolved_store_url)
    app = create_app(settings, db=db, stores=stores)
    stop = threading.Event()
    threads = start_background(
        app.state.jobs, stores, settings, stop, workers=settings.workers, sweeps=True
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=1 << 20,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, restoring the handlers
    # that were installed before it: ours just note the stop, so that the workers are
    # stopped and the store is closed cleanly below instead of the process dying.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info(
        "serving",
        extra={
            "host": host,
            "port": port,
            "data_dir": str(settings.data_dir),
            "workers": settings.workers,
        },
    )
    try:
        server.run()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        stores.close()
        db.dispose()
        log.info("stopped")


def run_worker(settings: Settings) -> None:
    settings.make_data_dir()
    db = make_engine(settings.resolved_database_url)
    init_db(db)
    service = JobService(db, settings)
    stores = StoreHandle(settings.resolved_store_url)
    try:
        stores.get()  # fail fast: the embedded store admits one process at a time
    except Exception as exc:
        log.error(
            "cannot open the membership store; the embedded DuckDB store is single-process, so "
            "`bss worker` cannot run while `bss serve` (or another worker) has it open: run "
            "workers as threads of `bss serve` (BSS_WORKERS) instead",
            extra={"store_url": settings.resolved_store_url, "error": str(exc)},
        )
        db.dispose()
        raise SystemExit(2) from exc
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    threads = start_background(
        service, stores, settings, stop, workers=max(1, settings.workers), sweeps=False
    )
    log.info("worker process running", extra={"workers": max(1, settings.workers)})
    while not stop.wait(1):
        pass
    for t in threads:
        t.join(timeout=30)
    stores.close()
    db.dispose()
