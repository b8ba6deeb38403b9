"""The one clock (bss.clock): rate windows and leases follow a clock a test moves, no sleep."""

from __future__ import annotations

from pathlib import Path

from bss import clock
from bss.clock import ManualClock
from bss.db import init_db, make_engine, now_s
from bss.leases import acquire
from bss.ratelimit import DatabaseRateLimiter


def test_the_clock_is_the_processes_until_the_block_exits() -> None:
    with clock.use(ManualClock(1_800_000_000.25)) as manual:
        assert (clock.now_s(), clock.now_ms(), now_s()) == (
            1_800_000_000,
            1_800_000_000_250,
            1_800_000_000,
        )
        manual.advance(1.5)
        assert clock.now_ms() == 1_800_000_001_750
    assert abs(clock.now_s() - 1_800_000_000) > 1000  # the system clock again


def test_a_rate_window_restarts_when_the_clock_passes_its_end(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    limiter = DatabaseRateLimiter(db)
    with clock.use(ManualClock(1_800_000_000)) as manual:
        assert [limiter.hit("k", 2, 60).allowed for _ in range(3)] == [True, True, False]
        manual.advance(59.9)
        assert limiter.hit("k", 2, 60).allowed is False
        manual.advance(0.2)
        assert limiter.hit("k", 2, 60).allowed is True
        assert limiter.purge() == 0
        manual.advance(61)
        assert limiter.purge() == 1
    db.dispose()


def test_a_lease_lapses_when_the_clock_passes_its_ttl(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    with clock.use(ManualClock(1_800_000_000)) as manual:
        assert acquire(db, "sweeper", "a", 10) is True
        assert acquire(db, "sweeper", "b", 10) is False
        manual.advance(9.9)
        assert acquire(db, "sweeper", "b", 10) is False
        manual.advance(0.2)
        assert acquire(db, "sweeper", "b", 10) is True
        assert acquire(db, "sweeper", "a", 10) is False
    db.dispose()
