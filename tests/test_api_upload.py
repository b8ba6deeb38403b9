"""The upload path: the documented curl sequence, content types, one-shot URLs, every limit."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy

FILESIZE = {
    "status": "ERROR",
    "error_code": "FILESIZE_LIMIT_EXCEEDED",
    "errors": ["Member exceeds maximum byte size allowed for a file"],
}


def rate(text: str) -> dict:
    return {"status": "ERROR", "error_code": "RATE_LIMIT_EXCEEDED", "errors": [text]}


def strip(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "_http"}


def raw_upload(
    url: str,
    total: int,
    parts: list[tuple[bytes, float]],
    *,
    close_early: bool = False,
    token: str = "",
) -> dict | None:
    """POST with Content-Length `total`, sending `parts` (bytes, delay before); read the reply.

    With close_early the socket is closed after the parts (a cut-off upload) and None returned.
    """
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {total}\r\nAuthorization: {token}\r\n\r\n"
    ).encode()
    sock.sendall(head)
    try:
        for data, delay in parts:
            time.sleep(delay)
            sock.sendall(data)
    except OSError:
        pass  # the server may answer (and close) before everything was sent
    if close_early:
        sock.close()
        return None
    buf = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        if b"\r\n\r\n" in buf:
            head_part, _, body = buf.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head_part.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ]
            if length and len(body) >= length[0]:
                break
    sock.close()
    head_part, _, body = buf.partition(b"\r\n\r\n")
    out = json.loads(body)["response"]
    out["_http"] = int(head_part.split(b" ")[1])
    return out


def test_documented_curl_sequence(server, admin, member_id, tmp_path: Path):
    """The documented curl commands, verbatim in form: -c/-b cookies, -d '' then --data-binary."""
    seg = admin.segment(member_id, "curl-seg")
    admin.user(f"curl{member_id}", member_id)
    cookies = tmp_path / "cookies"
    seg_file = tmp_path / "segment_file"
    seg_file.write_bytes(
        legacy([f"7652266028043224430,{seg['id']}:0", f"4013681496264948522,{seg['id']}:1440"])
    )

    def curl(*args: str) -> dict:
        out = subprocess.run(
            ["curl", "-s", *args], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(out)["response"]

    auth = json.dumps({"auth": {"username": f"curl{member_id}", "password": "password-123"}})
    assert (
        curl(
            "-b", str(cookies), "-c", str(cookies), "-X", "POST", "-d", auth, f"{server.url}/auth"
        )["status"]
        == "OK"
    )
    created = curl(
        "-b",
        str(cookies),
        "-c",
        str(cookies),
        "-X",
        "POST",
        "-s",
        "-d",
        "",
        f"{server.url}/batch-segment?member_id={member_id}",
    )
    job = created["batch_segment_upload_job"]
    assert (
        created["status"] == "OK"
        and created["dbg_info"]["output_term"] == "batch_segment_upload_job"
    )
    assert len(job["job_id"]) == 40 and job["job_id"].isalnum()
    assert job["upload_url"] == f"{server.url}/segment-upload/{job['job_id']}"
    assert job["member_id"] == member_id and isinstance(job["id"], int)
    # the wrong way first: -d sends application/x-www-form-urlencoded
    wrong = curl("-b", str(cookies), "-X", "POST", "-d", f"@{seg_file}", job["upload_url"])
    assert wrong["status"] == "ERROR" and wrong["error_code"] == "INVALID_CONTENT_TYPE"
    assert "application/octet-stream" in wrong["error"]
    # then the documented way; the URL is still good
    up = curl(
        "-H",
        "Content-Type:application/octet-stream",
        "-b",
        str(cookies),
        "-X",
        "POST",
        "--data-binary",
        f"@{seg_file}",
        job["upload_url"],
    )
    assert up["status"] == "OK", up
    status = curl(
        "-b",
        str(cookies),
        f"{server.url}/batch-segment?member_id={member_id}&job_id={job['job_id']}",
    )
    assert status["batch_segment_upload_job"]["phase"] in ("validating", "processing", "completed")
    api = Api(server.url, f"curl{member_id}", "password-123")
    done = api.wait(member_id, job["job_id"])
    assert (
        done["phase"] == "completed" and done["num_valid"] == 2 and done["percent_complete"] == 100
    )
    # a second upload to the same URL is refused
    again = curl(
        "-H",
        "Content-Type: application/octet-stream",
        "-b",
        str(cookies),
        "-X",
        "POST",
        "--data-binary",
        f"@{seg_file}",
        job["upload_url"],
    )
    assert again["status"] == "ERROR" and again["error_code"] == "upload_url_used"


def test_only_newest_url_is_valid(server, admin, member_id):
    first = admin.new_job(member_id)
    second = admin.new_job(member_id)
    old = admin.job(member_id, first["job_id"])
    assert old["phase"] == "error" and old["error_code"] == "upload_url_replaced"
    refused = admin.upload(first, b"1,1:0\n")
    assert refused["status"] == "ERROR" and refused["_http"] == 409
    assert admin.upload(second, b"")["status"] == "OK"


def test_url_expires(bss_server):
    srv = bss_server(upload_url_ttl_seconds=1)
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(7)
    job = admin.new_job(7)
    time.sleep(2.1)
    seen = admin.job(7, job["job_id"])
    assert seen["phase"] == "error" and seen["error_code"] == "upload_url_expired"
    refused = admin.upload(job, b"1,1:0\n")
    assert refused["status"] == "ERROR" and refused["error_code"] == "upload_url_expired"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from conftest import ServerProc

    proc = ServerProc(
        tmp_path_factory.mktemp("small") / "data", {"max_file_bytes": 1000, "max_upload_seconds": 2}
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def small_member(small):
    admin = Api(small.url, ADMIN_USER, ADMIN_PASSWORD)
    mid = int(time.time() * 1000) % 10**8
    admin.member(mid)
    return admin, mid


def test_file_size_limit_declared(small, small_member):
    admin, mid = small_member
    job = admin.new_job(mid)
    body = admin.upload(job, b"x" * 1001)
    # the documented body, then the limit and the size as extra fields
    assert strip(body) == {**FILESIZE, "max_file_bytes": 1000, "file_bytes": 1001}
    assert body["_http"] == 413
    failed = admin.job(mid, job["job_id"])
    assert failed["phase"] == "error" and failed["error_code"] == "uploading-error"


def test_file_size_limit_while_streaming(small, small_member):
    admin, mid = small_member
    job = admin.new_job(mid)
    body = admin.upload(job, iter([b"1" * 600, b"2" * 600]))  # chunked: no Content-Length
    assert strip(body) == {**FILESIZE, "max_file_bytes": 1000, "file_bytes": 1200}
    failed = admin.job(mid, job["job_id"])
    assert failed["phase"] == "error" and failed["error_code"] == "uploading-error"
    assert failed["num_valid"] == 0 and failed["error_log_lines"] is None
    assert not list((small.data_dir / "uploads").glob(f"*{job['job_id']}*"))


def test_upload_time_limit(small, small_member):
    admin, mid = small_member
    job = admin.new_job(mid)
    body = raw_upload(
        job["upload_url"],
        100,
        [(b"1,1:0\n", 0), (b"2,1:0\n", 1.5), (b"3,1:0\n", 1.5)],
        token=admin.token or "",
    )
    assert strip(body) == rate("Maximum upload time exceeded")
    assert admin.job(mid, job["job_id"])["error_code"] == "uploading-error"


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        ("hourly_byte_limit", "Member exceeds maximum allowed bytes per hour"),
        ("daily_byte_limit", "Member exceeds maximum allowed bytes per day"),
        ("hourly_num_lines_limit", "Member exceeds maximum allowed number of lines per hour"),
        ("daily_num_lines_limit", "Member exceeds maximum allowed number of lines per day"),
    ],
)
def test_member_upload_limits(server, admin, member_id, limit, text):
    seg = admin.segment(member_id, "lim")
    admin.config(member_id, **{limit: 30 if "byte" in limit else 3})
    first = legacy([f"{10 + i},{seg['id']}:0" for i in range(2)])  # 2 lines, 14 bytes
    assert admin.run(member_id, first)["phase"] == "completed"
    job = admin.new_job(member_id)
    second = legacy([f"{20 + i},{seg['id']}:0" for i in range(3)])  # pushes past the limit
    body = admin.upload(job, second)
    assert strip(body) == rate(text)
    failed = admin.job(member_id, job["job_id"])
    assert failed["phase"] == "error" and failed["error_code"] == "uploading-error"
    assert all(failed[c] == 0 for c in ("num_valid", "num_invalid_format", "num_valid_user"))
    assert failed["error_log_lines"] is None and failed["segment_log_lines"] is None


def test_concurrent_upload_limit(server, admin, member_id):
    admin.config(member_id, max_concurrent_uploads=1)
    first = admin.new_job(member_id)
    u = urlsplit(first["upload_url"])
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall(
        (
            f"POST {u.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 12\r\n\r\n"
        ).encode()
        + b"1,1:0\n"
    )
    deadline = time.monotonic() + 10
    while admin.job(member_id, first["job_id"])["phase"] != "uploading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = admin.new_job(member_id)
    body = admin.upload(second, b"2,1:0\n")
    assert strip(body) == rate("Member exceeds maximum number of concurrent uploads")
    assert admin.job(member_id, second["job_id"])["phase"] == "starting"  # still uploadable
    sock.sendall(b"3,1:0\n")
    reply = sock.recv(65536)
    sock.close()
    assert b" 200 " in reply.split(b"\r\n", 1)[0]
    assert admin.upload(second, b"2,1:0\n")["status"] == "OK"


def test_pending_jobs_limit(bss_server):
    srv = bss_server(workers=0, max_pending_jobs=2)
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(5)
    for _ in range(2):
        job = admin.new_job(5)
        assert admin.upload(job, b"1,1:0\n")["status"] == "OK"
        assert admin.job(5, job["job_id"])["phase"] == "validating"
    body = admin.call("POST", "/batch-segment", params={"member_id": 5})
    assert strip(body) == rate("Member exceeds maximum number of jobs waiting to be processed")


def test_cut_off_upload_leaves_nothing(server, admin, member_id):
    job = admin.new_job(member_id)
    raw_upload(job["upload_url"], 100_000, [(b"1,1:0\n" * 500, 0)], close_early=True)
    failed = admin.wait(member_id, job["job_id"], phases=("error",), timeout=20)
    assert failed["error_code"] == "uploading-error"
    assert failed["num_valid"] == 0 and failed["num_invalid_format"] == 0
    assert failed["error_log_lines"] is None and failed["segment_log_lines"] is None
    assert not list((server.data_dir / "uploads").glob(f"*{job['job_id']}*"))
    # and the URL is spent
    assert admin.upload(job, b"1,1:0\n")["status"] == "ERROR"


def test_line_limit_counts_decompressed_lines_of_gzip(server, admin, member_id):
    import gzip

    seg = admin.segment(member_id, "gz")
    admin.config(member_id, hourly_num_lines_limit=5)
    first = gzip.compress(legacy([f"{30 + i},{seg['id']}:0" for i in range(3)]))
    assert admin.run(member_id, first)["phase"] == "completed"
    job = admin.new_job(member_id)
    body = admin.upload(job, gzip.compress(legacy([f"{40 + i},{seg['id']}:0" for i in range(3)])))
    assert strip(body) == rate("Member exceeds maximum allowed number of lines per hour")
