"""A member can write its own passive folder, so links there are hostile: none is followed.

A link named `submitted` (or a folder inside it) pointing at another member's folder would
make that member's files the linker's jobs; `done`/`failed` pointing elsewhere would make the
service move files out of the data dir. Each case is refused and logged; nothing moves.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy
from passive_util import USER_ID, Pipeline
from sqlalchemy import select

from bss.jobs.models import jobs
from bss.passive.folder import PROCESSING, FolderArea, UnsafePath

ATTACKER, VICTIM = 8101, 8102


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path / "data")
    p.add_member(ATTACKER)
    p.add_member(VICTIM)
    yield p
    p.close()


def folder(p: Pipeline, member_id: int) -> Path:
    path = Path(p.settings.data_dir) / "passive" / str(member_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_keys(p: Pipeline, member_id: int) -> list[str]:
    with p.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.source_key).where(jobs.c.member_id == member_id))
        return sorted(rows.scalars())


def tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def wait_for(predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]


def test_submitted_linked_to_another_members_folder_is_refused(pipeline, caplog):
    victim = folder(pipeline, VICTIM) / "submitted"
    victim.mkdir()
    (victim / "victim.txt").write_bytes(pipeline.good_file(VICTIM, 2))
    os.symlink(victim, folder(pipeline, ATTACKER) / "submitted")

    scanner = pipeline.scanner()
    scanner.backends[0].areas = lambda ids: [  # type: ignore[method-assign]
        FolderArea(folder(pipeline, ATTACKER), ATTACKER)
    ]
    with caplog.at_level(logging.ERROR):
        stats = scanner.scan_once()
    assert stats.claimed == []
    assert job_keys(pipeline, ATTACKER) == []
    assert (victim / "victim.txt").read_bytes() == pipeline.good_file(VICTIM, 2)
    assert refusals(caplog) == [
        f"passive folder of member {ATTACKER}: refusing "
        f"{folder(pipeline, ATTACKER) / 'submitted'}: a symbolic link or not a regular "
        "file or folder (links are never followed in passive folders)"
    ]

    # The owner's own scan still gets the file, as the owner's job.
    full = pipeline.scanner()
    full.scan_once()
    full.drain(timeout=120)
    assert job_keys(pipeline, VICTIM) == ["submitted/victim.txt"]
    assert job_keys(pipeline, ATTACKER) == []


def test_links_inside_submitted_are_not_entered(pipeline, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"1,2:0\n")
    submitted = folder(pipeline, ATTACKER) / "submitted"
    (submitted / "real").mkdir(parents=True)
    (submitted / "real" / "mine.txt").write_bytes(pipeline.good_file(ATTACKER, 1))
    os.symlink(outside, submitted / "linked-folder")
    os.symlink(outside / "secret.txt", submitted / "linked-file.txt")
    os.symlink(outside, submitted / "real" / "deeper")

    scanner = pipeline.scanner()
    with caplog.at_level(logging.ERROR):
        scanner.scan_once()
    scanner.drain(timeout=120)
    assert job_keys(pipeline, ATTACKER) == ["submitted/real/mine.txt"]
    assert tree(outside) == ["secret.txt"]
    assert sorted(m.split("refusing ")[1].split(":")[0] for m in refusals(caplog)) == sorted(
        str(submitted / name) for name in ("linked-folder", "linked-file.txt", "real/deeper")
    )


@pytest.mark.parametrize("name", ["done", "failed", PROCESSING])
def test_service_folders_that_are_links_are_refused(pipeline, tmp_path, name, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    member = folder(pipeline, ATTACKER)
    (member / "submitted").mkdir()
    (member / "submitted" / "a.txt").write_bytes(pipeline.good_file(ATTACKER, 1))
    os.symlink(outside, member / name)

    scanner = pipeline.scanner()
    with caplog.at_level(logging.ERROR):
        stats = scanner.scan_once()
    assert stats.claimed == []
    assert job_keys(pipeline, ATTACKER) == []
    assert tree(outside) == []
    assert tree(member / "submitted") == ["a.txt"]
    assert len(refusals(caplog)) == 1 and str(member / name) in refusals(caplog)[0]


def test_done_swapped_for_a_link_while_the_job_runs_keeps_the_file(pipeline, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    member = folder(pipeline, ATTACKER)
    (member / "submitted").mkdir()
    (member / "submitted" / "a.txt").write_bytes(pipeline.good_file(ATTACKER, 1))
    scanner = pipeline.scanner()
    assert scanner.scan_once().claimed == ["submitted/a.txt"]
    os.rmdir(member / "done")
    os.symlink(outside, member / "done")

    (flight,) = scanner.inflight.values()
    job_id = flight.job_id
    wait_for(lambda: pipeline.service.get_job(job_id)["phase"] == "completed")
    for _ in range(3):
        flight.retry_at = 0.0
        scanner.poll_once()
        assert flight.failures == _ + 1  # each try is refused, and retried later
    assert tree(outside) == []
    assert len(scanner.inflight) == 1  # the move waits; the file stays ours
    assert [p.name for p in (member / PROCESSING).rglob("a.txt")] == ["a.txt"]

    os.unlink(member / "done")
    os.mkdir(member / "done")
    scanner.drain(timeout=60)
    assert tree(member / "done") == [f"a.txt-{job_id}"]


def test_parked_file_swapped_for_a_link_is_not_read(pipeline, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(pipeline.good_file(VICTIM, 1))
    member = folder(pipeline, ATTACKER)
    (member / "submitted").mkdir()
    (member / "submitted" / "a.txt").write_bytes(pipeline.good_file(ATTACKER, 1))
    area = FolderArea(member, ATTACKER)
    (file,) = area.list_submitted().files
    work = f"{PROCESSING}/tok/a.txt"
    assert area.take(file, work)
    os.unlink(member / work)
    os.symlink(secret, member / work)
    with pytest.raises(UnsafePath):
        area.fetch(work, file, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()

    # A parking folder swapped for a link to a folder elsewhere: nothing is moved out of it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"theirs")
    os.unlink(member / work)
    os.rmdir(member / PROCESSING / "tok")
    os.symlink(outside, member / PROCESSING / "tok")
    with pytest.raises(UnsafePath):
        area.move(work, "done/a.txt-J", file)
    assert tree(outside) == ["a.txt"] and tree(member / "done") == []


def test_member_folder_that_is_a_link_is_refused(pipeline, caplog):
    victim = folder(pipeline, VICTIM)
    (victim / "submitted").mkdir()
    (victim / "submitted" / "v.txt").write_bytes(pipeline.good_file(VICTIM, 1))
    os.symlink(victim, Path(pipeline.settings.data_dir) / "passive" / str(ATTACKER))

    scanner = pipeline.scanner()
    with caplog.at_level(logging.ERROR):
        scanner.scan_once()
    scanner.drain(timeout=120)
    assert job_keys(pipeline, ATTACKER) == []
    assert job_keys(pipeline, VICTIM) == ["submitted/v.txt"]
    assert any(f"member {ATTACKER}: refusing" in m for m in refusals(caplog))


def test_serve_never_takes_another_members_files_through_a_link(bss_server):
    server = bss_server(passive_scan_seconds=1, passive_poll_seconds=0.2, passive_min_age_seconds=0)
    admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    for member_id in (ATTACKER, VICTIM):
        admin.member(member_id)
    seg = admin.segment(VICTIM, "victim-seg")["id"]
    passive = Path(server.data_dir) / "passive"
    victim = passive / str(VICTIM) / "submitted"
    attacker = passive / str(ATTACKER)
    attacker.mkdir(parents=True)
    victim.mkdir(parents=True)
    os.symlink(victim, attacker / "submitted")
    (victim / "v.txt").write_bytes(legacy([f"{USER_ID},{seg}:0", f"{USER_ID + 1},{seg}:0"]))

    def jobs_of(member_id: int) -> list[dict]:
        body = admin.ok("GET", "/batch-segment", params={"member_id": member_id})
        found = body.get("batch_segment_upload_job") or []
        return found if isinstance(found, list) else [found]

    done = passive / str(VICTIM) / "done"
    (moved,) = wait_for(lambda: list(done.glob("v.txt-*")))
    job = admin.job(VICTIM, moved.name.rsplit("-", 1)[1])
    assert job["phase"] == "completed" and job["num_valid"] == 2
    assert jobs_of(ATTACKER) == []
    assert f"passive folder of member {ATTACKER}: refusing" in server.log()
