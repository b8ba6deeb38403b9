"""What a process checks before it serves or works: each engine reachable and usable, or one
line on stderr naming the setting and exit status 2 (never a traceback, never a service that
starts and then fails each request)."""

from __future__ import annotations

import sys
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from bss.db import make_engine
from bss.migrate import SchemaError, ensure_current
from bss.settings import Settings


def refuse(message: str) -> NoReturn:
    sys.stderr.write(f"bss: {message}\n")
    raise SystemExit(2)


def safe_url(url: str) -> str:
    """The URL without password or query (either may hold a secret), for logs and messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}" if user.split(":", 1)[0] else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _reason(exc: BaseException) -> str:
    """The driver's own first line (e.g. 'connection refused'), without SQLAlchemy's wrapping."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def connect_database(settings: Settings) -> Engine:
    """An engine for BSS_DATABASE_URL that has answered a query."""
    url = settings.resolved_database_url
    try:
        engine = make_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        refuse(f"BSS_DATABASE_URL {safe_url(url)!r} cannot be used: {_reason(exc)}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        refuse(f"BSS_DATABASE_URL {safe_url(url)!r}: cannot connect: {_reason(exc)}")
    return engine


def open_database(settings: Settings) -> Engine:
    """The database, reachable and at this code's schema revision (the embedded SQLite
    database, or an empty PostgreSQL one, is upgraded here; bss.migrate.ensure_current)."""
    engine = connect_database(settings)
    try:
        ensure_current(engine)
    except SchemaError as exc:
        engine.dispose()
        refuse(str(exc))
    except DBAPIError as exc:
        engine.dispose()
        refuse(f"BSS_DATABASE_URL {safe_url(settings.resolved_database_url)!r}: {_reason(exc)}")
    return engine


def engines_in_use(settings: Settings) -> dict[str, str]:
    """The database, store and files engines, for the start-up log line (no secrets)."""
    return {
        "database": safe_url(settings.resolved_database_url),
        "store": safe_url(settings.resolved_store_url),
        "files": safe_url(settings.resolved_files_url),
    }
