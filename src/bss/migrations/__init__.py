"""Alembic scripts for the database schema (see bss.migrate and docs/migrations.md)."""
