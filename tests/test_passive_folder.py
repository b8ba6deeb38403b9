"""Passive upload through the embedded local folder, <data-dir>/passive/<member_id>/.

The real pipeline runs: JobService, worker threads running the ingest engine, and the
scanner; the same guarantees as S3 (exactly once, crash recovery, waiting for files that
are still being written, clear failures) are checked here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from passive_util import Pipeline
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from bss.jobs.models import jobs
from bss.passive.claims import utcnow
from bss.passive.folder import PROCESSING, FolderArea, FolderBackend
from bss.passive.models import CLAIMED, JOB_CREATED, MOVED, passive_claims
from bss.passive.scanner import run_passive
from bss.passive.storage import destination_key

MEMBER = 8001


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path / "data", max_file_bytes=10_000)
    p.add_member(MEMBER)
    yield p
    p.close()


def member_dir(p: Pipeline, member_id: int = MEMBER) -> Path:
    return Path(p.settings.data_dir) / "passive" / str(member_id)


def drop(p: Pipeline, rel: str, body: bytes, member_id: int = MEMBER) -> Path:
    path = member_dir(p, member_id) / "submitted" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def files(p: Pipeline, sub: str, member_id: int = MEMBER) -> list[str]:
    base = member_dir(p, member_id) / sub
    if not base.exists():
        return []
    return sorted(f.relative_to(base).as_posix() for f in base.rglob("*") if f.is_file())


def all_jobs(p: Pipeline, member_id: int = MEMBER) -> list[dict]:
    with p.engine.connect() as conn:
        ids = conn.execute(select(jobs.c.job_id).where(jobs.c.member_id == member_id)).scalars()
        return [p.service.get_job(j) for j in ids]


def claims(p: Pipeline) -> dict[str, dict]:
    with p.engine.connect() as conn:
        return {
            r["source_key"]: dict(r)
            for r in conn.execute(select(passive_claims).order_by(passive_claims.c.id)).mappings()
        }


def kill(*scanners) -> None:
    """The scanners die: they stop renewing, and their leases run out (made to, here)."""
    for s in scanners:
        s.inflight.clear()
    with scanners[0].engine.begin() as conn:
        conn.execute(
            update(passive_claims)
            .where(passive_claims.c.owner.in_([s.owner for s in scanners]))
            .values(lease_until=utcnow() - timedelta(hours=1))
        )


def test_folder_end_to_end_with_odd_names(pipeline):
    names = {
        "plain.txt": 3,
        "with space & plus+sign.txt": 2,
        "ünïcødé €uro.txt": 4,
        "a/b/nested.txt": 1,
        "odd ?#%[]{}'\";=.txt": 2,
        "  leading and trailing  ": 1,
    }
    for name, users in names.items():
        drop(pipeline, name, pipeline.good_file(MEMBER, users))

    scanner = pipeline.scanner()
    stats = scanner.scan_once()
    assert sorted(stats.claimed) == sorted(f"submitted/{n}" for n in names)
    scanner.drain(timeout=120)

    assert files(pipeline, "submitted") == []
    assert files(pipeline, PROCESSING) == []
    assert (member_dir(pipeline) / "failed").is_dir()  # created by the service
    done = files(pipeline, "done")
    by_name = {k.rsplit("-", 1)[0]: k for k in done}
    assert set(by_name) == set(names)
    for name, users in names.items():
        job = pipeline.service.get_job(by_name[name].rsplit("-", 1)[1])
        assert by_name[name] == f"{name}-{job['job_id']}"
        assert job["phase"] == "completed"
        assert job["num_valid"] == users and job["num_valid_user"] == users
        assert job["upload_source"] == "folder"
        assert job["source_key"] == f"submitted/{name}"
    assert (member_dir(pipeline) / "done" / by_name["plain.txt"]).read_bytes() == (
        pipeline.good_file(MEMBER, 3)
    )


def test_folder_failures_are_clear(pipeline):
    drop(pipeline, "empty.txt", b"")
    drop(pipeline, "big.txt", b"x" * (pipeline.settings.max_file_bytes + 1))
    drop(pipeline, "broken.gz", b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    long_name = "L" * 240 + ".txt"  # with -JOBID it would exceed 255 bytes
    drop(pipeline, long_name, b"")

    scanner = pipeline.scanner()
    scanner.scan_once()
    scanner.drain(timeout=120)

    assert files(pipeline, "submitted") == [] and files(pipeline, "done") == []
    failed = files(pipeline, "failed")
    assert len(failed) == 4
    codes = {}
    for key in failed:
        job = pipeline.service.get_job(key.rsplit("-", 1)[1])
        assert job["phase"] == "error" and job["error_code"]
        codes[job["source_key"]] = job["error_code"]
    assert codes["submitted/empty.txt"] == "empty_file"
    assert codes["submitted/big.txt"] == "FILESIZE_LIMIT_EXCEEDED"
    assert codes[f"submitted/{long_name}"] == "empty_file"
    (shortened,) = [k for k in failed if k.startswith("LLLL")]
    assert len(shortened.encode()) <= 255 and "~" in shortened


def test_files_being_written_wait(pipeline):
    drop(pipeline, ".upload-in-progress.part", b"half a fi")  # hidden: a writer's temp name
    drop(pipeline, "recent.txt", pipeline.good_file(MEMBER, 1))

    patient = pipeline.scanner(min_age_seconds=3600)
    stats = patient.scan_once()
    assert stats.claimed == [] and stats.waiting == ["submitted/recent.txt"]
    assert files(pipeline, "submitted") == [".upload-in-progress.part", "recent.txt"]
    assert claims(pipeline) == {}

    eager = pipeline.scanner(min_age_seconds=0)
    assert eager.scan_once().claimed == ["submitted/recent.txt"]
    eager.drain(timeout=60)
    assert files(pipeline, "submitted") == [".upload-in-progress.part"]
    # the writer finishes with an atomic rename: now it is picked up
    sub = member_dir(pipeline) / "submitted"
    os.rename(sub / ".upload-in-progress.part", sub / "finished.txt")
    assert eager.scan_once().claimed == ["submitted/finished.txt"]
    eager.drain(timeout=60)
    assert len(files(pipeline, "done")) + len(files(pipeline, "failed")) == 2


def test_two_scanners_at_once_each_file_once(pipeline):
    n = 16
    for i in range(n):
        drop(pipeline, f"f{i:02d}.txt", pipeline.good_file(MEMBER, 1 + i % 3))
    stop = threading.Event()
    scanners = [pipeline.scanner(owner=f"scanner-{i}") for i in range(3)]
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in scanners]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(files(pipeline, "done")) < n:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    jobs_ = all_jobs(pipeline)
    assert len(jobs_) == n
    assert Counter(j["source_key"] for j in jobs_) == Counter(
        f"submitted/f{i:02d}.txt" for i in range(n)
    )
    assert all(j["phase"] == "completed" for j in jobs_)
    assert files(pipeline, "submitted") == [] and files(pipeline, PROCESSING) == []
    assert sorted(files(pipeline, "done")) == sorted(
        f"{j['source_key'][len('submitted/') :]}-{j['job_id']}" for j in jobs_
    )


def test_take_is_an_atomic_rename(pipeline):
    """Even scanners that share no database cannot both take a file."""
    drop(pipeline, "contested.txt", b"1,2:0\n")
    area = FolderArea(member_dir(pipeline), MEMBER)
    (file,) = area.list_submitted().files
    results = []
    barrier = threading.Barrier(8)

    def grab(i: int) -> None:
        barrier.wait()
        results.append(area.take(file, f"{PROCESSING}/t{i}/contested.txt"))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert len(files(pipeline, PROCESSING)) == 1


def test_crash_at_each_step_is_finished_once(pipeline):
    for name in ("no-job.txt", "job-running.txt", "renamed-not-recorded.txt"):
        drop(pipeline, name, pipeline.good_file(MEMBER, 2))

    # Scanner A: claims all three, then fails to create one job and "dies".
    a = pipeline.scanner(owner="scanner-a")
    real_submit = a.jobs.submit_file

    class Flaky:
        def __getattr__(self, name):
            return getattr(pipeline.service, name)

        def submit_file(self, member_id, path, **kw):
            if kw["source_key"].endswith("no-job.txt"):
                raise ConnectionError("database went away")
            return real_submit(member_id, path, **kw)

    a.jobs = Flaky()
    a.scan_once()
    state = {k: c["state"] for k, c in claims(pipeline).items()}
    assert state == {
        "submitted/no-job.txt": CLAIMED,
        "submitted/job-running.txt": JOB_CREATED,
        "submitted/renamed-not-recorded.txt": JOB_CREATED,
    }
    # the file is parked in .processing while its job runs
    assert files(pipeline, "submitted") == []
    # For the third, A got as far as the final rename but died before recording it.
    flight = next(f for f in a.inflight.values() if f.file.key.endswith("not-recorded.txt"))
    deadline = time.monotonic() + 60
    while pipeline.service.get_job(flight.job_id)["phase"] not in ("completed", "error"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dest = destination_key("done", "renamed-not-recorded.txt", flight.job_id)
    flight.area.move(flight.work_key, dest, flight.file)
    kill(a)

    b = pipeline.scanner(owner="scanner-b")
    stats = b.scan_once()
    assert sorted(stats.resumed) == sorted(state)
    assert stats.claimed == []
    b.drain(timeout=120)

    jobs_ = all_jobs(pipeline)
    assert sorted(j["source_key"] for j in jobs_) == sorted(state)  # one job each
    assert all(j["phase"] == "completed" for j in jobs_)
    assert sorted(files(pipeline, "done")) == sorted(
        f"{j['source_key'][len('submitted/') :]}-{j['job_id']}" for j in jobs_
    )
    assert files(pipeline, "submitted") == [] and files(pipeline, PROCESSING) == []
    assert {c["state"] for c in claims(pipeline).values()} == {MOVED}
    assert b.scan_once().claimed == []


def test_unknown_members_are_ignored(pipeline):
    drop(pipeline, "x.txt", b"1,2:0\n", member_id=9999)
    # digits int() refuses ("²") or reads ("٣") outside ASCII: not a member's folder
    for name in ("²", "٣"):
        (member_dir(pipeline).parent / name / "submitted").mkdir(parents=True)
    assert [a.member_id for a in FolderBackend(member_dir(pipeline).parent).areas([MEMBER])] == []
    s = pipeline.scanner()
    assert s.scan_once().claimed == []
    assert files(pipeline, "submitted", member_id=9999) == ["x.txt"]


def test_run_passive_entry_point(pipeline):
    """run_passive(settings, job_service, stop_event), as serve/worker call it."""
    drop(pipeline, "via-loop.txt", pipeline.good_file(MEMBER, 2))
    stop = threading.Event()
    t = threading.Thread(
        target=run_passive, args=(pipeline.settings, pipeline.service, stop), daemon=True
    )
    t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not files(pipeline, "done"):
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    (key,) = files(pipeline, "done")
    job = pipeline.service.get_job(key.rsplit("-", 1)[1])
    assert job["phase"] == "completed" and job["num_valid"] == 2


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("a.txt", "done/a.txt-J"),
        ("x/y/a b.txt", "done/x/y/a b.txt-J"),
        ("  sp  ", "done/  sp  -J"),
    ],
)
def test_destination_key(rel, expected):
    assert destination_key("done", rel, "J") == expected


def test_destination_key_respects_limits():
    key = destination_key("failed", "d/" + "é" * 600, "J" * 40, max_key_bytes=1024)
    assert (
        len(key.encode()) <= 1024 and key.startswith("failed/d/") and key.endswith("-" + "J" * 40)
    )
    other = destination_key("failed", "d/" + "é" * 599 + "x", "J" * 40, max_key_bytes=1024)
    assert other != key  # the hash keeps distinct long names distinct


def test_killed_after_job_created_but_before_it_was_recorded(pipeline):
    """The job exists but the claim does not know it: the next scanner adopts it."""
    drop(pipeline, "orphan.txt", pipeline.good_file(MEMBER, 3))
    a = pipeline.scanner(owner="scanner-a")

    class DiesAfterSubmit:
        def __getattr__(self, name):
            return getattr(pipeline.service, name)

        def submit_file(self, *args, **kw):
            pipeline.service.submit_file(*args, **kw)
            raise SystemError("killed right after the job was created")

    a.jobs = DiesAfterSubmit()
    a.scan_once()
    assert claims(pipeline)["submitted/orphan.txt"]["state"] == CLAIMED
    (created,) = all_jobs(pipeline)
    kill(a)

    b = pipeline.scanner(owner="scanner-b")
    assert b.scan_once().resumed == ["submitted/orphan.txt"]
    b.drain(timeout=60)
    (job,) = all_jobs(pipeline)  # still exactly one job
    assert job["job_id"] == created["job_id"] and job["phase"] == "completed"
    assert job["num_valid"] == 3
    assert files(pipeline, "done") == [f"orphan.txt-{job['job_id']}"]
    assert claims(pipeline)["submitted/orphan.txt"]["job_id"] == job["job_id"]


def test_a_scanner_that_lost_its_claim_does_not_create_a_job(pipeline):
    drop(pipeline, "slow.txt", pipeline.good_file(MEMBER, 1))
    a = pipeline.scanner(owner="scanner-a")
    b = pipeline.scanner(owner="scanner-b")
    real_fetch = FolderArea.fetch

    calls = []

    def slow_fetch(self, work_key, file, dest):
        calls.append(work_key)
        if len(calls) == 1:
            # while A downloads, its lease runs out and B takes the claim over (B's own
            # download is the second call)
            with a.engine.begin() as conn:
                conn.execute(
                    update(passive_claims).values(lease_until=utcnow() - timedelta(hours=1))
                )
            assert b.scan_once().resumed == ["submitted/slow.txt"]
        real_fetch(self, work_key, file, dest)

    FolderArea.fetch = slow_fetch
    try:
        assert a.scan_once().claimed == ["submitted/slow.txt"]
    finally:
        FolderArea.fetch = real_fetch
    assert a.inflight == {}  # A noticed before creating a job, and let go
    assert len(calls) == 2
    b.drain(timeout=60)
    (job,) = all_jobs(pipeline)
    assert files(pipeline, "done") == [f"slow.txt-{job['job_id']}"]


def test_housekeeping_drops_stale_downloads_and_old_claims(pipeline):
    drop(pipeline, "h.txt", pipeline.good_file(MEMBER, 1))
    s = pipeline.scanner()
    s.scan_once()
    s.drain(timeout=60)
    stale = Path(pipeline.settings.data_dir) / "passive-tmp" / "dead.upload"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    fresh = stale.with_name("alive.upload")
    fresh.write_bytes(b"being downloaded")
    with pipeline.engine.begin() as conn:
        conn.execute(update(passive_claims).values(updated_at=utcnow() - timedelta(days=31)))
    s.housekeeping()
    assert not stale.exists() and fresh.exists()
    assert claims(pipeline) == {}


def test_claim_insert_has_exactly_one_winner(pipeline):
    from bss.passive.claims import ClaimStore, claim_identity

    store = ClaimStore(pipeline.engine)
    identity = claim_identity("folder", "/x", "submitted/a", "fp")
    barrier = threading.Barrier(8)
    won = []

    def claim(i: int) -> None:
        barrier.wait()
        row = store.insert(
            identity=identity,
            backend="folder",
            location="/x",
            member_id=MEMBER,
            source_key="submitted/a",
            fingerprint="fp",
            size=1,
            owner=f"s{i}",
            lease_seconds=60,
            work_key="w",
        )
        won.append(row is not None)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1
    # and a takeover of an expired claim also has one winner
    with pipeline.engine.begin() as conn:
        conn.execute(update(passive_claims).values(lease_until=utcnow() - timedelta(hours=1)))
    row = store.get(identity)
    results = []
    barrier = threading.Barrier(8)

    def take(i: int) -> None:
        barrier.wait()
        results.append(store.take_over_next(row["location"], f"t{i}", 60) is not None)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_control_characters_and_non_utf8_names(pipeline):
    drop(pipeline, "tab\tand\nnewline.txt", pipeline.good_file(MEMBER, 1))
    sub = os.fsencode(member_dir(pipeline) / "submitted")
    with open(os.path.join(sub, b"caf\xe9 latin-1.txt"), "wb") as f:
        f.write(pipeline.good_file(MEMBER, 2))
    os.makedirs(os.path.join(sub, b"d\xff"))
    with open(os.path.join(sub, b"d\xff", b"x.txt"), "wb") as f:
        f.write(pipeline.good_file(MEMBER, 3))
    s = pipeline.scanner()
    s.scan_once()
    s.drain(timeout=60)
    assert files(pipeline, "submitted") == []
    done = files(pipeline, "done")
    names = sorted(k.rsplit("-", 1)[0] for k in done)
    assert names == sorted(["tab\tand\nnewline.txt", "caf\\xe9 latin-1.txt", "d\\xff/x.txt"])
    for key in done:
        job = pipeline.service.get_job(key.rsplit("-", 1)[1])
        assert job["phase"] == "completed"
        assert job["source_key"] == "submitted/" + key.rsplit("-", 1)[0]


def test_one_members_flood_is_taken_a_few_at_a_time_oldest_first(tmp_path):
    p = Pipeline(tmp_path / "data", passive_max_inflight_per_member=2)
    try:
        p.add_member(MEMBER)
        p.add_member(MEMBER + 1)
        for i in range(5):
            path = drop(p, f"flood-{i}.txt", p.good_file(MEMBER, 1))
            os.utime(path, (1_000_000 + (5 - i), 1_000_000 + (5 - i)))  # flood-4 is oldest
        drop(p, "other.txt", p.good_file(MEMBER + 1, 1), member_id=MEMBER + 1)
        s = p.scanner()
        stats = s.scan_once()
        assert stats.claimed == [
            "submitted/flood-4.txt",
            "submitted/flood-3.txt",
            "submitted/other.txt",  # the other member is not starved
        ]
        assert sorted(stats.deferred) == [f"submitted/flood-{i}.txt" for i in range(3)]
        # the loop picks the rest up as soon as slots free up, without waiting a full scan
        p.settings.passive_scan_seconds = 3600
        stop = threading.Event()
        t = threading.Thread(target=s.run, args=(stop,), daemon=True)
        t.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(files(p, "done")) < 5:
                time.sleep(0.05)
        finally:
            stop.set()
            t.join(timeout=30)
        assert len(files(p, "done")) == 5 and files(p, "submitted") == []
        assert len(all_jobs(p)) == 5
    finally:
        p.close()


def test_clean_shutdown_hands_unfinished_work_over_at_once(pipeline):
    drop(pipeline, "handover.txt", pipeline.good_file(MEMBER, 2))
    a = pipeline.scanner(owner="scanner-a")

    class NeverFinishes:  # A's view of the job never reaches a final phase
        def __getattr__(self, name):
            return getattr(pipeline.service, name)

        def get_job(self, job_id):
            return {**pipeline.service.get_job(job_id), "phase": "processing"}

    a.jobs = NeverFinishes()
    stop = threading.Event()
    t = threading.Thread(target=a.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not claims(pipeline).get("submitted/handover.txt", {}).get("job_id"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.set()
    t.join(timeout=30)
    assert claims(pipeline)["submitted/handover.txt"]["state"] == JOB_CREATED

    b = pipeline.scanner(owner="scanner-b")  # no lease to wait for
    assert b.scan_once().resumed == ["submitted/handover.txt"]
    b.drain(timeout=60)
    (job,) = all_jobs(pipeline)
    assert files(pipeline, "done") == [f"handover.txt-{job['job_id']}"]


@pytest.mark.parametrize(
    ("failure", "longest_wait"),
    [
        (OperationalError("INSERT INTO jobs", {}, Exception("database is locked")), 60),
        (ValueError("a failure of the file's own"), 1000),
    ],
)
def test_a_start_the_infrastructure_failed_is_retried_within_a_minute(
    pipeline, failure, longest_wait
):
    """Failures are classified as the queue's rule says (bss.queue.classify): an outage of
    the database or the bucket is retried within a minute however often it failed, so the
    claim goes on soon after it ends; a failure of the file's own waits longer each time."""
    drop(pipeline, "outage.txt", pipeline.good_file(MEMBER, 2))
    a = pipeline.scanner(owner="scanner-a", retry_seconds=1000)

    class Failing:
        def __getattr__(self, name):
            return getattr(pipeline.service, name)

        def submit_file(self, *args, **kwargs):
            raise failure

    a.jobs = Failing()
    assert a.scan_once().claimed == ["submitted/outage.txt"]
    (flight,) = a.inflight.values()
    assert flight.job_id is None and flight.failures == 1
    wait = flight.retry_at - time.monotonic()
    assert longest_wait - 5 < wait <= longest_wait
    assert claims(pipeline)["submitted/outage.txt"]["state"] == CLAIMED

    a.jobs = pipeline.service
    flight.retry_at = 0.0  # skip the wait
    a.drain(timeout=60)
    (job,) = all_jobs(pipeline)
    assert files(pipeline, "done") == [f"outage.txt-{job['job_id']}"]
