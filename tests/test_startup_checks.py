"""Start-up checks: a database, files store or schema a process cannot use stops `bss serve`
and `bss worker` with one line on stderr and exit status 2; the start-up log line names the
database, store and files engines in use without their secrets. Real processes, the local
PostgreSQL and a moto S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BSS, ServerProc, free_port
from passive_util import MotoServer

ADMIN_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_BASE = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")

pytestmark = pytest.mark.timeout(300)


def start(command: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    args = [str(BSS), command, "--data-dir", str(data_dir)]
    if command == "serve":
        args += ["--port", str(free_port())]
    return subprocess.run(
        args,
        env={**os.environ, "BSS_ADMIN_USERNAME": "admin", "BSS_ADMIN_PASSWORD": "pw-123456", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"{PG_BASE.replace(':5432', ':1')}/bss",
            "bss: BSS_DATABASE_URL 'postgresql+psycopg://postgres@127.0.0.1:1/bss': cannot "
            'connect: connection failed: connection to server at "127.0.0.1", port 1 '
            "failed: Connection refused",
        ),
        (
            f"{PG_BASE}/no_such_db_{uuid.uuid4().hex[:8]}",
            "bss: BSS_DATABASE_URL '{url}': cannot connect: connection failed: connection to "
            'server at "127.0.0.1", port 5432 failed: FATAL:  database "{name}" does not exist',
        ),
        (
            "mariadb+nodriver://nowhere/db",
            "bss: BSS_DATABASE_URL 'mariadb+nodriver://nowhere/db' cannot be used: Can't load "
            "plugin: sqlalchemy.dialects:mariadb.nodriver",
        ),
        (
            "no url at all",
            "bss: BSS_DATABASE_URL 'no url at all' cannot be used: Could not parse SQLAlchemy "
            "URL from given URL string",
        ),
    ],
    # stable ids: the missing database's name is random, and parallel runs collect alike
    ids=["refused", "no-such-database", "no-driver", "not-a-url"],
)
def test_a_database_url_that_cannot_be_used_stops_start_up(
    command: str, url: str, expected: str, tmp_path: Path
) -> None:
    refused = start(command, tmp_path / "d", BSS_DATABASE_URL=url)
    assert refused.returncode == 2
    name = url.rsplit("/", 1)[-1]
    assert refused.stderr.splitlines() == [expected.format(url=url, name=name)]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_s3_files_without_credentials_stop_start_up(
    command: str, moto: MotoServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "BSS_FILES_URL": "s3://files/bss",
        "BSS_S3_ENDPOINT_URL": moto.url,
    }
    refused = subprocess.run(
        [str(BSS), command, "--data-dir", str(tmp_path / "d"), "--port", str(free_port())][
            : None if command == "serve" else 4
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "bss: BSS_FILES_URL 's3://files/bss': no S3 credentials found (set AWS_ACCESS_KEY_ID "
        "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
    ]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_s3_files_without_the_bucket_stop_start_up(
    command: str, moto: MotoServer, tmp_path: Path
) -> None:
    refused = start(
        command,
        tmp_path / "d",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        BSS_FILES_URL="s3://no-such-bucket/bss",
        BSS_S3_ENDPOINT_URL=moto.url,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "bss: BSS_FILES_URL 's3://no-such-bucket/bss': bucket 'no-such-bucket' does not exist "
        f"at {moto.url}"
    ]


def test_an_unknown_files_url_stops_start_up(tmp_path: Path) -> None:
    refused = start("worker", tmp_path / "d", BSS_FILES_URL="ftp://files.example/bss")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "bss: BSS_FILES_URL 'ftp://files.example/bss': use file:///path or s3://bucket/prefix"
    ]


def _records(log: str, message: str) -> list[dict[str, object]]:
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == message:
                found.append(record)
    return found


def test_start_up_line_names_the_engines_without_secrets(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    psycopg = pytest.importorskip("psycopg")
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="engines")
    name = f"bss_start_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    # trust authentication: the password is never checked, only kept out of the logs
    database = PG_BASE.replace("postgres@", "postgres:s3cret-pw@") + f"/{name}?application_name=x"
    env = {
        "database_url": database,
        "files_url": "s3://engines/prefix",
        "s3_endpoint_url": moto.url,
    }
    server = ServerProc(tmp_path / "d", env).start()
    worker = ServerProc(tmp_path / "w", env, command=("worker",)).start()
    try:
        deadline = time.monotonic() + 90  # a worker has no HTTP to wait for: its log line
        while not _records(worker.log_path.read_text(), "worker process running"):
            assert time.monotonic() < deadline and worker.proc and worker.proc.poll() is None
            time.sleep(0.1)
        server.stop()
        worker.stop()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    expected = {
        "database": f"{PG_BASE}/{name}",
        "store": f"lmdb://{(tmp_path / 'd' / 'memberships.lmdb').resolve()}",
        "files": "s3://engines/prefix",
    }
    (serving,) = _records(server.log_path.read_text(), "serving")
    assert {k: serving[k] for k in expected} == expected
    (running,) = _records(worker.log_path.read_text(), "worker process running")
    assert {k: running[k] for k in expected} == {
        **expected,
        "store": f"lmdb://{(tmp_path / 'w' / 'memberships.lmdb').resolve()}",
    }
    assert "s3cret-pw" not in server.log_path.read_text() + worker.log_path.read_text()
