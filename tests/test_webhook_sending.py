"""Webhook targets and receivers are chosen by members, so both are untrusted.

The target guard refuses every address that is not globally routable, IPv6 forms carrying an
IPv4 address included (a property test against a plain table of the IANA special-purpose
ranges), at config time and again at the connected socket; no redirect is followed. Against a
real `bss serve`, a receiver that drips its answer a byte at a time is cut off at the attempt's
total deadline while another member's delivery goes through, and a huge answer is not read.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import legacy
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update
from test_webhooks import FAST_RETRIES, SECRET, Receiver, _setup

from bss.db import init_db, make_engine, now_s, write_tx
from bss.settings import Settings
from bss.webhooks.models import webhook_deliveries
from bss.webhooks.sender import GuardedBackend, TargetRefused, permitted, resolve_target
from bss.webhooks.service import WebhookSender

# IANA special-purpose address registries: the blocks that are not globally reachable, and
# the forwarding, anycast and documentation blocks a webhook has no business reaching.
IPV4_NOT_GLOBAL = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
IPV4_NOT_GLOBAL_NETS = [ipaddress.IPv4Network(n) for n in IPV4_NOT_GLOBAL]


def reference_v4_global(ip: ipaddress.IPv4Address) -> bool:
    return not any(ip in net for net in IPV4_NOT_GLOBAL_NETS)


def carriers(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses that reach (or name) the IPv4 address v4."""
    n = int(v4)
    return [
        ipaddress.IPv6Address((0xFFFF << 32) | n),  # IPv4-mapped
        ipaddress.IPv6Address((0x64FF9B << 96) | n),  # NAT64 well-known prefix
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1),  # 6to4
        # Teredo: 2001:0000:<server>:<flags>:<port ^ ffff>:<client ^ ffffffff>
        ipaddress.IPv6Address((0x20010000 << 96) | (n << 64) | (0x8000 << 48) | (~n & 0xFFFFFFFF)),
    ]


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_ipv4_and_the_ipv6_forms_carrying_it_follow_the_iana_table(n):
    v4 = ipaddress.IPv4Address(n)
    assert permitted(v4, []) == reference_v4_global(v4)
    if not reference_v4_global(v4):
        for v6 in carriers(v4):
            assert not permitted(v6, []), v6
            # an allowed network admits the address whatever form carries it
            assert permitted(v6, [ipaddress.IPv4Network(f"{v4}/32")]), v6


@pytest.mark.parametrize(
    "text",
    [
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "64:ff9b:1::1",
        "100::1",
    ],
)
def test_ipv6_blocks_that_are_not_global_are_refused(text):
    assert not permitted(ipaddress.IPv6Address(text), [])


def test_global_addresses_pass():
    for text in (
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ):
        assert permitted(ipaddress.ip_address(text), []), text


@pytest.mark.parametrize(
    "url",
    [
        "http://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
        "http://100.100.100.200/latest/meta-data",  # a cloud metadata address lives here
        "http://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
        "http://[ff0e::1]/hook",
        "http://198.18.0.1/hook",
    ],
)
def test_config_refuses_targets_that_are_not_global(admin, member_id, url):
    answer = admin.call(
        "PUT",
        "/batch-segment-config",
        params={"member_id": member_id},
        json={"batch_segment_upload_config": {"webhook_url": url, "webhook_secret": "x"}},
    )
    assert answer["_http"] == 400 and answer["error_id"] == "SYNTAX"
    assert "BSS_WEBHOOK_ALLOWED_NETWORKS" in answer["error"]


def test_resolve_target_checks_every_address_of_a_name(tmp_path):
    loopback_allowed = Settings(data_dir=tmp_path, webhook_allowed_networks="127.0.0.0/8")
    assert resolve_target("http://127.0.0.1:8080/x", loopback_allowed)[2] == "127.0.0.1"
    with pytest.raises(TargetRefused):
        resolve_target("http://localhost:8080/x", Settings(data_dir=tmp_path))


def test_the_connected_peer_is_checked_too():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        far = time.monotonic() + 30
        with pytest.raises(TargetRefused):
            GuardedBackend([], far).connect_tcp("127.0.0.1", port)
        with pytest.raises(TargetRefused):  # names are never resolved at connect time
            GuardedBackend([ipaddress.ip_network("127.0.0.0/8")], far).connect_tcp(
                "localhost", port
            )
        stream = GuardedBackend([ipaddress.ip_network("127.0.0.0/8")], far).connect_tcp(
            "127.0.0.1", port
        )
        stream.close()
    finally:
        listener.close()


class RawReceiver:
    """A loopback TCP server that reads a request's head and answers with `answer(conn)`."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.open_connections = 0
        self.connections = 0
        self.closed = threading.Event()
        self.sent = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self.open_connections += 1
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.answer(self, conn)
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open_connections -= 1
            self.closed.set()

    def close(self) -> None:
        self.sock.close()


def drip(receiver: RawReceiver, conn: socket.socket) -> None:
    """Answer one byte every 0.2 s, forever: no single read ever waits long."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10**6:
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def huge(receiver: RawReceiver, conn: socket.socket) -> None:
    """A 2xx whose body claims, and would send, 256 MiB."""
    total = 256 << 20
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
    block = b"\0" * (1 << 16)
    while receiver.sent < total:
        conn.sendall(block)
        receiver.sent += len(block)


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def deliveries(api: Any, member_id: int) -> list[dict[str, Any]]:
    return api.get("/webhook-delivery", member_id=member_id)["webhook_deliveries"]


def test_a_dripping_receiver_is_cut_off_and_never_delays_another_member(bss_server):
    slow = RawReceiver(drip)
    fast = Receiver()
    try:
        # One delivery thread: fairness must come from concurrent sending, not thread count.
        proc = bss_server(**FAST_RETRIES, webhook_threads=1)
        admin, member, seg = _setup(proc, slow.url)
        admin.member(42)
        seg42 = admin.segment(42, "two")["id"]
        admin.ok(
            "PUT",
            "/batch-segment-config",
            params={"member_id": 42},
            json={
                "batch_segment_upload_config": {"webhook_url": fast.url, "webhook_secret": SECRET}
            },
        )
        member.run(41, legacy([f"5,{seg}:0"]))
        wait_for(lambda: slow.open_connections == 1, what="the slow receiver's connection")
        job = admin.run(42, legacy([f"6,{seg42}:0"]))
        fast.wait_delivered(1)
        assert slow.connections == 1 and slow.open_connections == 1  # still dripping
        (entry42,) = deliveries(admin, 42)
        assert entry42["job_id"] == job["job_id"]
        # The slow attempt ends at its total deadline (2 s), however often bytes arrive.
        (entry41,) = wait_for(
            lambda: [d for d in deliveries(admin, 41) if d["attempts"] >= 1],
            what="the slow attempt's record",
        )
        assert entry41["state"] == "pending" and entry41["last_status_code"] is None
        assert entry41["last_error"] == "no answer within webhook_timeout_seconds (2 s)"
    finally:
        slow.close()
        fast.close()


def test_a_huge_answer_is_not_read(bss_server):
    big = RawReceiver(huge)
    try:
        proc = bss_server(**FAST_RETRIES)
        admin, member, seg = _setup(proc, big.url)
        member.run(41, legacy([f"5,{seg}:0"]))
        (entry,) = wait_for(
            lambda: [d for d in deliveries(admin, 41) if d["state"] == "delivered"],
            what="the delivery",
        )
        assert entry["last_status_code"] == 200 and entry["attempts"] == 1
        assert big.closed.wait(60)  # the service hung up on the body
        assert big.sent < 64 << 20
    finally:
        big.close()


def test_redirects_are_not_followed(bss_server):
    target = Receiver()

    def redirect(_receiver: RawReceiver, conn: socket.socket) -> None:
        conn.sendall(
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target.url}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )

    hop = RawReceiver(redirect)
    try:
        proc = bss_server(**FAST_RETRIES)
        admin, member, seg = _setup(proc, hop.url)
        member.run(41, legacy([f"5,{seg}:0"]))
        (entry,) = wait_for(
            lambda: [d for d in deliveries(admin, 41) if d["attempts"] >= 2],
            what="two attempts",
        )
        assert entry["last_status_code"] == 307 and entry["last_error"] == "HTTP 307"
        assert entry["state"] == "pending"
        assert target.attempts == []
    finally:
        hop.close()
        target.close()


def test_a_delivery_the_infrastructure_failed_counts_no_attempt(tmp_path: Path) -> None:
    """The config cannot be read (the database unreachable): no attempt is counted, the
    delivery says why and waits its backoff; once the database is back, attempts count."""
    settings = Settings(data_dir=tmp_path, **FAST_RETRIES)
    db = make_engine(settings.resolved_database_url)
    init_db(db)
    with write_tx(db) as conn:
        conn.execute(
            insert(webhook_deliveries).values(
                delivery_id="d-1",
                member_id=7,
                event="e",
                body="{}",
                state="pending",
                attempts=0,
                created_on=now_s(),
                next_attempt_ms=0,
            )
        )
    sender = WebhookSender(db, settings, name="s")

    def send_one() -> Any:
        assert sender.run_once()
        for thread in list(sender._sending):
            thread.join()
        with db.connect() as conn:
            return conn.execute(select(webhook_deliveries)).mappings().one()

    sender.db = make_engine(f"sqlite:///{tmp_path}/not-there/bss.db")
    row = send_one()
    assert (row["attempts"], row["last_attempt_on"], row["claimed_by"]) == (0, None, None)
    assert row["state"] == "pending"
    assert row["last_error"].startswith("service unavailable, will retry: OperationalError")
    assert row["next_attempt_ms"] > time.time() * 1000
    assert sender.claim_next() is None  # it waits out its backoff

    sender.db = db
    with write_tx(db) as conn:
        conn.execute(update(webhook_deliveries).values(next_attempt_ms=0, claimed_until=None))
    row = send_one()
    assert (row["attempts"], row["last_error"]) == (1, "the member has no webhook_url")
