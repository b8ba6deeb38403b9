"""Store regions, all real: a `bss serve` whose local region is the embedded LMDB store and
whose second region ("eu") is a redis-server started here (with an append-only file, so that
a stopped and restarted region keeps what it had, like a real data center).

The eu Redis is stopped between two jobs: the second job completes locally at once, its file
is kept past its retention while eu is owed it, and once Redis is back the catch-up applies
it there: every user's memberships and every segment's count read with `region=eu` equal
the local ones exactly. No timed assertions: every wait polls with a generous timeout.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_util import RedisServer, free_port, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc, legacy
from sqlalchemy import select, update

from bss.db import init_db, make_engine, now_s, write_tx
from bss.errors import StoreUnavailable
from bss.jobs.models import jobs
from bss.jobs.regions import RegionCatchUp
from bss.jobs.service import JobService
from bss.settings import Settings
from bss.store import regions

MEMBER = 501


def _until(check: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def eu_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path, persistent=True)
    yield redis
    redis.stop()


def _server(bss_server: Callable[..., ServerProc], tmp_path: Path, eu_url: str, **env: Any):
    return bss_server(
        store_regions=f"us=lmdb://{tmp_path / 'us.lmdb'};eu={eu_url}",
        local_region="us",
        region_retry_max_seconds=1,
        **env,
    )


def _lookups(api: Api, users: list[int], **params: Any) -> list[Any]:
    body = api.ok(
        "POST",
        "/user-segments",
        params=params,
        json={"users": [{"uid": str(uid)} for uid in users]},
    )
    return [answer["segments"] for answer in body["users"]]


def _counts(api: Api, **params: Any) -> dict[int, int]:
    body = api.ok("GET", "/segment", params={"member_id": MEMBER, **params})
    return {s["id"]: s["member_count"] for s in body["segments"]}


def _block(seg_id: int, **fields: Any) -> dict[str, Any]:
    return {"seg_id": seg_id, "seg_code": None, "value": None, "expiration": None, **fields}


def _regions(api: Api, job_id: str) -> dict[str, str]:
    return api.job(MEMBER, job_id)["regions"]


@needs_redis
def test_a_region_that_is_down_is_caught_up_from_the_kept_file(
    bss_server, eu_redis: RedisServer, tmp_path: Path
) -> None:
    eu_redis.start()
    # Retention 0 days and a sweep every second: a file is kept only because a region is
    # owed it.
    srv = _server(
        bss_server, tmp_path, eu_redis.url, file_retention_days=0, sweep_seconds=1, workers=1
    )
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    seg_a = api.segment(MEMBER, "a")["id"]
    seg_b = api.segment(MEMBER, "b", expire_minutes=600)["id"]
    seg_c = api.segment(MEMBER, "c")["id"]
    seg_d = api.segment(MEMBER, "d")["id"]
    users = list(range(1000, 1400))
    first = [f"{uid},{seg_a}:0;{seg_b}:0" for uid in users[:300]]
    first += [f"{uid},{seg_c}:1440;{seg_d}:0" for uid in users[100:400]]
    job1 = api.run(MEMBER, legacy(first))
    assert job1["phase"] == "completed", job1
    _until(lambda: _regions(api, job1["job_id"]) == {"us": "applied", "eu": "applied"}, "eu")
    local = _lookups(api, users)
    assert sum(map(len, local)) == 1200
    assert _lookups(api, users, region="eu") == local
    assert _lookups(api, users, region="us") == local
    assert _counts(api, region="eu") == _counts(api)
    assert _counts(api) == {seg_a: 300, seg_b: 300, seg_c: 300, seg_d: 300}

    eu_redis.stop()
    # Job 2 removes some of job 1's memberships (removal: expiration -1) and adds others.
    second = [f"{uid},{seg_a}:-1" for uid in users[:150]]
    second += [f"{uid},{seg_b}:60;{seg_c}:0" for uid in users[300:400]]
    job2 = api.run(MEMBER, legacy(second))
    # While eu is down, a real-time post and a segment deletion are owed to it as well.
    rt = [
        {"user_id": str(users[0]), "seg_block": [_block(seg_c, value=5)]},
        {"user_id": str(users[399]), "seg_block": [_block(seg_c, expiration=-1)]},
    ]
    answer = api.ok("POST", "/rt-segment", params={"member_id": MEMBER}, json={"rt_segment": rt})
    assert answer["warnings"] == [], answer
    api.ok("DELETE", "/segment", params={"id": seg_d})
    assert job2["phase"] == "completed", job2  # the local region has it: complete at once
    assert (job2["num_valid"], job2["num_invalid_format"]) == (350, 0), job2
    assert job2["regions"]["us"] == "applied"
    assert job2["regions"]["eu"] == "pending" or job2["regions"]["eu"].startswith(
        ("applying", "error")
    ), job2["regions"]

    # The catch-up has tried and failed: the job says so, and keeps retrying.
    def failed_on_eu() -> dict[str, str] | None:
        # one read: the state moves on between two (error, then applying again)
        states = _regions(api, job2["job_id"])
        return states if states["eu"].startswith("error") else None

    failed = _until(failed_on_eu, "a failed attempt on eu")
    assert "retried" in failed["eu"], failed

    uploads = srv.data_dir / "uploads"
    # Job 1 is everywhere: the sweep deletes its file; job 2's stays while eu is owed it.
    _until(lambda: not (uploads / job1["job_id"]).exists(), "job 1's file to be swept")
    assert (uploads / job2["job_id"]).exists()
    local = _lookups(api, users)
    assert sum(map(len, local)) == 1200 - 150 + 100 + 1 - 1 - 300

    eu_redis.start()
    _until(lambda: _regions(api, job2["job_id"])["eu"] == "applied", "eu to catch up")
    # The real-time post and the deletion are region writes of their own, claimed one at a
    # time after the job's: they may reach eu just after the job does.
    _until(
        lambda: _lookups(api, users, region="eu") == local,
        "eu to have the real-time post and the deletion too",
    )
    assert _counts(api, region="eu") == _counts(api) == {seg_a: 150, seg_b: 400, seg_c: 300}
    assert {s["id"]: s.get("value") for s in _lookups(api, [users[0]], region="eu")[0]} == {
        seg_b: None,
        seg_c: 5,
    }
    # Every region has job 2 now: its file goes at the next sweep.
    _until(lambda: not (uploads / job2["job_id"]).exists(), "job 2's file to be swept")


def test_a_remote_region_down_at_start_does_not_stop_the_service(
    bss_server, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    srv = _server(bss_server, tmp_path, f"redis://127.0.0.1:{port}/0")
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    seg = api.segment(MEMBER, "a")["id"]
    job = api.run(MEMBER, legacy([f"7,{seg}:0"]))
    assert job["phase"] == "completed"
    assert job["regions"]["us"] == "applied" and job["regions"]["eu"] != "applied"
    assert [s["id"] for s in _lookups(api, [7])[0]] == [seg]
    # A region that is not configured: the documented 400 envelope.
    for params in ({"uid": "7", "region": "asia"}, {"uid": "7", "region": "US"}):
        body = api.get("/user-segments", **params)
        assert (body["_http"], body["status"], body["error_id"]) == (400, "ERROR", "SYNTAX")
        assert "unknown region" in body["error"]
    body = api.get("/segment", member_id=MEMBER, region="asia")
    assert (body["_http"], body["error_id"]) == (400, "SYNTAX")


def test_region_param_without_regions_is_refused(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    body = api.get("/user-segments", uid="7", region="eu")
    assert (body["_http"], body["error_id"]) == (400, "SYNTAX")
    assert "BSS_STORE_REGIONS is not set" in body["error"]


def _start(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BSS), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
        env={**ServerProc(tmp_path / "d", {}).env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {
                "BSS_STORE_REGIONS": "us=lmdb:///tmp/x;eu=redis://h:1/0",
                "BSS_STORE_URL": "lmdb:///y",
            },
            "BSS_STORE_REGIONS and BSS_STORE_URL are both set",
        ),
        (
            {"BSS_STORE_REGIONS": "us=lmdb:///tmp/x;eu=redis://h:1/0", "BSS_LOCAL_REGION": "asia"},
            "BSS_LOCAL_REGION must be one of the regions of BSS_STORE_REGIONS (us, eu)",
        ),
        ({"BSS_STORE_REGIONS": "us=lmdb:///tmp/x"}, "fewer than two regions"),
    ],
)
def test_invalid_region_settings_refuse_start_up_in_one_line(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    done = _start(tmp_path, env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_local_region_refuses_start_up_in_one_line(tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        "BSS_STORE_REGIONS": f"us={down};eu=lmdb://{tmp_path / 'eu.lmdb'}",
        "BSS_LOCAL_REGION": "us",
    }
    done = _start(tmp_path, env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Redis store" in lines[0], done.stderr


# --- the region_writes table on both databases ------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def region_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobService]:
    env = {
        "data_dir": tmp_path,
        "store_regions": f"us=lmdb://{tmp_path / 'us'};eu=lmdb://{tmp_path / 'eu'}",
        "local_region": "us",
        "file_retention_days": 0,
        "history_days": 1,
    }
    if request.param == "sqlite":
        databases: Iterator[str] = iter([Settings(**env).resolved_database_url])
    else:
        databases = _pg_database()
    url = next(databases)
    engine = make_engine(url)
    init_db(engine)
    yield JobService(engine, Settings(**env, database_url=url))
    engine.dispose()
    next(databases, None)  # drops a PostgreSQL database


def _pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin_dsn = os.environ.get("BSS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        conn = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"bss_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _finished_job(svc: JobService, tmp_path: Path, name: str, *, owed: bool) -> dict[str, Any]:
    src = tmp_path / name
    src.write_bytes(b"1,1:0\n")
    job = svc.submit_file(1, src, upload_source="folder", source_key=name)
    old = now_s() - 3 * 86400
    with write_tx(svc.db) as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job["id"])
            .values(phase="completed", uploaded_time=old, created_on=old)
        )
        regions.record_job(
            conn,
            job["id"],
            ["eu"],
            applied_as_of=old,
            config_json="{}",
            registry_records=[{"id": 1, "code": None, "member_id": 1}],
            owed=owed,
        )
    return job


def test_region_rows_are_claimed_once_and_keep_their_job_and_file(
    region_service: JobService, tmp_path: Path
) -> None:
    svc = region_service
    owed = [_finished_job(svc, tmp_path, f"owed-{i}", owed=True) for i in range(6)]
    nothing = _finished_job(svc, tmp_path, "nothing", owed=False)
    assert svc.get_job(nothing["job_id"])["regions"] == {"us": "applied", "eu": "applied"}
    assert svc.get_job(owed[0]["job_id"])["regions"] == {"us": "applied", "eu": "pending"}
    assert regions.replay_inputs(svc.db, owed[0]["id"]) is not None

    # Retention 0 days, history 1 day: only the job that owes nothing goes, file and all.
    svc.sweep()
    uploads = tmp_path / "uploads"
    assert svc.get_job(nothing["job_id"]) is None
    assert all((uploads / job["job_id"]).exists() for job in owed)

    # Eight claimers race: every row is claimed by exactly one.
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (row := regions.claim_due(svc.db, name, 60)) is not None:
            with lock:
                claimed.append((name, row["id"]))

    threads = [threading.Thread(target=claimer, args=(f"p{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(row_id for _, row_id in claimed) == sorted(set(r for _, r in claimed))
    assert len(claimed) == len(owed)
    holder = dict((row_id, name) for name, row_id in claimed)
    rows = {}
    with svc.db.connect() as conn:
        for row in conn.execute(select(regions.region_writes)).mappings():
            rows[row["job_id"]] = dict(row)
    assert svc.get_job(owed[0]["job_id"])["regions"]["eu"] == "applying"

    # A failed attempt: shown, retried later, and the region's other rows wait as long.
    first = rows[owed[0]["id"]]
    regions.mark_failed(svc.db, first, holder[first["id"]], "down", retry_max_seconds=60)
    assert svc.get_job(owed[0]["job_id"])["regions"]["eu"] == "error: down (attempt 1; retried)"
    assert regions.claim_due(svc.db, "p9", 60) is None
    # The rest are applied: their replay inputs go, and the sweep takes their files.
    for job in owed[1:]:
        row = rows[job["id"]]
        assert regions.mark_applied(svc.db, row, holder[row["id"]])
        assert regions.replay_inputs(svc.db, job["id"]) is None
    assert regions.replay_inputs(svc.db, owed[0]["id"]) is not None
    svc.sweep()
    assert (uploads / owed[0]["job_id"]).exists()
    assert svc.get_job(owed[0]["job_id"]) is not None
    assert not any((uploads / job["job_id"]).exists() for job in owed[1:])


class _FailingStores:
    """Store regions whose every store fails to open with `exc`."""

    remote_regions = ["eu"]

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get(self, region: str | None = None) -> Any:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "region_waits"),
    [
        (StoreUnavailable("cannot reach the Redis store of eu"), True),
        (ValueError("a failure of the row's own"), False),
    ],
)
def test_a_region_that_is_down_holds_its_rows_back_a_row_that_fails_only_itself(
    region_service: JobService, tmp_path: Path, exc: Exception, region_waits: bool
) -> None:
    """Failures are classified by the queue's rule (bss.queue.classify): the region being
    down is tried once per backoff, whatever it owes; a row failing by its own fault waits
    alone, the region's other rows go on. Either is retried and shown."""
    svc = region_service
    first, second = (_finished_job(svc, tmp_path, f"job-{i}", owed=True) for i in range(2))
    catch_up = RegionCatchUp(svc, _FailingStores(exc), threading.Event(), name="p")  # type: ignore[arg-type]
    assert catch_up.run_once()
    shown = svc.get_job(first["job_id"])["regions"]["eu"]
    assert shown == f"error: {type(exc).__name__}: {exc} (attempt 1; retried)"
    row = regions.claim_due(svc.db, "p9", 60)
    if region_waits:
        assert row is None
    else:
        assert row is not None and row["job_id"] == second["id"]
