"""Shared fixtures: a REAL `bss serve` process on a free loopback port, driven over HTTP.

Markers by layer (pyproject lists them; `pytest -m "not slow"` is the quick run):
- `process`: the test starts real processes: `bss serve`/`worker`, redis-server, an S3
  server, a browser. Given automatically to tests using a fixture or a module that starts
  them, or whose code or fixtures' code does (PROCESS_FIXTURES, PROCESS_NAMES,
  PROCESS_CALLS); mark others `@pytest.mark.process` yourself.
- `browser`, `postgres`, `cluster`: what else the test needs, given the same way.
- `slow`: every `process` test, and long property runs marked by hand.

`bss_server(**env)` starts one with a temp data dir and short limits given as BSS_* settings
(keyword names are the Settings field names, e.g. `upload_url_ttl_seconds=1`); `server` is
a default one shared by a test module. `Api` wraps httpx with the envelope and a token.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bss.client import BssClient

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-password-1"
BSS = Path(sys.executable).with_name("bss")


#: Fixtures that start processes (directly or through the fixtures they use).
PROCESS_FIXTURES = frozenset(
    {"server", "bss_server", "redis_single", "redis_cluster", "moto", "s3_server"}
)
#: Names whose presence in a test module means its tests start processes.
PROCESS_NAMES = frozenset({"ServerProc", "BSS", "MotoServer", "RedisServer", "RedisClusterProcs"})
#: Module names (without `tests/test_`) whose tests need more than processes.
NEEDS = {"browser": ("dashboard_browser",), "cluster": ("cluster_topology",)}


#: Source text by which a test or one of its fixtures starts a process itself.
PROCESS_CALLS = ("ServerProc(", "subprocess.", "Popen(", "sys.executable", "MotoServer(")


@functools.cache
def _starts_processes(function: Callable[..., Any]) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(call in source for call in PROCESS_CALLS)


def _uses_processes(item: pytest.Item) -> bool:
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        functions += [d.func for d in defs]
    return any(f is not None and _starts_processes(f) for f in functions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = getattr(item, "module", None)
        name = getattr(module, "__name__", "").removeprefix("test_")
        engine = getattr(getattr(item, "callspec", None), "params", {}).get("stores", "lmdb")
        process = (
            bool(fixtures & PROCESS_FIXTURES)
            or any(hasattr(module, n) for n in PROCESS_NAMES)
            or engine != "lmdb"
            or _uses_processes(item)
        )
        if process:
            item.add_marker(pytest.mark.process)
        for marker, modules in NEEDS.items():
            if name in modules:
                item.add_marker(getattr(pytest.mark, marker))
        if "postgres" in name or fixtures & {"pg_url", "fresh_pg_url", "pg_engine"}:
            item.add_marker(pytest.mark.postgres)
        if process or item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """One `bss serve` subprocess."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, Any],
        port: int | None = None,
        *,
        command: tuple[str, ...] = ("serve",),
    ) -> None:
        self.data_dir = data_dir
        self.command = command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "BSS_ADMIN_USERNAME": ADMIN_USER,
            "BSS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "BSS_REQUESTS_PER_MINUTE": "100000",
            "BSS_LOGINS_PER_WINDOW": "1000",
            "BSS_WORKER_POLL_SECONDS": "0.1",
            **{f"BSS_{k.upper()}": str(v) for k, v in env.items()},
        }
        self.log_path = data_dir.parent / f"{data_dir.name}-{command[0]}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        args = [str(BSS), *self.command, "--data-dir", str(self.data_dir)]
        if self.command[0] == "serve":
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if self.command[0] != "serve":  # a worker has no HTTP to wait for
            return self
        deadline = time.monotonic() + 90  # a loaded machine takes long to import everything
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bss serve exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bss serve did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Api:
    """The shipped `BssClient` for setting things up, plus the envelope at any status for
    asserting refusals: `api.get(...)` returns the `response` object with `_http`, its status."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None) -> None:
        self.url = url
        self.client = BssClient(url, timeout=60)
        self.http = self.client.http
        if username is not None:
            self.login(username, password or "")

    @property
    def token(self) -> str | None:
        return self.client.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.client.token = value

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Any answer, a refusal included; an accepted login's token is used from then on."""
        body = self.call(
            "POST", "/auth", json={"auth": {"username": username, "password": password}}
        )
        if body["status"] == "OK":
            self.token = body["token"]
        return body

    def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = self.token
        return self.http.request(method, path, headers=headers, **kw)

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self.raw(method, path, **kw)
        body = resp.json()["response"]
        body["_http"] = resp.status_code
        return body

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", path, params=params)

    def ok(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body = self.call(method, path, **kw)
        assert body["status"] == "OK", body
        return body

    # --- set-up, through the shipped client --------------------------------------------------

    def member(self, member_id: int, name: str = "") -> dict[str, Any]:
        return self.client.create_member({"id": member_id, "name": name or f"m{member_id}"})

    def user(
        self,
        username: str,
        member_id: int | None,
        user_type: str = "member",
        password: str = "password-123",
    ) -> dict:
        return self.client.create_user(
            {
                "username": username,
                "password": password,
                "user_type": user_type,
                "member_id": member_id,
            }
        )

    def segment(self, member_id: int, code: str, **fields: Any) -> dict[str, Any]:
        return self.client.create_segment(member_id, {"code": code, **fields})

    def config(self, member_id: int, **fields: Any) -> dict[str, Any]:
        return self.client.set_config(member_id, fields)

    # --- jobs ---------------------------------------------------------------------------

    def new_job(self, member_id: int) -> dict[str, Any]:
        return self.client.create_job(member_id)

    def upload(
        self, job: dict[str, Any], content: Any, content_type: str = "application/octet-stream"
    ) -> dict:
        """Any bytes (the client streams files), any answer."""
        headers = {"Content-Type": content_type}
        return self.call("POST", job["upload_url"], content=content, headers=headers)

    def job(self, member_id: int, job_id: str) -> dict[str, Any]:
        return self.client.get_job(member_id, job_id)

    def wait(
        self,
        member_id: int,
        job_id: str,
        phases: tuple[str, ...] = ("completed", "error"),
        timeout: float = 120,
    ) -> dict:
        """Until the job reaches one of `phases` (the client waits for a final one only)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(member_id, job_id)
            if job["phase"] in phases:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job still {job['phase']}: {job}")
            time.sleep(0.1)

    def run(self, member_id: int, content: bytes) -> dict[str, Any]:
        job = self.new_job(member_id)
        up = self.upload(job, content)
        assert up["status"] == "OK", up
        return self.wait(member_id, job["job_id"])

    def segments_of(self, member_id: int | None = None, **user: Any) -> dict[int, Any]:
        return {s["id"]: s for s in self.client.user_segments(member_id, **user)}


@pytest.fixture
def bss_server(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """Factory: `bss_server(upload_url_ttl_seconds=1, ...)` starts a fresh server."""
    started: list[ServerProc] = []

    def start(name: str = "data", **env: Any) -> ServerProc:
        proc = ServerProc(tmp_path / name, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A default server shared by one test module."""
    proc = ServerProc(tmp_path_factory.mktemp("bss") / "data", {}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProc) -> Api:
    return Api(server.url, ADMIN_USER, ADMIN_PASSWORD)


_ids = iter(range(1000, 10**6))


@pytest.fixture
def member_id(admin: Api) -> int:
    """A fresh member on the module's server."""
    mid = next(_ids)
    admin.member(mid)
    return mid


def legacy(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()
