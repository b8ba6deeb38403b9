"""Crash safety: kill -9 (or SIGTERM) the server while it processes a big file, restart; the job
completes and the membership store equals that of an uninterrupted run on another data dir."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api

LINES = 4_000_000
MEMBER = 77


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


_LIVE = """
SELECT user_kind, user_key, segment_id, arg_max(value, seq) AS value, arg_max(removed, seq) AS removed,
       arg_max(expires_at, seq) - arg_max(timestamp, seq) AS lifetime
FROM {db}.memberships GROUP BY ALL
"""


def _store_difference(a: Path, b: Path) -> tuple[int, int, int]:
    """(live rows in a, rows only in a, rows only in b), compared inside DuckDB."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{a / 'memberships.duckdb'}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{b / 'memberships.duckdb'}' AS b (READ_ONLY)")
        total = con.execute(f"SELECT count(*) FROM ({_LIVE.format(db='a')})").fetchone()[0]
        only_a = con.execute(
            f"SELECT count(*) FROM ({_LIVE.format(db='a')} EXCEPT {_LIVE.format(db='b')})"
        ).fetchone()[0]
        only_b = con.execute(
            f"SELECT count(*) FROM ({_LIVE.format(db='b')} EXCEPT {_LIVE.format(db='a')})"
        ).fetchone()[0]
    finally:
        con.close()
    return total, only_a, only_b


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

        total, only_crash, only_ref = _store_difference(tmp_path / name, tmp_path / "ref")
        assert total == 2 * LINES
        assert (only_crash, only_ref) == (0, 0)
