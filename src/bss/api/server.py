"""`bss serve`: the HTTP API with the background work of bss.worker_process beside it, one
process or several sharing one port (BSS_PROCESSES)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import uvicorn

from bss.api.head_guard import MAX_HEAD_BYTES, guarded_protocol
from bss.jobs.worker import StoreHandle
from bss.settings import Settings
from bss.startup import check_files, engines_in_use, open_database
from bss.worker_process import open_store_or_exit, start_background, start_leases

log = logging.getLogger("bss.server")


def serve(settings: Settings, host: str, port: int, *, fd: int | None = None) -> None:
    """One API process (with its workers and roles) on host:port, or on the listening socket
    `fd` a supervisor handed down; BSS_PROCESSES > 1 starts that supervisor instead."""
    from bss.api.app import create_app

    if settings.processes > 1 and fd is None:
        supervise(settings, host, port)
        return
    settings.make_data_dir()
    check_files(settings)
    db = open_database(settings)
    stores = StoreHandle.for_settings(settings)
    # A wrong URL, an unreachable Redis: one line at start.
    open_store_or_exit(stores)
    stop = threading.Event()
    keeper = start_leases(db, settings, stop)
    app = create_app(settings, db=db, stores=stores, process_id=keeper.process_id)
    threads = start_background(
        app.state.jobs, stores, settings, stop, keeper, workers=settings.workers
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # The client address comes from X-Forwarded-For only behind BSS_TRUSTED_PROXIES
        # (bss.api.deps.client_address); uvicorn's own rewrite would believe any local peer.
        proxy_headers=False,
        # Slow (slowloris) and huge request heads are cut by our protocol: uvicorn's httptools
        # protocol bounds neither.
        http=guarded_protocol(settings.request_head_timeout, MAX_HEAD_BYTES),
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = uvicorn.Server(config)
    # Everything made at start-up (modules, app, routes) lives as long as the process: kept
    # out of the collector's full passes, which otherwise walk it all while a request waits
    # (measured: the p99 of a 1000-user lookup went from 26 to 11 ms).
    gc.freeze()
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
            **engines_in_use(settings),
        },
    )
    try:
        server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        keeper.release_all()
        app.state.jobs.fail_orphaned_uploads()  # ours, if any request outlived the shutdown
        stores.close()
        db.dispose()
        log.info("stopped")


def supervise(settings: Settings, host: str, port: int) -> None:
    """`bss serve --processes N`: bind the port once, run N `bss serve` children accepting on
    that one socket, restart a child that dies, stop them all on SIGTERM/SIGINT."""
    from bss.accounts.service import ensure_admin

    settings.make_data_dir()
    check_files(settings)
    db = open_database(settings)  # upgraded once, here, before any child starts
    ensure_admin(db, settings)
    db.dispose()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    fd = listener.fileno()
    env = {
        **os.environ,
        "BSS_DATA_DIR": str(settings.data_dir),
        "BSS_WORKERS": str(settings.workers),
        "BSS_PROCESSES": "1",
    }
    if settings.public_url:
        env["BSS_PUBLIC_URL"] = settings.public_url
    command = [sys.executable, "-m", "bss", "serve", "--host", host, "--port", str(port)]
    command += ["--fd", str(fd)]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, pass_fds=(fd,))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children = [spawn() for _ in range(settings.processes)]
    log.info(
        "serving",
        extra={
            "host": host,
            "port": port,
            "processes": settings.processes,
            "supervisor": True,
            **engines_in_use(settings),
        },
    )
    exit_code = 0
    while not stop.wait(0.5):
        for i, child in enumerate(children):
            code = child.poll()
            if code is None:
                continue
            if code == 2:  # refused to start (settings, data dir): restarting cannot help
                log.error("an API process refused to start; stopping", extra={"exit": code})
                exit_code = 2
                stop.set()
                break
            log.warning(
                "an API process died; restarting it", extra={"pid": child.pid, "exit": code}
            )
            children[i] = spawn()
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    listener.close()
    log.info("stopped")
    if exit_code:
        raise SystemExit(exit_code)
