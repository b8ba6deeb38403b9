"""Consistent outcomes (issue 9.7) through a real `bss serve`: an empty file and a file that
is not a segment file end the same way through the API and the passive drop, control bytes
are escaped in error_log_lines and the error report, the 413 carries the limit and the size,
and an expired upload URL says that it expired."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc, legacy

#: Mostly NUL and control bytes, as an image or an archive starts.
BINARY = bytes([0, 1, 2, 0, 0, 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) * 300
CONTROLS = bytes(range(1, 9)) * 100 + b"1,1:0\n"  # no NUL, but no text either


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    env = {
        "max_file_bytes": 4000,
        "passive_scan_seconds": 1,
        "passive_min_age_seconds": 0,
        "passive_poll_seconds": 0.2,
    }
    proc = ServerProc(tmp_path_factory.mktemp("outcomes") / "data", env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(srv):
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(3)
    api.segment(3, "s")
    return api


def _passive(srv: ServerProc, api: Api, name: str, content: bytes) -> dict:
    folder = Path(srv.data_dir) / "passive" / "3" / "submitted"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    failed = folder.parent / "failed"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        moved = [p.name for p in failed.glob(f"{name}-*")] if failed.is_dir() else []
        if moved:
            return api.job(3, moved[0].rsplit("-", 1)[1])
        time.sleep(0.2)
    raise AssertionError(f"{name} did not end in failed/")


@pytest.mark.parametrize(
    ("name", "content", "error_code"),
    [
        ("empty.txt", b"", "empty_file"),
        ("empty.gz", gzip.compress(b"", mtime=0), "empty_file"),
        ("binary.bin", BINARY, "not_a_segment_file"),
        ("binary.gz", gzip.compress(BINARY, mtime=0), "not_a_segment_file"),
        ("controls.txt", CONTROLS, "not_a_segment_file"),
    ],
)
def test_api_and_passive_drop_end_alike(srv, api, name, content, error_code):
    through_api = api.new_job(3)
    assert api.upload(through_api, content)["status"] == "OK"
    job = api.wait(3, through_api["job_id"])
    dropped = _passive(srv, api, name, content)
    for ended in (job, dropped):
        assert (ended["phase"], ended["error_code"]) == ("error", error_code), ended
        assert ended["num_valid"] == ended["num_invalid_format"] == 0
        assert ended["error_log_lines"] is None


def test_control_bytes_are_escaped_in_the_error_log_and_report(api):
    job = api.run(3, legacy(["12\x1b[2J34,1:0", "56,x\x07:0\t", "78,1:0"]))
    assert job["num_invalid_format"] + job["num_invalid_user"] == 2
    log = job["error_log_lines"]
    assert "12\\x1b[2J34" in log and "x\\x07:0\\t" in log
    assert not any(ord(c) < 0x20 and c != "\n" for c in log)
    report = api.raw(
        "GET", "/batch-segment/error-report", params={"member_id": 3, "job_id": job["job_id"]}
    ).text
    assert "12\\x1b[2J34" in report and not any(ord(c) < 0x20 and c != "\n" for c in report)


def test_413_says_the_limit_and_the_size(api):
    job = api.new_job(3)
    body = api.upload(job, b"1,1:0\n" * 1000)  # 6000 bytes, Content-Length known
    assert body == {
        "status": "ERROR",
        "error_code": "FILESIZE_LIMIT_EXCEEDED",
        "errors": ["Member exceeds maximum byte size allowed for a file"],
        "max_file_bytes": 4000,
        "file_bytes": 6000,
        "_http": 413,
    }

    def chunks():  # no Content-Length: refused by the bytes received
        for _ in range(3):
            yield b"1,1:0\n" * 250  # 1500 bytes each

    job = api.new_job(3)
    resp = httpx.post(
        job["upload_url"], content=chunks(), headers={"Content-Type": "application/octet-stream"}
    )
    body = resp.json()["response"]
    assert resp.status_code == 413 and body["error_code"] == "FILESIZE_LIMIT_EXCEEDED"
    assert body["max_file_bytes"] == 4000 and 4000 < body["file_bytes"] <= 4500


def test_an_expired_url_says_expired_every_time(bss_server):
    api = Api(bss_server(upload_url_ttl_seconds=1).url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(3)
    job = api.new_job(3)
    time.sleep(2.1)  # whole seconds: a 1 s TTL ends after 1 to 2 s
    for _ in range(2):  # the second time the job is already marked failed
        body = api.upload(job, b"1,1:0\n")
        assert (body["_http"], body["error_code"]) == (410, "upload_url_expired"), body
        assert "expired" in body["error"]
