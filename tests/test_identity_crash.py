"""Crash safety of link jobs: kill -9 the server while it applies a big link file, restart;
the job completes with the counters and links of an uninterrupted run on another data dir
(the replay reuses the job's seqs and recorded time, so it changes nothing written)."""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import lmdb
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api

LINKS = 400_000
MEMBER = 78
LINK_STRUCT = struct.Struct("<qqqB")  # bss.store.lmdb_links: seq, asserted_at, expires_at, removed
COUNTERS = ("num_valid", "num_invalid_format", "num_valid_user", "num_invalid_user")


def _big_file(path: Path) -> Path:
    with path.open("w") as fh:
        for start in range(0, LINKS, 100_000):
            fh.write(
                "".join(
                    # every 9th line removes the link of the line before; every 1000th is junk
                    f"uid={10_000_000 + i - 1},ext={MEMBER}:c{(i - 1) // 3},-1\n"
                    if i % 9 == 0
                    else "uid=0,uid=5\n"
                    if i % 1000 == 1
                    else f"uid={10_000_000 + i},ext={MEMBER}:c{i // 3}\n"
                    for i in range(start, start + 100_000)
                )
            )
    return path


def _links_digest(data_dir: Path) -> tuple[int, str]:
    """(live links, digest of every stored link end in key order with its removal and
    lifetime; seqs and absolute times differ between runs and are left out)."""
    env = lmdb.open(str(data_dir / "memberships.lmdb"), readonly=True, lock=False, max_dbs=16)
    digest, live = hashlib.sha256(), 0
    try:
        links = env.open_db(b"links", create=False)
        with env.begin() as txn:
            for key, value in txn.cursor(db=links):
                _seq, asserted, expires, removed = LINK_STRUCT.unpack(value)
                live += not removed
                digest.update(key + LINK_STRUCT.pack(0, 0, expires - asserted, removed))
    finally:
        env.close()
    return live, digest.hexdigest()


def _upload(api: Api, path: Path) -> dict:
    job = api.ok("POST", "/batch-segment", params={"member_id": MEMBER, "file_type": "links"})[
        "batch_segment_upload_job"
    ]
    with path.open("rb") as fh:
        body = api.upload(job, fh)
    assert body["status"] == "OK", body
    return job


def test_kill_during_a_link_job_then_restart(bss_server, tmp_path: Path) -> None:
    big = _big_file(tmp_path / "links.csv")

    ref = bss_server("ref")
    api = Api(ref.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    ref_job = api.wait(MEMBER, _upload(api, big)["job_id"], timeout=600)
    assert ref_job["phase"] == "completed", ref_job
    junk = sum(1 for i in range(LINKS) if i % 9 and i % 1000 == 1)
    assert (ref_job["num_invalid_user"], ref_job["num_valid"]) == (junk, LINKS - junk)
    ref.stop()

    crash = bss_server("crash", job_lease_seconds=3)
    api = Api(crash.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    job = _upload(api, big)
    deadline = time.monotonic() + 300
    while True:
        seen = api.job(MEMBER, job["job_id"])
        if seen["phase"] in ("validating", "processing") and seen["percent_complete"] > 0:
            break
        assert seen["phase"] not in ("completed", "error"), "finished before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    crash.kill9()
    crash.start()  # same data dir, same port
    api = Api(crash.url, ADMIN_USER, ADMIN_PASSWORD)
    done = api.wait(MEMBER, job["job_id"], timeout=600)
    assert done["phase"] == "completed", done
    assert {k: done[k] for k in COUNTERS} == {k: ref_job[k] for k in COUNTERS}
    crash.stop()
    assert "re-running an interrupted job" in crash.log_path.read_text()

    live, digest = _links_digest(tmp_path / "crash")
    assert live > LINKS
    assert (live, digest) == _links_digest(tmp_path / "ref")
