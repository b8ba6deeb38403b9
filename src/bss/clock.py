"""The one clock: UTC seconds since the epoch.

Tables store whole seconds (`now_s`); leases, rate windows and backoffs that need finer
steps use milliseconds of the same clock (`now_ms`). Code that needs the time asks here,
so a test can set the time (`use(ManualClock(...))`) and move it (`advance`) instead of
sleeping. The clock is the process's: `use` swaps it for every thread until it exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar


class Clock(Protocol):
    def now(self) -> float:
        """UTC seconds since the epoch."""


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        with self._lock:
            self._now = when


_clock: Clock = SystemClock()
C = TypeVar("C", bound=Clock)


def now() -> float:
    return _clock.now()


def now_s() -> int:
    """Whole seconds (what every table stores)."""
    return int(_clock.now())


def now_ms() -> int:
    return int(_clock.now() * 1000)


@contextmanager
def use(clock: C) -> Iterator[C]:
    """Make `clock` the process's clock until the block exits."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous
