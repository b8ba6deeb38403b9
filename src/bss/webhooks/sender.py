"""Sending one webhook attempt: where it may go, and how long and how much it may take.

A member chooses its webhook URL, so the target is untrusted (SSRF): only globally routable
addresses are dialled, unless BSS_WEBHOOK_ALLOWED_NETWORKS lists them. IPv6 forms that carry
an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo) are judged by that
IPv4 address too. The name is resolved once, every address it resolves to is checked, the
connection goes to a checked address, and the peer of the connected socket is checked again.
Redirects are never followed (a 3xx is a failed attempt).

A receiver cannot hold a sender: an attempt has one total deadline (connect, TLS, sending,
the answer's head), not a timeout per read, and the answer's body is never read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
import typing
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from bss.db import now_s
from bss.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT = "bss-webhooks/1"

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Not globally reachable (IANA's special-purpose registries), though is_global says so in
#: some Python versions: shared address space, IETF protocol assignments, local-use NAT64.
_NOT_GLOBAL = (
    ipaddress.IPv4Network("100.64.0.0/10"),
    ipaddress.IPv4Network("192.0.0.0/24"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


class TargetRefused(Exception):
    """The webhook URL points where the service must not send (SSRF guard)."""


class TargetUnresolved(TargetRefused):
    """The webhook URL's host does not resolve (now): a config may name it, no attempt can."""


@dataclass(frozen=True, slots=True)
class Attempt:
    status_code: int | None
    error: str | None
    url: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def allowed_networks(settings: Settings) -> list[Network]:
    text = settings.webhook_allowed_networks.strip()
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part]


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (and reaches through a translator)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour]
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def _global(ip: IPAddress) -> bool:
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _NOT_GLOBAL)


def permitted(ip: IPAddress, allowed: list[Network]) -> bool:
    """A globally routable unicast address (itself and any IPv4 inside it), or an allowed one."""
    forms: list[IPAddress] = [ip, *_embedded_ipv4(ip)]
    if any(form in net for form in forms for net in allowed if form.version == net.version):
        return True
    return all(_global(form) for form in forms)


def _refusal(host: str, ip: IPAddress) -> TargetRefused:
    return TargetRefused(
        f"webhook_url host {host!r} is not a globally routable address ({ip}: private, "
        "loopback, link-local, shared, multicast or reserved); list it in "
        "BSS_WEBHOOK_ALLOWED_NETWORKS to allow it"
    )


def resolve_target(url: str, settings: Settings) -> tuple[str, int, str]:
    """(host, port, the address to connect to), after refusing every non-permitted address.

    Every address the name resolves to is checked, and the connection is then made to the
    checked one: a name that resolves differently a moment later cannot slip past.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused("webhook_url must be an http:// or https:// URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetUnresolved(f"webhook_url host {host!r} does not resolve: {exc}") from exc
    allowed = allowed_networks(settings)
    addresses = []
    for info in infos:
        text = info[4][0]
        assert isinstance(text, str)  # an IPv4/IPv6 sockaddr starts with the address text
        addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
    for ip in addresses:
        if not permitted(ip, allowed):
            raise _refusal(host, ip)
    return host, port, str(addresses[0])


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """X-BSS-Signature: HMAC-SHA256 of `timestamp + "." + body` with the member's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class DeadlineExceeded(httpcore.TimeoutException):
    """The attempt's total deadline passed."""


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the attempt's total deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A receiver that reads slowly could take a large body a byte at a time.
        view = memoryview(buffer)
        while view:
            chunk, view = view[:16384], view[16384:]
            self._stream.write(bytes(chunk), self._left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Dials only permitted address literals, checks the connected peer, keeps the deadline."""

    def __init__(self, allowed: list[Network], deadline: float) -> None:
        self._allowed = allowed
        self._deadline = deadline
        self._plain = httpcore.SyncBackend()

    def _check(self, host: str) -> None:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise TargetRefused(
                f"webhook connections go to checked addresses, not {host!r}"
            ) from None
        if not permitted(ip, self._allowed):
            raise _refusal(host, ip)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self._check(host)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the attempt's total deadline passed")
        stream = self._plain.connect_tcp(
            host, port, min(left, timeout or left), local_address, socket_options
        )
        try:
            peer = stream.get_extra_info("socket").getpeername()[0]
            self._check(peer)
        except BaseException:
            stream.close()
            raise
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise TargetRefused("webhooks are never sent to a unix socket")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def send(
    url: str | None, secret: str, delivery_id: str, body: bytes, settings: Settings
) -> Attempt:
    """One attempt: POST the signed body, within webhook_timeout_seconds in all."""
    if not url:
        return Attempt(None, "the member has no webhook_url", None)
    deadline = time.monotonic() + settings.webhook_timeout_seconds
    try:
        host, port, address = resolve_target(url, settings)
    except TargetRefused as exc:
        return Attempt(None, str(exc), url)
    parts = urlsplit(url)
    netloc_ip = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{netloc_ip}:{port}", parts.path or "/", parts.query, ""))
    timestamp = str(now_s())
    default_port = 443 if parts.scheme == "https" else 80
    headers = [
        ("Host", host if port == default_port else f"{host}:{port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("User-Agent", USER_AGENT),
        ("X-BSS-Timestamp", timestamp),
        ("X-BSS-Signature", sign(secret, timestamp, body)),
        ("X-BSS-Delivery", delivery_id),
    ]
    backend = GuardedBackend(allowed_networks(settings), deadline)
    pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=backend, max_connections=1
    )
    try:
        # The status is all that counts: leaving the block closes the connection without
        # reading the body, however large the receiver says it is.
        with pool.stream(
            "POST", pinned, headers=headers, content=body, extensions={"sni_hostname": host}
        ) as resp:
            status = resp.status
    except TargetRefused as exc:
        return Attempt(None, str(exc), url)
    except httpcore.TimeoutException as exc:
        if time.monotonic() < deadline:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:500], url)
        limit = settings.webhook_timeout_seconds
        return Attempt(None, f"no answer within webhook_timeout_seconds ({limit:g} s)", url)
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:500], url)
    finally:
        pool.close()
    return Attempt(status, None if 200 <= status < 300 else f"HTTP {status}", url)
