"""Schema migrations: one head, the head equal to the models, the baseline equal to the schema
made before migrations (tests/data/schema_a392526: dumped from `bss.db.init_db` at a392526,
the last commit without them), and such databases upgraded in place with their data.

SQLite and the local PostgreSQL (127.0.0.1:5432; throwaway databases), real `bss` processes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc, legacy
from sqlalchemy import Engine, inspect, text

from bss import migrate
from bss.db import import_table_modules, make_engine, metadata

OLD_SCHEMA = Path(__file__).parent / "data" / "schema_a392526"
ADMIN_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"bss_mig_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bss.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    made = make_engine(url)
    yield made
    made.dispose()


def load_old_schema(engine: Engine) -> None:
    """The tables exactly as init_db made them at a392526 (no alembic_version)."""
    ddl = (OLD_SCHEMA / f"{engine.dialect.name}.sql").read_text()
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            raw.driver_connection.executescript(ddl)  # type: ignore[union-attr]
        else:
            raw.cursor().execute(ddl)
            raw.commit()
    finally:
        raw.close()


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability), keys, unique constraints and indexes, comparable."""
    inspector = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], str(f["options"]))
                for f in inspector.get_foreign_keys(table)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
        }
    return out


def model_differences(engine: Engine) -> list[Any]:
    import_table_modules()
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def revision_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def test_exactly_one_head_and_one_chain() -> None:
    """Two sessions chaining revisions on the same parent leave two heads: re-chain one."""
    scripts = migrate._scripts()
    assert len(migrate.heads()) == 1
    files = sorted(p.name for p in (migrate.SCRIPTS / "versions").glob("*.py"))
    chain = list(scripts.walk_revisions())  # head first, down to the baseline
    assert len(chain) == len(files)
    assert chain[-1].revision == "0001" and chain[-1].down_revision is None
    for later, earlier in zip(chain, chain[1:], strict=False):
        assert later.down_revision == earlier.revision


def test_head_equals_the_models(engine: Engine) -> None:
    """A fresh database upgraded to head has every table, column and index the models
    declare: a model change without its migration fails here."""
    migrate.upgrade(engine)
    assert model_differences(engine) == []
    assert revision_rows(engine) == [migrate.head()]


def test_baseline_is_the_schema_made_before_migrations(engine: Engine, tmp_path: Path) -> None:
    load_old_schema(engine)
    old = schema_of(engine)
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    else:
        fresh = make_engine(url)
        with fresh.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    config = migrate._config()
    with fresh.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    assert schema_of(fresh) == old
    fresh.dispose()


def test_database_made_before_migrations_upgrades_with_its_data(engine: Engine) -> None:
    load_old_schema(engine)
    rows = {
        "members": [{"id": 7, "name": "seven", "state": "active", "created_on": 1, "last_modified": 2}],
        "segments": [
            {"id": 70, "member_id": 7, "code": "A", "code_key": "a", "state": "active",
             "created_on": 3, "last_modified": 4, "expire_minutes": 60}
        ],
        "seq_counters": [{"name": "jobs", "next_seq": 123456}],
    }  # fmt: skip
    with engine.begin() as conn:
        for table, values in rows.items():
            for row in values:
                names = ", ".join(row)
                marks = ", ".join(f":{name}" for name in row)
                conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), row)
    before = migrate.state(engine)
    assert (before.revision, before.has_tables, before.up_to_date) == (None, True, False)
    migrate.upgrade(engine)
    assert revision_rows(engine) == [migrate.head()]
    assert model_differences(engine) == []
    with engine.connect() as conn:
        for table, values in rows.items():
            found = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table}"))]
            assert [{k: r[k] for k in values[0]} for r in found] == values


def test_older_database_gains_the_nullable_columns_and_indexes_it_lacked(tmp_path: Path) -> None:
    """What init_db used to repair (e.g. jobs.seq_base, added after the first release of
    the jobs table) the baseline still adds."""
    engine = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    load_old_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_phase"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN seq_base"))
        conn.execute(
            text(
                "INSERT INTO jobs (job_id, member_id, phase, upload_source, created_on, "
                "last_modified, percent_complete, num_valid, num_invalid_format, "
                "num_valid_user, num_invalid_user, num_invalid_segment, num_invalid_timestamp,"
                " num_unauth_segment, num_past_expiration, num_inactive_segment, "
                "num_other_error, file_bytes, file_lines, file_deleted, lines_read, "
                "pairs_added, pairs_removed, attempts) VALUES ('j1', 7, 'completed', 'api', "
                "1, 2, 100, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 10, 6, 0, 6, 5, 0, 1)"
            )
        )
    migrate.upgrade(engine)
    assert model_differences(engine) == []
    with engine.connect() as conn:
        job = conn.execute(text("SELECT job_id, num_valid, seq_base FROM jobs")).one()
    assert tuple(job) == ("j1", 5, None)
    engine.dispose()


def _bss(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BSS), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_data_dir_made_before_migrations_upgrades_itself_at_start(tmp_path: Path) -> None:
    """`bss serve` on a data dir whose database has no revision (the schema a392526 made:
    the baseline test shows the two equal) upgrades it and serves its data as before."""
    data = tmp_path / "data"
    first = ServerProc(data, {"workers": 1}).start()
    try:
        admin = Api(first.url, ADMIN_USER, ADMIN_PASSWORD)
        admin.member(21)
        seg = admin.segment(21, "kept")
        done = admin.run(21, legacy([f"501,{seg['id']}:0", f"502,{seg['id']}:0", "bad"]))
        assert (done["phase"], done["num_valid"], done["num_invalid_format"]) == (
            "completed",
            2,
            1,
        )
    finally:
        first.stop()
    with sqlite3.connect(data / "bss.db") as conn:
        conn.execute("DROP TABLE alembic_version")
    again = ServerProc(data, {"workers": 1}).start()
    try:
        admin = Api(again.url, ADMIN_USER, ADMIN_PASSWORD)
        assert set(admin.segments_of(member_id=21, uid=501)) == {seg["id"]}
        job = admin.job(21, done["job_id"])
        assert (job["phase"], job["num_valid"], job["num_invalid_format"]) == ("completed", 2, 1)
        # the seq counter carried over: a new job's pairs win over the old ones
        later = admin.run(21, legacy([f"501,{seg['id']}:-1"]))
        assert later["num_valid"] == 1 and admin.segments_of(member_id=21, uid=501) == {}
    finally:
        again.stop()
    assert '"database schema upgraded"' in again.log_path.read_text()
    with sqlite3.connect(data / "bss.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrate.head(),)
        ]


def test_postgres_made_before_migrations_needs_db_upgrade(pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url)
    load_old_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (id, name, state, created_on, last_modified) "
                "VALUES (31, 'thirty-one', 'active', 1, 2)"
            )
        )
    engine.dispose()
    env = {"BSS_DATABASE_URL": pg_url}
    for command_args in (["serve", "--port", "1"], ["worker"]):
        refused = _bss(*command_args, "--data-dir", str(tmp_path / "d"), env=env)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            "bss: the database schema is older than this bss (no revision: made before "
            f"migrations; this bss needs revision {migrate.head()}): run `bss db upgrade`"
        ]
    assert _bss("db", "current", env=env).returncode == 1
    upgraded = _bss("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == (
        f"database schema upgraded from no revision: made before migrations to revision "
        f"{migrate.head()}"
    )
    again = _bss("db", "upgrade", env=env)
    assert again.stdout.strip() == f"database schema already at revision {migrate.head()}"
    server = ServerProc(tmp_path / "d", {"database_url": pg_url}).start()
    try:
        admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
        member = admin.ok("GET", "/member", params={"id": 31})["member"]
        assert member["name"] == "thirty-one"
    finally:
        server.stop()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_concurrent_upgrades_migrate_once(dialect: str, tmp_path: Path, request: Any) -> None:
    """Four `bss db upgrade` at once on one empty database: one migrates, three find it done."""
    env = {} if dialect == "sqlite" else {"BSS_DATABASE_URL": request.getfixturevalue("pg_url")}
    procs = [
        subprocess.Popen(
            [str(BSS), "db", "upgrade", "--data-dir", str(tmp_path / "d")],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in outs] == [0, 0, 0, 0], outs
    head = migrate.head()
    assert sorted(out.strip() for _, out, _ in outs) == [
        *[f"database schema already at revision {head}"] * 3,
        f"database schema upgraded from empty to revision {head}",
    ], outs
    url = env.get("BSS_DATABASE_URL") or f"sqlite:///{tmp_path / 'd' / 'bss.db'}"
    engine = make_engine(url)
    assert revision_rows(engine) == [migrate.head()]
    engine.dispose()


def test_schema_from_a_newer_bss_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert _bss("db", "upgrade", "--data-dir", str(data)).returncode == 0
    with sqlite3.connect(data / "bss.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    refused = _bss("serve", "--data-dir", str(data), "--port", "1")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "bss: the database schema is at revision 9999, which this bss does not know (its "
        f"newest is {migrate.head()}): it was upgraded by a newer bss; run that version"
    ]


def test_kept_jobs_get_the_lower_case_file_error_codes(tmp_path: Path) -> None:
    """Jobs that ended with EMPTY_FILE or NOT_A_SEGMENT_FILE before the codes were lower-cased
    read as empty_file and not_a_segment_file after the upgrade; other codes are untouched."""
    script = next(
        s
        for s in migrate._scripts().walk_revisions()
        if s.path.endswith("_lower_case_file_error_codes.py")
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    config = migrate._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, script.down_revision)
    codes = {"j1": "EMPTY_FILE", "j2": "NOT_A_SEGMENT_FILE", "j3": "corrupt_gzip", "j4": None}
    with engine.begin() as conn:
        for job_id, code in codes.items():
            conn.execute(
                text(
                    "INSERT INTO jobs (job_id, member_id, phase, upload_source, created_on, "
                    "last_modified, percent_complete, num_valid, num_invalid_format, "
                    "num_valid_user, num_invalid_user, num_invalid_segment, "
                    "num_invalid_timestamp, num_unauth_segment, num_past_expiration, "
                    "num_inactive_segment, num_other_error, file_bytes, file_lines, "
                    "file_deleted, lines_read, pairs_added, pairs_removed, attempts, "
                    "error_code) VALUES (:job_id, 7, 'error', 'api', 1, 2, 0, 0, 0, 0, 0, 0, "
                    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, :code)"
                ),
                {"job_id": job_id, "code": code},
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        found = dict(conn.execute(text("SELECT job_id, error_code FROM jobs")).all())
    assert found == {
        "j1": "empty_file",
        "j2": "not_a_segment_file",
        "j3": "corrupt_gzip",
        "j4": None,
    }
    engine.dispose()
