"""Many processes on one machine: limits, throttles and upload slots shared through the
database, uploads owned by a live process, `bss serve --processes N`, roles held once.

Every server here is a real `bss serve` process; several share one data dir (and so one
database), which is what `--processes N`, or `bss serve` beside `bss worker`, amounts to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc, legacy

MEMBER_PASSWORD = "password-123"


@pytest.fixture
def servers(tmp_path: Path):
    """Factory: `servers(n, **env)` starts n `bss serve` processes on one data dir."""
    started: list[ServerProc] = []

    def start(n: int, name: str = "data", **env: object) -> list[ServerProc]:
        procs = [ServerProc(tmp_path / name, {"workers": 0, **env}).start() for _ in range(n)]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop()


def _member(url: str, member_id: int, username: str, *, one_upload_at_a_time: bool = False) -> Api:
    """A member and its member user (the admin's set-up requests do not count against it)."""
    admin = Api(url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(member_id)
    if one_upload_at_a_time:
        admin.config(member_id, max_concurrent_uploads=1)
    admin.user(username, member_id, password=MEMBER_PASSWORD)
    return Api(url, username, MEMBER_PASSWORD)


def _on(api: Api, url: str) -> Api:
    """The same session against another process."""
    other = Api(url)
    other.token = api.token
    return other


class OpenUpload:
    """An upload sent by hand: headers and the first bytes now, the rest when we say."""

    def __init__(self, upload_url: str, total: int, first: bytes, token: str = "") -> None:
        u = urlsplit(upload_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        self.sock.sendall(
            (
                f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {total}\r\nAuthorization: {token}\r\n\r\n"
            ).encode()
            + first
        )

    def reply(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        out = b""
        while chunk := self.sock.recv(65536):
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()


def _wait_phase(api: Api, member_id: int, job_id: str, phase: str) -> dict:
    return api.wait(member_id, job_id, phases=(phase,), timeout=60)


def test_request_budget_is_shared_by_processes(servers):
    a, b = servers(2, requests_per_minute=6)
    on_a = _member(a.url, 7, "m7")  # the login is not a counted request
    on_b = _on(on_a, b.url)
    for api in (on_a, on_b, on_a, on_b, on_a, on_b):
        assert api.get("/batch-segment", member_id=7)["status"] == "OK"
    for api in (on_a, on_b):
        refused = api.raw("GET", "/batch-segment", params={"member_id": 7})
        assert refused.status_code == 429
        assert refused.json()["response"]["error_code"] == "RATE_EXCEEDED"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_password_guessing_is_throttled_per_address_across_processes(servers):
    a, b = servers(
        2, trusted_proxies="127.0.0.1", login_failures_per_client=3, login_failures_per_user=5
    )

    def login(srv: ServerProc, password: str, client: str) -> int:
        resp = httpx.post(
            f"{srv.url}/auth",
            json={"auth": {"username": ADMIN_USER, "password": password}},
            headers={"X-Forwarded-For": f"{client}, 127.0.0.1"},
        )
        return resp.status_code

    assert [login(s, "wrong", "10.0.0.1") for s in (a, b, a)] == [401, 401, 401]
    assert login(b, "wrong", "10.0.0.1") == 429  # the fourth failure, in the other process
    assert login(a, ADMIN_PASSWORD, "10.0.0.1") == 429  # that address is stopped...
    assert login(b, ADMIN_PASSWORD, "10.0.0.2") == 200  # ...the user is not locked out
    # the per-user ceiling (5) stops guessing spread over addresses
    assert [login(s, "wrong", f"10.0.1.{i}") for i, s in enumerate((a, b))] == [401, 401]
    assert login(a, "wrong", "10.0.2.1") == 429
    assert login(b, ADMIN_PASSWORD, "10.0.2.2") == 429


def test_forwarded_for_from_an_untrusted_peer_is_ignored(bss_server):
    srv = bss_server(login_failures_per_client=2)
    for client in ("10.0.0.1", "10.0.0.2"):
        resp = httpx.post(
            f"{srv.url}/auth",
            json={"auth": {"username": ADMIN_USER, "password": "wrong"}},
            headers={"X-Forwarded-For": client},
        )
        assert resp.status_code == 401
    resp = httpx.post(
        f"{srv.url}/auth",
        json={"auth": {"username": ADMIN_USER, "password": ADMIN_PASSWORD}},
        headers={"X-Forwarded-For": "10.0.0.3"},
    )
    assert resp.status_code == 429  # all three came from 127.0.0.1, whatever the header says


def test_old_upload_url_does_not_spend_the_members_budget(bss_server):
    srv = bss_server(workers=0, requests_per_minute=5)
    member = _member(srv.url, 8, "m8")
    job = member.new_job(8)  # 1
    assert member.upload(job, legacy(["1,1:0"]))["status"] == "OK"  # 2
    for token, status in (("", 409), ("garbage-token", 401), (member.token, 409)):
        for _ in range(10):
            resp = httpx.post(
                job["upload_url"],
                content=b"1,1:0\n",
                headers={"Content-Type": "application/octet-stream", "Authorization": token},
            )
            assert resp.status_code == status
    for _ in range(3):  # 3, 4, 5
        assert member.get("/batch-segment", member_id=8)["status"] == "OK"
    assert member.raw("GET", "/batch-segment", params={"member_id": 8}).status_code == 429


def test_stalled_upload_is_failed_holds_its_slot_until_then_and_never_resumes(bss_server):
    srv = bss_server(workers=0, upload_idle_seconds=3)
    member = _member(srv.url, 9, "m9", one_upload_at_a_time=True)
    first = member.new_job(9)
    stalled = OpenUpload(first["upload_url"], 1000, b"1,1:0\n" * 80)
    _wait_phase(member, 9, first["job_id"], "uploading")
    second = member.new_job(9)
    body = member.upload(second, legacy(["2,1:0"]))
    assert body["_http"] == 429 and body["errors"] == [
        "Member exceeds maximum number of concurrent uploads"
    ]
    reply = stalled.reply()  # the server gives up on the silent client and closes
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"the upload stalled: no data for 3 seconds" in reply
    failed = member.job(9, first["job_id"])
    assert failed["phase"] == "error" and failed["error_code"] == "uploading-error"
    assert failed["error_message"] == "the upload stalled: no data for 3 seconds"
    with contextlib.suppress(OSError):  # the rest of the stalled file finds the connection gone
        stalled.sock.sendall(b"3,1:0\n" * 87)
    stalled.close()
    assert member.job(9, first["job_id"])["phase"] == "error"
    assert not list((srv.data_dir / "uploads").glob(f"*{first['job_id']}*"))
    # the slot is free again
    assert member.upload(second, legacy(["2,1:0"]))["status"] == "OK"


def test_upload_of_a_crashed_server_fails_at_restart(bss_server):
    srv = bss_server(workers=0)
    member = _member(srv.url, 10, "m10", one_upload_at_a_time=True)
    job = member.new_job(10)
    cut = OpenUpload(job["upload_url"], 10_000, b"1,1:0\n" * 100)
    _wait_phase(member, 10, job["job_id"], "uploading")
    srv.kill9()
    cut.close()
    assert list((srv.data_dir / "uploads").glob(f".{job['job_id']}.part"))
    srv.start()  # up means the dead process's uploads are already failed
    failed = member.job(10, job["job_id"])
    assert failed["phase"] == "error" and failed["error_code"] == "uploading-error"
    assert not list((srv.data_dir / "uploads").glob(f"*{job['job_id']}*"))
    nxt = member.new_job(10)  # the slot (max_concurrent_uploads=1) is free at once
    assert member.upload(nxt, legacy(["1,1:0"]))["status"] == "OK"


def test_upload_of_a_dead_process_fails_while_other_processes_uploads_go_on(servers):
    a, b = servers(2, lease_seconds=1)
    member_a = _member(a.url, 11, "m11")
    admin = Api(a.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(12)
    member_b = Api(b.url, ADMIN_USER, ADMIN_PASSWORD)
    into_a = member_a.new_job(11)
    into_b = member_b.new_job(12)
    dying = OpenUpload(into_a["upload_url"], 10_000, b"1,1:0\n" * 100)
    living = OpenUpload(into_b["upload_url"], 12, b"1,1:0\n")
    _wait_phase(member_a, 11, into_a["job_id"], "uploading")
    _wait_phase(member_b, 12, into_b["job_id"], "uploading")
    a.kill9()
    dying.close()
    on_b = _on(member_a, b.url)
    failed = _wait_phase(on_b, 11, into_a["job_id"], "error")  # once a's lease lapsed
    assert failed["error_code"] == "uploading-error"
    assert not list((b.data_dir / "uploads").glob(f"*{into_a['job_id']}*"))
    assert member_b.job(12, into_b["job_id"])["phase"] == "uploading"  # untouched
    living.sock.sendall(b"2,1:0\n")
    assert living.reply().startswith(b"HTTP/1.1 200 ")
    living.close()
    assert member_b.job(12, into_b["job_id"])["phase"] == "validating"


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def test_serve_processes_share_one_port_limits_and_roles(tmp_path: Path):
    srv = ServerProc(
        tmp_path / "data", {"workers": 0, "requests_per_minute": 10, "processes": 2}
    ).start()
    try:
        assert srv.proc is not None
        children = _children(srv.proc.pid)
        assert len(children) == 2
        admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
        admin.member(13)
        statuses = []
        for _ in range(15):  # fresh connections, accepted by either process
            resp = httpx.get(
                f"{srv.url}/batch-segment",
                params={"member_id": 13},
                headers={"Authorization": admin.token or ""},
            )
            statuses.append(resp.status_code)
        assert statuses == [200] * 10 + [429] * 5
        db = sqlite3.connect(srv.data_dir / "bss.db")
        deadline = time.monotonic() + 30
        while True:  # both children up and holding their leases
            names = [r[0] for r in db.execute("SELECT name FROM leases")]
            roles = sorted(n.split("@")[0] for n in names if "@" in n)
            if roles == ["passive", "sweeper"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert roles == ["passive", "sweeper"]  # one holder each, for the whole machine
        pids = {int(n.split(":")[2]) for n in names if n.startswith("process:")}
        assert pids == children
        db.close()
        # a child that dies is replaced
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_children(srv.proc.pid) - {victim}) < 2:
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.1)
        assert httpx.get(f"{srv.url}/health").status_code == 200
    finally:
        srv.stop()
    assert srv.proc.returncode == 0


def test_two_worker_processes_beside_an_api_only_server(servers, tmp_path: Path):
    (srv,) = servers(1)  # BSS_WORKERS=0: the API never works a job itself
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(14)
    segs = [admin.segment(14, f"p{i}")["id"] for i in range(5)]
    # a member known before the jobs: every lookup made while they write must see exactly it
    first = admin.new_job(14)
    assert admin.upload(first, legacy([f"77,{segs[0]}:0"]))["status"] == "OK"
    workers = [
        ServerProc(srv.data_dir, {"workers": 1}, command=("worker",)).start() for _ in range(2)
    ]
    try:
        admin.wait(14, first["job_id"])
        assert set(admin.segments_of(14, uid=77)) == {segs[0]}
        lines = 20_000
        jobs = []
        for k in range(1, 5):
            job = admin.new_job(14)
            body = legacy([f"{k * 1_000_000 + i},{segs[k]}:0" for i in range(lines)])
            assert admin.upload(job, body)["status"] == "OK"
            jobs.append(job)
        lookups = 0
        while any(admin.job(14, j["job_id"])["phase"] not in ("completed", "error") for j in jobs):
            assert set(admin.segments_of(14, uid=77)) == {segs[0]}
            lookups += 1
        assert lookups > 0  # the last upload's job cannot be done before the first look
        for k, job in enumerate(jobs, start=1):
            done = admin.job(14, job["job_id"])
            assert done["phase"] == "completed" and done["num_valid"] == lines
            assert set(admin.segments_of(14, uid=k * 1_000_000 + lines - 1)) == {segs[k]}
            assert admin.get("/segment", id=segs[k])["segment"]["member_count"] == lines
        assert set(admin.segments_of(14, uid=77)) == {segs[0]}
    finally:
        for worker in workers:
            worker.stop()
    assert [w.proc.returncode for w in workers if w.proc] == [0, 0]
    # both worker processes took jobs (a job is claimed by one worker only)
    db = sqlite3.connect(srv.data_dir / "bss.db")
    ours = {j["job_id"] for j in jobs}
    owners = {
        claimed_by.split(":")[1]  # host:pid:nonce:w0
        for job_id, claimed_by in db.execute("SELECT job_id, claimed_by FROM jobs")
        if job_id in ours
    }
    db.close()
    worker_pids = {str(w.proc.pid) for w in workers if w.proc}
    assert owners == worker_pids


def test_validate_apply_beside_a_running_server(servers, tmp_path: Path):
    """`bss validate --apply` on the data dir of a running server works: the same store and
    the same seq counter, so the server reads its writes at once and a later job wins."""
    (srv,) = servers(1, workers=1)
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(31)
    seg = admin.segment(31, "beside")["id"]
    (tmp_path / "f.txt").write_text(f"4242,{seg}:0\n")
    (tmp_path / "segments.json").write_text(json.dumps([{"id": seg, "member_id": 31}]))
    command = [str(BSS), "validate", str(tmp_path / "f.txt"), "--segments"]
    command += [str(tmp_path / "segments.json"), "--member-id", "31", "--apply"]
    command += ["--data-dir", str(srv.data_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSS_")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(admin.segments_of(31, uid=4242)) == {seg}
    # A job the server runs afterwards removes the pair: its seqs lie above validate's.
    assert admin.run(31, legacy([f"4242,{seg}:-1"]))["phase"] == "completed"
    assert admin.segments_of(31, uid=4242) == {}
