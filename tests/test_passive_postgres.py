"""The passive exactly-once machinery on PostgreSQL (claims by INSERT, compare-and-set takeovers).

Re-runs the folder backend's concurrency and crash tests with the relational store on the
local PostgreSQL (127.0.0.1:5432, database `test`), each test in a fresh database of its own.
Skipped when PostgreSQL is not reachable.
"""

from __future__ import annotations

import uuid

import pytest

psycopg = pytest.importorskip("psycopg")

from passive_util import Pipeline  # noqa: E402
from test_passive_folder import (  # noqa: E402,F401 - collected here with this module's fixture
    MEMBER,
    test_a_scanner_that_lost_its_claim_does_not_create_a_job,
    test_claim_insert_has_exactly_one_winner,
    test_crash_at_each_step_is_finished_once,
    test_folder_end_to_end_with_odd_names,
    test_killed_after_job_created_but_before_it_was_recorded,
    test_two_scanners_at_once_each_file_once,
)

ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3"


@pytest.fixture
def pipeline(tmp_path):
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"bss_passive_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    p = Pipeline(
        tmp_path / "data",
        max_file_bytes=10_000,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
    )
    try:
        p.add_member(MEMBER)
        yield p
    finally:
        p.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_runs_on_postgresql(pipeline):
    assert pipeline.engine.dialect.name == "postgresql"
