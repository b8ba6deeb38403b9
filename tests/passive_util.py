"""Helpers for testing passive upload against the real pipeline (used by tests/test_passive_*).

`Pipeline` is a complete embedded service in a temporary data dir: the database with a
member and a segment, the real JobService, real workers processing jobs in threads, and
factories for scanners. `MotoServer` is moto's standalone S3 server on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bss.passive.folder import FolderBackend
from bss.passive.scanner import PassiveScanner
from bss.passive.storage import PassiveBackend

USER_ID = 1234567890123456789


class Pipeline:
    """The real service, embedded: database, JobService and worker threads."""

    def __init__(self, data_dir: Path, *, workers: int = 1, **settings: Any) -> None:
        from bss.accounts.service import create_member
        from bss.db import init_db, make_engine
        from bss.jobs.service import JobService
        from bss.jobs.worker import StoreHandle, Worker
        from bss.segments.service import create_segment
        from bss.settings import Settings

        defaults: dict[str, Any] = dict(
            data_dir=data_dir,
            passive_min_age_seconds=0,
            passive_scan_seconds=1,
            worker_poll_seconds=0.05,
            passive_poll_seconds=0.1,
            passive_max_inflight_per_member=100,
        )
        defaults.update(settings)
        self.settings = Settings(**defaults)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.settings.resolved_database_url)
        init_db(self.engine)
        self.service = JobService(self.engine, self.settings)
        self.members: dict[int, int] = {}  # member id -> its segment id
        self._create_member = create_member
        self._create_segment = create_segment
        self.stop = threading.Event()
        self.stores = StoreHandle(self.settings.resolved_store_url)
        self.threads = [
            threading.Thread(
                target=Worker(
                    self.service, self.stores, self.stop, name=f"test-worker-{i}"
                ).run_forever,
                daemon=True,
            )
            for i in range(workers)
        ]
        for t in self.threads:
            t.start()

    def add_member(self, member_id: int) -> int:
        self._create_member(self.engine, {"id": member_id, "name": f"member {member_id}"})
        row = self._create_segment(self.engine, member_id, {"code": f"seg-{member_id}"})
        self.members[member_id] = int(row["id"])
        return self.members[member_id]

    def good_file(self, member_id: int, users: int = 3) -> bytes:
        """A legacy-format file adding `users` users to the member's segment."""
        seg = self.members[member_id]
        return "".join(f"{USER_ID + i},{seg}:0\n" for i in range(users)).encode()

    def scanner(
        self, backends: list[PassiveBackend] | None = None, **kwargs: Any
    ) -> PassiveScanner:
        if backends is None:
            backends = [FolderBackend(Path(self.settings.data_dir) / "passive")]
        kwargs.setdefault("retry_seconds", 0.05)
        return PassiveScanner(self.settings, self.service, backends=backends, **kwargs)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.stores.close()
        self.engine.dispose()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's standalone S3-protocol server on 127.0.0.1 (a real HTTP server)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self._server.stop()
