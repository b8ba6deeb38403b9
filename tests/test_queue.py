"""The leased-queue primitive (bss.queue) and the failure rules of the jobs queue: a failure
of the infrastructure never uses a job's attempts, the job waits and says why; the job's own
failures and lapsed leases (3 in a row without progress) do count."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError
from conftest import legacy
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import OperationalError

from bss.db import init_db, make_engine, now_s, write_tx
from bss.errors import StoreUnavailable
from bss.jobs.models import jobs
from bss.jobs.queue import LOST_LEASES_PER_FAILURE
from bss.jobs.service import JobService
from bss.jobs.worker import StoreHandle, Worker
from bss.queue import Fault, LeasedQueue, QueueTable, backoff, classify
from bss.segments.service import create_segment
from bss.settings import Settings

PG_DSN = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

# --- the classification -----------------------------------------------------------------


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (StoreUnavailable("fewer than 1 replicas confirmed a write"), Fault.INFRASTRUCTURE),
        (redis.exceptions.ConnectionError("refused"), Fault.INFRASTRUCTURE),
        (redis.exceptions.TimeoutError("slow"), Fault.INFRASTRUCTURE),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), Fault.INFRASTRUCTURE),
        (OperationalError("SELECT 1", {}, Exception("server closed")), Fault.INFRASTRUCTURE),
        (EndpointConnectionError(endpoint_url="http://s3"), Fault.INFRASTRUCTURE),
        (ConnectionRefusedError(111, "refused"), Fault.INFRASTRUCTURE),
        (
            ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {}}, "PutObject"),
            Fault.INFRASTRUCTURE,
        ),
        (
            ClientError({"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {}}, "GetObject"),
            Fault.OWN,
        ),
        (ValueError("a bug the file triggers"), Fault.OWN),
        (KeyError("x"), Fault.OWN),
        (_chained(RuntimeError("wrapped"), StoreUnavailable("down")), Fault.INFRASTRUCTURE),
        (_chained(RuntimeError("wrapped"), ValueError("bad")), Fault.OWN),
    ],
)
def test_classify(exc: Exception, fault: Fault) -> None:
    assert classify(exc) is fault


def test_backoff_doubles_and_is_bounded() -> None:
    assert [backoff(n, first=5, cap=60) for n in range(7)] == [0, 5, 10, 20, 40, 60, 60]
    assert backoff(10_000, first=1, cap=30) == 30


# --- the primitive, on SQLite and PostgreSQL ----------------------------------------------

_meta = MetaData()
work = Table(
    "queue_test_work",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String(10), nullable=False),
    Column("claimed_by", String(80), nullable=True),
    Column("claimed_until", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
)
SPEC = QueueTable(
    table=work,
    holder=work.c.claimed_by,
    until=work.c.claimed_until,
    ready=lambda _now: work.c.state == "waiting",
    order=(work.c.id,),
    attempts=work.c.attempts,
    owned=work.c.state == "waiting",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        db = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
        _meta.create_all(db)
        yield db
        db.dispose()
        return
    psycopg = pytest.importorskip("psycopg")
    name = f"bss_queue_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    db = make_engine(url)
    _meta.create_all(db)
    try:
        yield db
    finally:
        db.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _fill(db: Any, n: int) -> list[int]:
    with write_tx(db) as conn:
        conn.execute(insert(work), [{"state": "waiting", "attempts": 0} for _ in range(n)])
        return list(conn.execute(select(work.c.id).order_by(work.c.id)).scalars())


def test_concurrent_claims_hand_each_row_to_one_holder(engine: Any) -> None:
    ids = _fill(engine, 60)
    queue = LeasedQueue(engine, SPEC, lease_seconds=60)
    claimed: dict[str, list[int]] = {}

    def consumer(name: str) -> None:
        mine = claimed.setdefault(name, [])
        while (row := queue.claim(name)) is not None:
            mine.append(row["id"])
            assert row["claimed_by"] == name and row["attempts"] == 1

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [row_id for rows in claimed.values() for row_id in rows]
    assert sorted(every) == ids  # each row exactly once
    assert queue.claim("late") is None  # all leased


def test_lease_guards_every_write_and_lapses(engine: Any) -> None:
    (row_id,) = _fill(engine, 1)
    queue = LeasedQueue(engine, SPEC, lease_seconds=60)
    row = queue.claim("a")
    assert row is not None and row["id"] == row_id
    assert not queue.renew(row_id, "b")  # not b's
    assert queue.renew(row_id, "a")
    assert queue.renew_many([row_id], "b") == set() and queue.renew_many([row_id], "a") == {row_id}
    with write_tx(engine) as conn:  # a's lease lapses
        conn.execute(update(work).values(claimed_until=now_s() - 1))
    again = queue.claim("b")
    assert again is not None and again["attempts"] == 2 and again["claimed_by"] == "b"
    assert not queue.finish(row_id, "a", {"state": "done"})  # a was presumed dead
    assert queue.finish(row_id, "b", {"state": "done"})
    assert queue.claim("c") is None  # finished work is not ready


def test_release_with_a_delay_waits_that_long(engine: Any) -> None:
    (row_id,) = _fill(engine, 1)
    queue = LeasedQueue(engine, SPEC, lease_seconds=60)
    assert queue.claim("a") is not None
    assert queue.release(row_id, "a", delay=3600)
    assert queue.claim("b") is None  # not before its backoff
    with engine.connect() as conn:
        holder, until = conn.execute(select(work.c.claimed_by, work.c.claimed_until)).one()
    assert holder is None and until >= now_s() + 3590
    assert queue.release(row_id, "a") is False  # a holds it no more
    with write_tx(engine) as conn:
        conn.execute(update(work).values(claimed_until=now_s() - 1))
    assert queue.claim("b") is not None


# --- the jobs queue's failure rules -------------------------------------------------------


class FlakyStore:
    """A real store whose first `failures` apply calls raise `error` (after writing the
    first half of the batch, as a store that fails mid-job has), then work."""

    def __init__(self, store: Any, failures: int, error: Exception) -> None:
        self.store = store
        self.failures = failures
        self.error = error

    def apply_many(self, batches: Any, progress: Any = None, written: Any = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            first = next(iter(batches), None)
            if first is not None:
                self.store.apply(first.slice(0, first.num_rows // 2))
            raise self.error
        self.store.apply_many(batches, progress, written)

    def apply(self, batch: pa.Table) -> None:
        self.store.apply(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class _Stores(StoreHandle):
    def __init__(self, url: str, flaky: FlakyStore | None = None) -> None:
        super().__init__(url)
        self.flaky = flaky

    def get(self, region: str | None = None) -> Any:
        real = super().get(region)
        if self.flaky is not None:
            self.flaky.store = real
            return self.flaky
        return real


def _setup(tmp_path: Path, **settings: Any) -> tuple[Settings, JobService, int]:
    config = Settings(data_dir=tmp_path, job_lease_seconds=60, **settings)
    db = make_engine(config.resolved_database_url)
    init_db(db)
    return config, JobService(db, config), create_segment(db, 5, {"code": "s"})["id"]


def _submit(tmp_path: Path, svc: JobService, segment: int, name: str = "in.txt") -> str:
    src = tmp_path / name
    src.write_bytes(legacy([f"{u},{segment}:0" for u in range(1, 2001)] + ["bad line"]))
    return str(svc.submit_file(5, src, upload_source="folder", source_key=name)["job_id"])


def _row(svc: JobService, job_id: str) -> dict[str, Any]:
    row = svc.job_row(job_id)
    assert row is not None
    return row


def _due_now(svc: JobService, job_id: str) -> None:
    """Skip the job's backoff (what the test would otherwise sleep through)."""
    with write_tx(svc.db) as conn:
        conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(claimed_until=0))


def test_infrastructure_failures_wait_and_never_count(tmp_path: Path) -> None:
    settings, svc, segment = _setup(tmp_path, job_max_attempts=1)
    expected_id = _submit(tmp_path, svc, segment, "ref.txt")
    stores = _Stores(settings.resolved_store_url)
    assert Worker(svc, stores, threading.Event(), name="ref").run_once()
    expected = svc.get_job(expected_id)
    assert expected is not None and expected["phase"] == "completed"

    job_id = _submit(tmp_path, svc, segment)
    stores.flaky = FlakyStore(None, failures=3, error=StoreUnavailable("fewer than 1 replicas"))
    worker = Worker(svc, stores, threading.Event(), name="w")
    for run in range(1, 4):
        assert worker.run_once()
        row = _row(svc, job_id)
        # still queued, nothing counted, says why and since when
        assert row["phase"] in ("validating", "processing")
        assert row["failures"] == 0 and row["attempts"] == run
        assert row["waiting_reason"] == "StoreUnavailable: fewer than 1 replicas"
        assert row["waiting_since"] is not None and row["claimed_by"] is None
        shown = svc.get_job(job_id)
        assert shown is not None and shown["waiting_reason"] == row["waiting_reason"]
        assert worker.run_once() is False  # waits out its backoff
        _due_now(svc, job_id)
    assert worker.run_once()  # the store is back
    done = svc.get_job(job_id)
    assert done is not None and done["phase"] == "completed", done
    same = ("num_valid", "num_invalid_format", "num_valid_user", "error_log_lines")
    assert {k: done[k] for k in same} == {k: expected[k] for k in same}
    assert done["num_valid"] == 2000 and done["num_invalid_format"] == 1
    assert done["waiting_reason"] is None and done["waiting_since"] is None
    stores.close()


def test_infrastructure_wait_ends_as_infrastructure_timeout_with_the_file_kept(
    tmp_path: Path,
) -> None:
    settings, svc, segment = _setup(tmp_path, job_infra_wait_max=60)
    job_id = _submit(tmp_path, svc, segment)
    down = redis.exceptions.ConnectionError("Connection refused")
    stores = _Stores(settings.resolved_store_url, FlakyStore(None, 10, down))
    worker = Worker(svc, stores, threading.Event(), name="w")
    assert worker.run_once()
    assert _row(svc, job_id)["waiting_reason"] == "ConnectionError: Connection refused"
    with write_tx(svc.db) as conn:  # it has waited longer than the maximum
        conn.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(claimed_until=0, waiting_since=now_s() - 61)
        )
    assert worker.run_once()
    done = svc.get_job(job_id)
    assert done is not None
    assert (done["phase"], done["error_code"]) == ("error", "infrastructure-timeout")
    assert "BSS_JOB_INFRA_WAIT_MAX (60 s)" in done["error_message"]
    assert "Connection refused" in done["error_message"]
    row = _row(svc, job_id)
    assert row["failures"] == 0
    assert svc.files.exists(row["file_path"])  # kept for another try
    stores.close()


def test_own_failures_count_up_to_the_setting(tmp_path: Path) -> None:
    settings, svc, segment = _setup(tmp_path, job_max_attempts=2)
    job_id = _submit(tmp_path, svc, segment)
    stores = _Stores(settings.resolved_store_url, FlakyStore(None, 10, ValueError("a bug")))
    worker = Worker(svc, stores, threading.Event(), name="w")
    for failures in (1, 2):
        assert worker.run_once()
        row = _row(svc, job_id)
        assert row["failures"] == failures and row["waiting_reason"] is None
        assert row["phase"] in ("validating", "processing")
        _due_now(svc, job_id)
    assert worker.run_once()  # the third claim gives up
    done = svc.get_job(job_id)
    assert done is not None
    assert (done["phase"], done["error_code"], done["error_message"]) == (
        "error",
        "processing-error",
        "processing failed repeatedly",
    )
    stores.close()


def test_lost_leases_count_once_per_three_in_a_row_without_progress(tmp_path: Path) -> None:
    _settings, svc, segment = _setup(tmp_path)
    job_id = _submit(tmp_path, svc, segment)
    for i in range(LOST_LEASES_PER_FAILURE):
        row = svc.claim_next(f"dies-{i}")
        assert row is not None
        assert (row["lost_leases"], row["failures"]) == (i, 0)
        _due_now(svc, job_id)  # killed: its lease lapses
    row = svc.claim_next("next")
    assert row is not None and (row["lost_leases"], row["failures"]) == (0, 1)
    # a run that gets further than any before clears the count of lost leases
    _due_now(svc, job_id)
    row = svc.claim_next("progressing")
    assert row is not None and row["lost_leases"] == 1
    assert svc.record_progress(row["id"], "progressing", ("processing", 10))
    assert _row(svc, job_id)["lost_leases"] == 0
    _due_now(svc, job_id)
    row = svc.claim_next("again")
    assert row is not None and row["lost_leases"] == 1
    assert svc.record_progress(row["id"], "again", ("processing", 5))  # not further
    assert _row(svc, job_id)["lost_leases"] == 1
    # a release (shutting down) is no lost lease
    assert svc.release(row["id"], "again")
    row = svc.claim_next("after")
    assert row is not None and (row["lost_leases"], row["failures"]) == (1, 1)
