"""Real Redis for the tests: `RedisServer` (one redis-server process on loopback) and
`RedisClusterProcs` (3 masters + 3 replicas joined by `redis-cli --cluster create`); the
`stores` fixture gives fresh stores of every engine (LMDB, one Redis, a Redis Cluster).

Every process runs in its own temporary directory on a free port, without persistence
unless asked (`persistent=True`: an append-only file synced at every write, so a stop and a
start keep the data), and is killed when the test module ends.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bss.store import MembershipStore, open_store

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server / redis-cli not installed"
)
#: Every membership store engine; the `stores` fixture runs a test once per engine.
ENGINES = ["lmdb", "redis", "redis-cluster"]


def free_port() -> int:
    """A free port whose +10000 cluster bus port is free too."""
    while True:
        with contextlib.closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 >= 65536:
            continue
        with contextlib.closing(socket.socket()) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not come up")


class RedisServer:
    """One redis-server process; `cluster=True` starts it in cluster mode, `persistent=True`
    keeps its data across a stop and a start."""

    def __init__(
        self,
        workdir: Path,
        *,
        cluster: bool = False,
        persistent: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.addr}/0"

    def start(self) -> RedisServer:
        args = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--protected-mode", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / "nodes.conf"),
                # Short, so that a killed master's replica is promoted within seconds.
                "--cluster-node-timeout", "1500",
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, self.dir / "redis.log")
        return self

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [str(REDIS_CLI), "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, so that a persistent server closes its file; SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


class RedisClusterProcs:
    """3 masters + 3 replicas on loopback, created with `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir, cluster=True) for _ in range(masters * 2)]
        self.masters = masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.addr for n in self.nodes[: self.masters])

    def start(self) -> RedisClusterProcs:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                str(REDIS_CLI),
                "--cluster",
                "create",
                *(n.addr for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],  # fmt: skip
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok and every live replica is in sync with
        its master (writes are only acknowledged once a replica has them)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            try:
                if all("cluster_state:ok" in n.cli("cluster", "info") for n in live) and all(
                    "role:master" in info or "master_link_status:up" in info
                    for info in (n.cli("info", "replication") for n in live)
                ):
                    return
            except subprocess.SubprocessError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def master_of(self, key: str) -> RedisServer:
        """The node currently serving `key`'s slot as master."""
        slot = int(self.nodes[0].cli("cluster", "keyslot", key).strip())
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            if "role:master" not in node.cli("info", "replication"):
                continue
            for line in node.cli("cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for part in fields[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise RuntimeError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --- fixtures: one store per engine ---------------------------------------------------------


@pytest.fixture(scope="module", name="redis_single")
def redis_single_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


class Stores:
    """Fresh, empty stores of one engine (the Redis ones are flushed between uses).

    A test module gets the `stores` fixture with
    `from cluster_util import redis_cluster_fixture, redis_single_fixture, stores_fixture`."""

    def __init__(self, engine: str, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.engine = engine
        self.request = request
        self.tmp = tmp
        self.n = 0

    def fresh(self) -> MembershipStore:
        self.n += 1
        if self.engine == "lmdb":
            return open_store(f"lmdb://{self.tmp / f'store-{self.n}.lmdb'}")
        if self.engine == "redis":
            server: RedisServer = self.request.getfixturevalue("redis_single")
            server.cli("flushall")
            return open_store(f"redis://{server.addr}/0")
        cluster: RedisClusterProcs = self.request.getfixturevalue("redis_cluster")
        store = open_store(cluster.url)
        for master in store._masters():  # type: ignore[attr-defined]
            master.flushall()
        return store


@pytest.fixture(params=ENGINES, name="stores")
def stores_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    if request.param != "lmdb" and needs_redis.args[0]:
        pytest.skip("redis-server not installed")
    return Stores(request.param, request, tmp_path)


@contextlib.contextmanager
def opened(stores: Stores) -> Iterator[MembershipStore]:
    store = stores.fresh()
    try:
        yield store
    finally:
        store.close()
