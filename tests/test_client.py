"""BssClient and the `bss upload / status / jobs` commands against a real server."""

from __future__ import annotations

import gzip
import json
import os
import subprocess

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, legacy

from bss.client import ApiError, BssClient


@pytest.fixture(scope="module")
def setup(server, admin):
    admin.member(31)
    seg = admin.segment(31, "client-seg")
    admin.user("client31", 31)
    return seg["id"]


def test_client_streams_gzip_and_waits(server, setup, tmp_path):
    path = tmp_path / "f.txt.gz"
    path.write_bytes(gzip.compress(legacy([f"{5000 + i},{setup}:0" for i in range(1000)])))
    with BssClient(server.url, "client31", "password-123") as client:
        job = client.upload_file(31, path, poll=0.1, timeout=60)
        assert job["phase"] == "completed" and job["num_valid"] == 1000
        assert client.user_segments(31, uid=5999)[0]["id"] == setup
        assert client.list_jobs(31)["count"] >= 1
        assert client.error_report(31, job["job_id"]).startswith("line_no,counter,reason,raw")
        with pytest.raises(ApiError) as err:
            client.get_job(31, "x" * 40)
        assert err.value.error_id == "NOTFOUND"


def test_client_logs_in_again_on_noauth(bss_server):
    srv = bss_server()
    Api(srv.url, ADMIN_USER, ADMIN_PASSWORD).member(1)
    client = BssClient(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    first = client.login()
    # End the session on the server (as an expiry would, without racing a short TTL on a
    # loaded machine): the client's next request gets NOAUTH and must log in again.
    BssClient(srv.url, token=first).logout()
    assert client.create_job(1)["phase"] == "starting"
    assert client.token != first
    client.close()


def _cli(server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BSS_USERNAME": "client31",
        "BSS_PASSWORD": "password-123",
        "BSS_URL": server.url,
        # where the commands keep their token: not the real user's config dir
        "XDG_CONFIG_HOME": str(server.data_dir.parent / "config"),
    }
    return subprocess.run([str(BSS), *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_upload_status_jobs(server, setup, tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(legacy([f"{7000 + i},{setup}:0" for i in range(10)] + ["junk"]))
    out = _cli(server, "upload", str(path), "--member-id", "31", "--poll", "0.2", "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["phase"] == "completed" and job["num_valid"] == 10 and job["num_invalid_format"] == 1
    out = _cli(server, "status", job["job_id"], "--member-id", "31")
    assert out.returncode == 0 and json.loads(out.stdout)["job_id"] == job["job_id"]
    out = _cli(server, "jobs", "--member-id", "31")
    assert out.returncode == 0 and job["job_id"] in out.stdout


def test_cli_upload_exits_nonzero_on_error(server, setup, tmp_path):
    path = tmp_path / "bad.bz2"
    path.write_bytes(b"BZh91AY&SY" + b"\0" * 64)
    out = _cli(server, "upload", str(path), "--member-id", "31", "--poll", "0.2", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["phase"] == "error"
    out = _cli(server, "status", "x" * 40, "--member-id", "31")
    assert out.returncode == 1 and "NOTFOUND" in out.stderr


def test_client_reports_why_a_big_upload_was_refused(bss_server, tmp_path):
    srv = bss_server(max_file_bytes=100_000)
    Api(srv.url, ADMIN_USER, ADMIN_PASSWORD).member(1)
    path = tmp_path / "big.txt"
    path.write_bytes(b"1,1:0\n" * 2_000_000)  # 12 MB: refused by the declared length
    with BssClient(srv.url, ADMIN_USER, ADMIN_PASSWORD) as client:
        job = client.create_job(1)
        with pytest.raises(ApiError) as err:
            client.upload(job["upload_url"], path)
        assert err.value.error_code in ("FILESIZE_LIMIT_EXCEEDED", "uploading-error")
        assert client.get_job(1, job["job_id"])["error_code"] == "uploading-error"
