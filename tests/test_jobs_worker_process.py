"""`bss worker`: processes the jobs an API-only `bss serve` (BSS_WORKERS=0) queued, beside it:
both processes open the same embedded store."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import httpx
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, legacy


def test_separate_worker_process(bss_server, tmp_path):
    srv = bss_server(workers=0)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(3)
    seg = api.segment(3, "w")
    job = api.new_job(3)
    assert api.upload(job, legacy([f"{i},{seg['id']}:0" for i in range(1, 51)]))["status"] == "OK"
    assert api.job(3, job["job_id"])["phase"] == "validating"  # nobody works in serve

    cmd = [str(BSS), "worker", "--data-dir", str(srv.data_dir)]
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(cmd, env=srv.env, stdout=log, stderr=log)
    try:
        sql = srv.data_dir / "bss.db"
        deadline = time.monotonic() + 120
        while True:
            with sqlite3.connect(sql) as con:
                phase = con.execute("SELECT phase FROM jobs WHERE id = ?", (job["id"],)).fetchone()[
                    0
                ]
            if phase in ("completed", "error"):
                break
            assert time.monotonic() < deadline, phase
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert (tmp_path / "worker.log").read_text().count('"job finished"') == 1

    # the API process reads what the worker process wrote, without a restart
    done = api.job(3, job["job_id"])
    assert done["phase"] == "completed" and done["num_valid"] == 50
    assert set(api.segments_of(3, uid=7)) == {seg["id"]}
    assert 'bss_jobs{phase="completed"} 1' in httpx.get(f"{srv.url}/metrics").text
    assert api.get("/segment", id=seg["id"])["segment"]["member_count"] == 50
