"""Completion webhooks against a real `bss serve` and a real HTTP receiver on loopback that
fails the first attempts: signatures, retries, order, one in flight per member, restarts,
the delivery log and the target guard."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy

SECRET = "s3cret-for-tests"
FAST_RETRIES = {
    "webhook_allowed_networks": "127.0.0.0/8",
    "webhook_first_retry_seconds": 0.2,
    "webhook_max_retry_seconds": 0.4,
    "webhook_poll_seconds": 0.1,
    "webhook_timeout_seconds": 2,
}


class Receiver:
    """A loopback HTTP server that answers 500 to the first `fail_first` attempts of each
    delivery (or of all, with fail_first=None), and records every attempt."""

    def __init__(self, fail_first: int | None = 0) -> None:
        self.fail_first = fail_first
        self.attempts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    delivery = self.headers["X-BSS-Delivery"]
                    seen = sum(1 for a in receiver.attempts if a["delivery"] == delivery)
                    fail = receiver.fail_first is None or seen < receiver.fail_first
                    receiver.attempts.append(
                        {
                            "delivery": delivery,
                            "timestamp": self.headers["X-BSS-Timestamp"],
                            "signature": self.headers["X-BSS-Signature"],
                            "body": body,
                            "status": 500 if fail else 200,
                            "path": self.path,
                        }
                    )
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.attempts if a["status"] == 200]

    def wait_delivered(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < n:
            assert time.monotonic() < deadline, f"only {len(self.delivered())} of {n} delivered"
            time.sleep(0.05)
        return self.delivered()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int | None = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def expected_signature(attempt: dict[str, Any]) -> str:
    mac = hmac.new(
        SECRET.encode(), attempt["timestamp"].encode() + b"." + attempt["body"], "sha256"
    )
    return "sha256=" + mac.hexdigest()


def _setup(proc: Any, url: str) -> tuple[Api, Api, int]:
    admin = Api(proc.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(41)
    seg = admin.segment(41, "one")["id"]
    admin.user("hooked", 41)
    member = Api(proc.url, "hooked", "password-123")
    # a member sets its own webhook; the secret is never returned
    cfg = member.ok(
        "PUT",
        "/batch-segment-config",
        json={"batch_segment_upload_config": {"webhook_url": url, "webhook_secret": SECRET}},
    )["batch_segment_upload_config"]
    assert cfg["webhook_url"] == url and "webhook_secret" not in cfg
    got = member.get("/batch-segment-config")["batch_segment_upload_config"]
    assert got["webhook_url"] == url and "webhook_secret" not in got
    return admin, member, seg


def test_retries_until_delivered_with_valid_signatures(bss_server, receiver):
    hook = receiver(fail_first=2)
    proc = bss_server(**FAST_RETRIES)
    admin, member, seg = _setup(proc, hook.url)
    job = member.run(41, legacy([f"{u},{seg}:0" for u in (11, 12, 13)]))
    assert job["phase"] == "completed" and job["num_valid"] == 3
    hook.wait_delivered(1)
    attempts = hook.attempts
    assert [a["status"] for a in attempts] == [500, 500, 200]
    assert len({a["delivery"] for a in attempts}) == 1  # one delivery id on every attempt
    for a in attempts:
        assert a["signature"] == expected_signature(a)
        assert a["path"] == "/hook"
    body = json.loads(attempts[-1]["body"])
    assert body == {"batch_segment_upload_job": member.job(41, job["job_id"])}
    log = member.get("/webhook-delivery", member_id=41)
    assert log["status"] == "OK" and log["count"] == 1
    entry = log["webhook_deliveries"][0]
    assert entry["id"] == attempts[0]["delivery"]
    assert (entry["state"], entry["attempts"], entry["last_status_code"], entry["job_id"]) == (
        "delivered",
        3,
        200,
        job["job_id"],
    )
    assert entry["last_error"] is None and entry["url"] == hook.url
    # a member sees only its own log; other config fields stay admin-only
    assert member.get("/webhook-delivery", member_id=1)["_http"] == 403
    refused = member.call(
        "PUT", "/batch-segment-config", json={"batch_segment_upload_config": {"separator_1": ";"}}
    )
    assert refused["_http"] == 403


def test_one_in_flight_per_member_in_order(bss_server, receiver):
    hook = receiver(fail_first=3)
    proc = bss_server(**FAST_RETRIES, webhook_threads=4)
    admin, member, seg = _setup(proc, hook.url)
    jobs = [member.run(41, legacy([f"{100 + i},{seg}:0"]))["job_id"] for i in range(3)]
    hook.wait_delivered(3)
    order = [json.loads(a["body"])["batch_segment_upload_job"]["job_id"] for a in hook.attempts]
    # every attempt of job 1 comes before any of job 2, and so on
    assert order == [jobs[0]] * 4 + [jobs[1]] * 4 + [jobs[2]] * 4


def test_gives_up_after_the_window_and_the_next_one_goes(bss_server, receiver):
    hook = receiver(fail_first=None)  # always 500
    proc = bss_server(**{**FAST_RETRIES, "webhook_retry_window_seconds": 0.5})
    admin, member, seg = _setup(proc, hook.url)
    first = member.run(41, legacy([f"7,{seg}:0"]))["job_id"]
    second = member.run(41, legacy([f"8,{seg}:0"]))["job_id"]
    deadline = time.monotonic() + 30
    while True:
        log = {d["job_id"]: d for d in member.get("/webhook-delivery")["webhook_deliveries"]}
        if all(log.get(j, {}).get("state") == "failed" for j in (first, second)):
            break
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    assert log[first]["last_status_code"] == 500 and log[first]["last_error"] == "HTTP 500"
    assert log[first]["attempts"] >= 2 and log[first]["next_attempt_on"] is None
    failed = member.get("/webhook-delivery", state="failed")
    assert failed["count"] == 2


def test_pending_delivery_survives_a_restart(bss_server, receiver, tmp_path):
    hook = receiver(fail_first=None)
    proc = bss_server(**FAST_RETRIES)
    admin, member, seg = _setup(proc, hook.url)
    job = member.run(41, legacy([f"9,{seg}:0"]))["job_id"]
    deadline = time.monotonic() + 30
    # kill only once the failed attempt is on record: the receiver can see a request
    # before the service has written down that it was made
    while not member.get("/webhook-delivery")["webhook_deliveries"][0]["attempts"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill9()
    hook.fail_first = 0  # the receiver recovers while the service is down
    proc.start()
    delivered = hook.wait_delivered(1)
    assert json.loads(delivered[0]["body"])["batch_segment_upload_job"]["job_id"] == job
    member.login("hooked", "password-123")
    entry = member.get("/webhook-delivery")["webhook_deliveries"][0]
    assert entry["state"] == "delivered" and entry["attempts"] >= 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://192.168.0.1/hook",
    ],
)
def test_internal_targets_are_refused_unless_allowed(admin, member_id, url):
    answer = admin.call(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"webhook_url": url, "webhook_secret": "x"}},
    )
    assert answer["_http"] == 400 and answer["error_id"] == "SYNTAX"
    assert "BSS_WEBHOOK_ALLOWED_NETWORKS" in answer["error"]


def test_config_rules(admin, member_id):
    put = {"webhook_url": "ftp://example.com/x", "webhook_secret": "x"}
    answer = admin.call(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": put},
    )
    assert answer["_http"] == 400
    assert "webhook_url must be an http:// or https:// URL with a host" in answer["error"]
    answer = admin.call(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"webhook_url": "https://example.com/x"}},
    )
    assert answer["_http"] == 400 and "needs a webhook_secret" in answer["error"]


def test_signature_helper_matches_the_documented_form():
    from bss.webhooks.service import sign

    body = b'{"batch_segment_upload_job":{}}'
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", body) == "sha256=" + mac


def test_a_job_that_ends_in_error_is_delivered_too(bss_server, receiver):
    hook = receiver()
    proc = bss_server(**FAST_RETRIES)
    admin, member, seg = _setup(proc, hook.url)
    job = member.run(41, b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    assert job["phase"] == "error"
    delivered = hook.wait_delivered(1)
    sent = json.loads(delivered[0]["body"])["batch_segment_upload_job"]
    assert sent == member.job(41, job["job_id"])
    assert sent["phase"] == "error" and sent["error_code"] == job["error_code"]
    assert delivered[0]["signature"] == expected_signature(delivered[0])


def test_a_config_post_keeps_the_webhook_it_does_not_name(admin, member_id):
    hook = {"webhook_url": "https://hooks.example.invalid/bss", "webhook_secret": "k"}
    admin.ok(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": hook},
    )
    replaced = admin.config(member_id, separator_1=";")  # POST: the format config replaced
    assert replaced["separator_1"] == ";" and replaced["webhook_url"] == hook["webhook_url"]
    stopped = admin.config(member_id, webhook_url=None)
    assert stopped["webhook_url"] is None and stopped["separator_1"] == ","
