"""Crash safety: kill -9 (or SIGTERM) the server while it processes a big file, restart; the job
completes and the membership store equals that of an uninterrupted run on another data dir."""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import lmdb
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api

LINES = 4_000_000
MEMBER = 77
ENTRY_STRUCT = struct.Struct("<qqqqB")  # bss.store.keyvalue.ENTRY


def _big_file(path: Path) -> Path:
    with path.open("w") as fh:
        step = 200_000
        for start in range(0, LINES, step):
            fh.write(
                "".join(
                    # every 7th user is removed from segment 2 again within the same job
                    f"{10_000_000 + i},1:{i % 5};2:1440\n"
                    if i % 7
                    else f"{10_000_000 + i},1:0\t2:0\n"
                    for i in range(start, start + step)
                )
            )
    return path


def _prepare(api: Api) -> None:
    api.member(MEMBER)
    assert api.segment(MEMBER, "one")["id"] == 1
    assert api.segment(MEMBER, "two")["id"] == 2


def _upload(api: Api, path: Path) -> dict:
    job = api.new_job(MEMBER)
    with path.open("rb") as fh:
        body = api.upload(job, fh)
    assert body["status"] == "OK", body
    return job


def _store_digest(data_dir: Path) -> tuple[int, str]:
    """(live entries, digest of every entry in key order with its value, removal and lifetime,
    then of every key of the per-segment index; seqs and absolute times differ between runs
    and are left out)."""
    env = lmdb.open(str(data_dir / "memberships.lmdb"), readonly=True, lock=False, max_dbs=8)
    digest, live = hashlib.sha256(), 0
    try:
        members = env.open_db(b"members", create=False)
        by_segment = env.open_db(b"by_segment", create=False)
        with env.begin() as txn:
            for key, value in txn.cursor(db=members):
                _seq, timestamp, expires_at, val, removed = ENTRY_STRUCT.unpack(value)
                live += not removed
                digest.update(key + ENTRY_STRUCT.pack(0, 0, expires_at - timestamp, val, removed))
            for key in txn.cursor(db=by_segment).iternext(values=False):
                digest.update(b"index:" + key)
    finally:
        env.close()
    return live, digest.hexdigest()


COUNTERS = (
    "num_valid",
    "num_invalid_format",
    "num_valid_user",
    "num_invalid_user",
    "num_invalid_segment",
)


def test_kill_during_processing_then_restart(bss_server, tmp_path):
    big = _big_file(tmp_path / "big.txt")

    ref = bss_server("ref")
    api = Api(ref.url, ADMIN_USER, ADMIN_PASSWORD)
    _prepare(api)
    job = _upload(api, big)
    ref_job = api.wait(MEMBER, job["job_id"], timeout=600)
    assert ref_job["phase"] == "completed", ref_job
    ref.stop()

    for name, stop in (("crash", "kill9"), ("term", "stop")):
        crash = bss_server(name, job_lease_seconds=3)
        api = Api(crash.url, ADMIN_USER, ADMIN_PASSWORD)
        _prepare(api)
        job = _upload(api, big)
        deadline = time.monotonic() + 300
        while True:
            seen = api.job(MEMBER, job["job_id"])
            if seen["phase"] in ("validating", "processing") and seen["percent_complete"] > 0:
                break
            assert seen["phase"] not in ("completed", "error"), (
                "finished before it could be stopped"
            )
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert seen["percent_complete"] < 100
        getattr(crash, stop)()  # kill -9, or SIGTERM (the worker hands the job back)

        crash.start()  # same data dir, same port
        api = Api(crash.url, ADMIN_USER, ADMIN_PASSWORD)
        done = api.wait(MEMBER, job["job_id"], timeout=600)
        assert done["phase"] == "completed", done
        assert {k: done[k] for k in COUNTERS} == {k: ref_job[k] for k in COUNTERS}
        assert done["num_valid"] > 0
        crash.stop()
        assert "re-running an interrupted job" in crash.log_path.read_text()

        live, digest = _store_digest(tmp_path / name)
        assert live >= LINES
        assert (live, digest) == _store_digest(tmp_path / "ref")
