"""The database schema's revision and its upgrade (Alembic; scripts in bss/migrations/).

Invariants:
- Every table change ships as a revision chained on the one head (docs/migrations.md); a
  database is "up to date" when its alembic_version row is that head.
- One process upgrades at a time: on SQLite under the database's writer file lock (which
  also keeps every bss process's writes out meanwhile), on PostgreSQL under an advisory
  lock. The revision is read again under the lock, so a process that waited finds the work
  done and does nothing.
- A process starting against a schema it cannot use stops (SchemaError); only the embedded
  SQLite database, and an empty PostgreSQL one, are upgraded by the process itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

log = logging.getLogger("bss.migrate")
# Alembic tells of its dialect at every look at a revision; "database schema upgraded" below
# is the line an operator needs.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

#: pg_advisory_lock key held while a PostgreSQL database is upgraded ("bss-migrate").
ADVISORY_LOCK_KEY = 0x6273735F6D6967

SCRIPTS = Path(__file__).with_name("migrations")


class SchemaError(Exception):
    """The database's schema is not one this code can run on (message for the operator)."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def heads() -> tuple[str, ...]:
    """The revisions nothing follows (exactly one, or two sessions chained on one parent)."""
    return tuple(_scripts().get_heads())


def head() -> str:
    found = heads()
    if len(found) != 1:
        raise RuntimeError(f"migrations have {len(found)} heads {found}: chain them into one")
    return found[0]


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  #: alembic_version's, None when the table is absent
    head: str  #: this code's
    has_tables: bool  #: any table at all (a database made before migrations has no revision)
    known: bool  #: the revision is one of this code's (False: made by a newer bss)

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.has_tables

    def describe(self) -> str:
        if self.revision is None:
            return "no revision: made before migrations" if self.has_tables else "empty"
        return f"revision {self.revision}"


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str | None) -> bool:
    if revision is None:
        return True
    return revision in {script.revision for script in _scripts().walk_revisions()}


def state(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        revision = _revision(conn)
        tables = revision is not None or bool(set(inspect(conn).get_table_names()))
    return SchemaState(revision, head(), tables, _known(revision))


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection held by the one process migrating this database."""
    if engine.dialect.name == "sqlite":
        from bss.db import sqlite_writer_lock

        with sqlite_writer_lock(engine), engine.connect() as conn:
            yield conn
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            conn.commit()


def upgrade(engine: Engine) -> SchemaState:
    """Bring the schema to this code's head; returns the state it found (under the lock)."""
    found = state(engine)
    if found.up_to_date:
        return found
    with _locked(engine) as conn:
        revision = _revision(conn)
        if not _known(revision):
            raise SchemaError(_newer_message(revision))
        if revision == found.head:
            return SchemaState(revision, found.head, True, True)
        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
    # A new database made at the head is no news; start-up errors after it stay one line.
    log.log(
        logging.DEBUG if found.empty else logging.INFO,
        "database schema created" if found.empty else "database schema upgraded",
        extra={"from_revision": revision, "to_revision": found.head},
    )
    return found


def _newer_message(revision: str | None) -> str:
    return (
        f"the database schema is at revision {revision}, which this bss does not know "
        f"(its newest is {head()}): it was upgraded by a newer bss; run that version"
    )


def ensure_current(engine: Engine) -> None:
    """At a process's start: upgrade the embedded SQLite database, or an empty PostgreSQL
    one, to head; any other schema must already be at head (`bss db upgrade` brings it
    there while no older process writes). Raises SchemaError naming what to do."""
    found = state(engine)
    if not found.known:
        raise SchemaError(_newer_message(found.revision))
    if found.up_to_date:
        return
    if engine.dialect.name == "sqlite" or found.empty:
        upgrade(engine)
        return
    raise SchemaError(
        f"the database schema is older than this bss ({found.describe()}; this bss needs "
        f"revision {found.head}): run `bss db upgrade`"
    )
