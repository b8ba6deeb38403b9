"""Workers: claim a queued job and run it (bss.jobs.run), over and over.

`StoreHandle` opens the membership stores a process writes jobs to, once per process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

from bss.jobs.run import JobRun, LeaseLost, Stopping
from bss.jobs.service import JobService
from bss.lifecycle.floors import SegmentFloors
from bss.queue import Runner
from bss.settings import Settings
from bss.store import MembershipStore, open_store

log = logging.getLogger("bss.worker")


def jobs_wrote_memberships(settings: Settings) -> Callable[[], bool]:
    """Asks the job database whether a completed job wrote memberships to the store."""

    def ask() -> bool:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from bss.db import make_engine
        from bss.jobs.models import jobs

        engine = make_engine(settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                query = select(jobs.c.id).where(jobs.c.phase == "completed", jobs.c.num_valid > 0)
                return conn.execute(query.limit(1)).first() is not None
        except SQLAlchemyError:
            return False  # no job database yet (or not reachable: its own check says so)
        finally:
            engine.dispose()

    return ask


class StoreHandle:
    """Opens the membership stores on first use, once per process: the one store, or with
    store regions (BSS_STORE_REGIONS) one per region. `get()` is the store this process reads
    and completes jobs in (the local region's); `get(name)` a region's."""

    def __init__(
        self,
        url: str,
        *,
        wait_replicas: int | Literal["attached"] | None = None,
        regions: Mapping[str, str] | None = None,
        local_region: str | None = None,
        held_data: Callable[[], bool] | None = None,
        floors: SegmentFloors | None = None,
    ) -> None:
        self.url = url
        #: The replace floors every read applies (bss.lifecycle.floors), per region.
        self.floors = floors
        self.wait_replicas = wait_replicas
        #: Whether the job database says the store held data (asked if its file is gone).
        self.held_data = held_data
        #: Region name -> store URL; empty without store regions.
        self.regions: dict[str, str] = dict(regions or {})
        self.local_region = local_region
        self._stores: dict[str | None, MembershipStore] = {}
        # One lock per store: a region that is down (a connect timing out) never holds up
        # the others, least of all the local one.
        self._locks: dict[str | None, threading.Lock] = {
            name: threading.Lock() for name in (None, *self.regions)
        }

    @classmethod
    def for_settings(cls, settings: Settings) -> StoreHandle:
        return cls(
            settings.resolved_store_url,
            wait_replicas=settings.store_wait_replicas,
            regions=settings.regions,
            local_region=settings.local_region,
            held_data=None if settings.store_allow_empty else jobs_wrote_memberships(settings),
            floors=SegmentFloors.for_url(settings.resolved_database_url),
        )

    @property
    def remote_regions(self) -> list[str]:
        """The regions other than the local one, which jobs are caught up in afterwards."""
        return [name for name in self.regions if name != self.local_region]

    def get(self, region: str | None = None) -> MembershipStore:
        """The local store (`region` None or the local region's name), or another region's;
        KeyError for a region that is not configured."""
        if region == self.local_region:
            region = None
        url = self.url if region is None else self.regions[region]
        with self._locks[region]:
            store = self._stores.get(region)
            if store is None:
                # Stores are thread-safe themselves (LMDB transactions serve any thread, and
                # other processes open the same environment): one instance per process.
                store = self._stores[region] = open_store(
                    url, wait_replicas=self.wait_replicas, held_data=self.held_data
                )
                if self.floors is not None:
                    store.floors = self.floors.reader(region or self.local_region)
            return store

    def close(self) -> None:
        for region, lock in self._locks.items():
            with lock:
                store = self._stores.pop(region, None)
                if store is not None:
                    store.close()


class Worker:
    def __init__(
        self,
        service: JobService,
        stores: StoreHandle,
        stop: threading.Event,
        name: str | None = None,
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.stores = stores
        self.stop = stop
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def run_forever(self) -> None:
        log.info("worker started", extra={"worker": self.name})
        Runner(
            self.name, self.run_once, self.stop, poll_seconds=self.settings.worker_poll_seconds
        ).run_forever()
        log.info("worker stopped", extra={"worker": self.name})

    def run_once(self) -> bool:
        row = self.service.claim_next(self.name)
        if row is None:
            return False
        self.process(row)
        return True

    def process(self, row: Any) -> None:
        JobRun(self, row).execute()


__all__ = ["LeaseLost", "Stopping", "StoreHandle", "Worker", "jobs_wrote_memberships"]
