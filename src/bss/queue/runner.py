"""The loop every queue's consumer runs, and the one heartbeat that keeps leases alive."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from bss.queue.failures import backoff

log = logging.getLogger("bss.queue")

#: Waits after the loop itself failed (the database down, ...): 1 s doubling to 30 s.
LOOP_RETRY_FIRST_SECONDS = 1.0
LOOP_RETRY_MAX_SECONDS = 30.0


class Runner:
    """Calls `step()` until `stop` is set: again at once while it finds work (True), after
    `poll_seconds` when it found none, and after a bounded, growing wait when it raised
    (what it raises is the infrastructure's trouble: a step handles its work's own)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], bool],
        stop: threading.Event,
        *,
        poll_seconds: float,
    ) -> None:
        self.name = name
        self.step = step
        self.stop = stop
        self.poll_seconds = poll_seconds

    def run_forever(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                worked = self.step()
            except Exception:
                failures += 1
                wait = backoff(failures, first=LOOP_RETRY_FIRST_SECONDS, cap=LOOP_RETRY_MAX_SECONDS)
                log.exception(
                    "queue loop failed; retrying", extra={"runner": self.name, "retry_in": wait}
                )
                self.stop.wait(wait)
                continue
            failures = 0
            if not worked:
                self.stop.wait(self.poll_seconds)


class Heartbeat:
    """Renews a lease every `interval` seconds on a thread of its own while work runs.

    `renew()` answers whether the lease is still held; once it says no, `lost` is set and
    the beat ends. A renewal that raises (the database briefly unreachable) is tried again
    at the next beat: the lease outlasts a few missed beats."""

    def __init__(self, name: str, renew: Callable[[], bool], interval: float) -> None:
        self.name = name
        self.renew = renew
        self.interval = interval
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(self.interval):
            try:
                held = self.renew()
            except Exception:
                log.warning("lease renewal failed", extra={"lease": self.name}, exc_info=True)
                continue
            if not held:
                self.lost.set()
                return

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
