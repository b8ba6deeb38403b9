"""The relational store (members, users, segments, configs, jobs, passive claims).

One SQLAlchemy Core code path for SQLite (the embedded default) and PostgreSQL; each domain
declares its tables on `metadata` in its own module, and `init_db` imports them all.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError

from bss.errors import syntax

metadata = MetaData()

#: Every id column (members, users, segments, jobs) is a 32-bit INTEGER, as on PostgreSQL, and
#: the Avro schema's segment ids are ints: integers from clients are checked against this range
#: before they reach a query (a larger one overflowed the driver: HTTP 500).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: Modules declaring tables on `metadata`; the passive one is another engineer's.
TABLE_MODULES = (
    "bss.accounts.models",
    "bss.segments.models",
    "bss.jobs.models",
    "bss.passive.models",
    "bss.ratelimit",
    "bss.leases",
    "bss.store.seqs",
    "bss.webhooks.models",
    "bss.reports.models",
    "bss.realtime.models",
)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction. On SQLite, writers of this process queue on a lock instead of in
    SQLite's busy handler (which sleeps up to 100 ms per retry: bad tail latency), and a
    transaction that reads before it writes cannot meet a commit made in between by this
    process (SQLITE_BUSY_SNAPSHOT). PostgreSQL needs none of it."""
    if not is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
        return
    with _LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(engine, threading.Lock())
    with lock, engine.begin() as conn:
        yield conn


def init_db(engine: Engine) -> None:
    """Create every domain's tables (idempotent), and add the nullable columns that a
    database made by an older version lacks (e.g. jobs.seq_base)."""
    for name in TABLE_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    metadata.create_all(engine)
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present and c.nullable]
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with write_tx(engine) as conn:
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    )
            except DBAPIError:  # another process added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


def bounded_int(
    value: Any, name: str, *, minimum: int = INT32_MIN, maximum: int = INT32_MAX
) -> int:
    """An integer from a query parameter or a JSON body, in range, or SYNTAX naming `name`."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise syntax(f"{name} must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise syntax(f"{name} must be an integer") from exc
    if not minimum <= number <= maximum:
        raise syntax(f"{name} must be between {minimum} and {maximum}")
    return number


def now_s() -> int:
    """Current UNIX time in whole seconds (what every table stores)."""
    return int(time.time())


def fmt_ts(ts: int | float | None) -> str | None:
    """UNIX seconds -> the documented "YYYY-MM-DD HH:MM:SS" (UTC); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_ts(text: str) -> int:
    """The documented date form (also with "+" or "T" between date and time) -> UNIX seconds."""
    value = text.strip().replace("+", " ").replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    raise ValueError(f"not a date: {text!r}; use YYYY-MM-DD HH:MM:SS")
