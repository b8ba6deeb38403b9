"""Leases in the shared database: which process is alive, and who does the once-per-machine work.

A lease is a named row with a holder and an expiry. Each process holds `process:<id>` while it
lives (an upload being received names its process, so a dead process's uploads are found at
once); one process at a time holds a role such as the retention sweeper or the passive
scanner, however many `bss serve` / `bss worker` processes share the database. A holder renews
its leases every third of their term; a lease not renewed in time lapses and anyone may take it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from sqlalchemy import BigInteger, Column, Engine, Select, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from bss import clock
from bss.db import is_sqlite, metadata, write_tx

log = logging.getLogger("bss.leases")

leases = Table(
    "leases",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("holder", String(200), nullable=False),
    #: UNIX milliseconds; past it, the lease is free for anyone to take.
    Column("expires_at", BigInteger, nullable=False),
)

PROCESS_PREFIX = "process:"
HOSTNAME = socket.gethostname()


def new_process_id() -> str:
    """host:pid:random (the random part tells a restarted process from a reused pid)."""
    return f"{HOSTNAME}:{os.getpid()}:{secrets.token_hex(4)}"


def _now_ms() -> int:
    return clock.now_ms()


def acquire(db: Engine, name: str, holder: str, ttl_seconds: float) -> bool:
    """Take the lease if it is free or lapsed, or renew it if `holder` has it already."""
    now = _now_ms()
    insert = sqlite.insert if is_sqlite(db) else postgresql.insert
    stmt = (
        insert(leases)
        .values(name=name, holder=holder, expires_at=now + int(ttl_seconds * 1000))
        .on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={"holder": holder, "expires_at": now + int(ttl_seconds * 1000)},
            where=(leases.c.holder == holder) | (leases.c.expires_at <= now),
        )
        .returning(leases.c.holder)
    )
    with write_tx(db) as conn:
        return conn.execute(stmt).first() is not None


def release(db: Engine, names: list[str], holder: str) -> None:
    with write_tx(db) as conn:
        conn.execute(delete(leases).where(leases.c.name.in_(names), leases.c.holder == holder))


def live_processes_query(now_ms: int | None = None) -> Select[tuple[str]]:
    """SELECT of the ids of processes whose lease is live (for use inside other statements)."""
    now_ms = _now_ms() if now_ms is None else now_ms
    return select(leases.c.holder).where(
        leases.c.name.startswith(PROCESS_PREFIX), leases.c.expires_at > now_ms
    )


def reap_dead_local_processes(db: Engine) -> int:
    """Drop every lease held by a process of this host that is no longer running, so that its
    roles and its uploads are taken over at once instead of when its leases lapse."""
    with db.connect() as conn:
        holders = {row.holder for row in conn.execute(select(leases.c.holder).distinct())}
    dead = [h for h in holders if _is_dead_local(h)]
    if dead:
        with write_tx(db) as conn:
            conn.execute(delete(leases).where(leases.c.holder.in_(dead)))
        log.warning("leases of dead processes dropped", extra={"processes": ",".join(dead)})
    return len(dead)


def _is_dead_local(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid_text, _, _nonce = rest.partition(":")
    if (
        host != HOSTNAME
        or not (pid_text.isascii() and pid_text.isdigit())
        or int(pid_text) == os.getpid()
    ):
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


class LeaseKeeper:
    """One process's leases: its own liveness lease and the roles it won, renewed by a thread."""

    def __init__(self, db: Engine, ttl_seconds: float, process_id: str | None = None) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.process_id = process_id or new_process_id()
        self._held: set[str] = set()
        self._lock = threading.Lock()

    @property
    def process_lease(self) -> str:
        return PROCESS_PREFIX + self.process_id

    def start(self, stop: threading.Event) -> threading.Thread:
        if not self.claim(self.process_lease):
            raise RuntimeError(f"process lease {self.process_lease} is taken")
        thread = threading.Thread(target=self._renew_forever, args=(stop,), name="leases")
        thread.daemon = True
        thread.start()
        return thread

    def claim(self, name: str) -> bool:
        """Take (or keep) the named lease; True while this process holds it."""
        try:
            won = acquire(self.db, name, self.process_id, self.ttl)
        except Exception:
            log.warning("lease claim failed", extra={"lease": name}, exc_info=True)
            won = False
        with self._lock:
            if won:
                self._held.add(name)
            else:
                self._held.discard(name)
        return won

    def holds(self, name: str) -> bool:
        with self._lock:
            return name in self._held

    def _renew_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            with self._lock:
                names = sorted(self._held)
            for name in names:
                if not self.claim(name):
                    log.warning("lease lost", extra={"lease": name})

    def release_all(self) -> None:
        with self._lock:
            names, self._held = sorted(self._held), set()
        if names:
            try:
                release(self.db, names, self.process_id)
            except Exception:
                log.warning("lease release failed", exc_info=True)
