"""Alembic's environment for bss: the connection comes from bss.migrate (under its lock), or,
for a developer's `alembic revision --autogenerate`, from BSS_DATABASE_URL / BSS_DATA_DIR."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from bss.db import import_table_modules, make_engine, metadata

import_table_modules()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it: op.batch_alter_table does that, and
        # autogenerate writes its operations that way for SQLite.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from bss.settings import Settings

    engine = make_engine(Settings().resolved_database_url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("bss migrations run against a database (no offline SQL mode)")
run_online()
