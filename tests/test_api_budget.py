"""The request path's shortcuts: hits reserved from the shared rate counter (the limit holds
across processes), tokens answered from memory for at most a second, one thread call at a
time per key."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from bss.accounts import service as accounts
from bss.api.deps import SingleFlight
from bss.db import init_db, make_engine
from bss.errors import BssError
from bss.ratelimit import DatabaseRateLimiter, ReservedBudget
from bss.settings import Settings


@pytest.fixture()
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


def _allowed(budget: ReservedBudget, key: str, limit: int) -> bool:
    verdict, due = budget.take(key, limit, 60)
    if verdict is None:
        verdict = budget.reserve(key, limit, 60)
    elif due:
        budget.reserve(key, limit, 60, use=False)
    assert verdict is not None
    return verdict.allowed


@pytest.mark.parametrize("limit", [1, 5, 40, 1000, 5000])
def test_reserved_hits_never_let_more_than_the_limit_through(db, limit: int) -> None:
    # three "processes" (budgets) on one counter, taking turns unevenly
    budgets = [ReservedBudget(DatabaseRateLimiter(db)) for _ in range(3)]
    allowed = 0
    for i in range(limit * 2 + 50):
        allowed += _allowed(budgets[(i * 7 // 3) % 3], "member:1", limit)
    assert allowed <= limit
    # what one process held back unused is bounded (1/16 of what was free, at most 2 x 64)
    assert allowed >= limit - 2 * max(limit // 16, 1) - 2 * 2 * ReservedBudget.MAX_RESERVATION


def test_one_process_lets_exactly_the_limit_through(db) -> None:
    budget = ReservedBudget(DatabaseRateLimiter(db))
    results = [_allowed(budget, "member:2", 300) for _ in range(320)]
    assert results == [True] * 300 + [False] * 20
    with db.connect() as conn:  # every hit let through was counted in the database first
        (hits,) = conn.exec_driver_sql(
            "SELECT hits FROM rate_counters WHERE key = 'member:2'"
        ).one()
    assert hits >= 300


def test_threads_share_a_budget_without_exceeding_it(db) -> None:
    limiter = DatabaseRateLimiter(db)
    budgets = [ReservedBudget(limiter), ReservedBudget(limiter)]
    allowed: list[bool] = []

    def run(budget: ReservedBudget) -> None:
        for _ in range(300):
            allowed.append(_allowed(budget, "member:3", 500))

    threads = [threading.Thread(target=run, args=(b,)) for b in budgets for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < sum(allowed) <= 500


def test_a_quiet_key_writes_once_per_request(db) -> None:
    budget = ReservedBudget(DatabaseRateLimiter(db))
    assert _allowed(budget, "member:4", 1000)
    verdict, _ = budget.take("member:4", 1000, 60)
    assert verdict is None  # nothing was reserved beyond the request itself


def test_an_exhausted_key_is_refused_with_retry_after(db) -> None:
    budget = ReservedBudget(DatabaseRateLimiter(db))
    assert _allowed(budget, "member:5", 1)
    verdict = budget.reserve("member:5", 1, 60)
    assert verdict is not None and not verdict.allowed and 1 <= verdict.retry_after <= 60
    again, _ = budget.take("member:5", 1, 60)  # refused from memory now
    assert again is not None and not again.allowed


def _login(db, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    accounts.ensure_admin(db, settings)
    return accounts.login(
        db,
        settings,
        "admin",
        "admin-password-1",
        limiter=DatabaseRateLimiter(db),
        client="127.0.0.1",
    )


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", admin_username="admin", admin_password="admin-password-1"
    )


def test_a_token_is_answered_from_memory_for_at_most_the_cache_time(db, settings) -> None:
    token = _login(db, settings)
    found = accounts.principal_for_token(db, token)
    assert accounts.cached_principal(db, token)[0] == found
    # revoked behind this process's back (another process, the CLI): refused within the bound
    with db.begin() as conn:
        conn.exec_driver_sql("DELETE FROM tokens")
    deadline = time.monotonic() + accounts.PRINCIPAL_CACHE_SECONDS + 0.5
    while accounts.cached_principal(db, token)[0] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(BssError) as err:
        accounts.principal_for_token(db, token)
    assert err.value.error_id == "NOAUTH"


def test_logout_in_this_process_is_seen_at_once(db, settings) -> None:
    token = _login(db, settings)
    accounts.principal_for_token(db, token)
    accounts.logout(db, token)
    assert accounts.cached_principal(db, token) == (None, False)


def test_an_expired_cached_token_is_refused(db, settings) -> None:
    token = _login(db, settings)
    found = accounts.principal_for_token(db, token)
    key = (id(db), token)
    entry = accounts._principals[key]
    accounts._principals[key] = (found, 0, entry[2])  # expired in 1970, still fresh in memory
    with pytest.raises(BssError) as err:
        accounts.cached_principal(db, token)
    assert err.value.error_id == "NOAUTH"


def test_single_flight_runs_one_call_per_key_and_never_spins() -> None:
    calls: list[int] = []

    def slow(n: int) -> int:
        calls.append(n)
        time.sleep(0.05)
        return n

    async def main() -> None:
        flights = SingleFlight()
        got = await asyncio.gather(*(flights.run("k", slow, i) for i in range(20)))
        assert calls == [0] and got == [0] * 20
        # a finished call whose done-callback has not run yet is not awaited again
        first = flights.start("j", slow, 1)
        await first
        second = flights.start("j", slow, 2)
        assert second is not first
        assert await second == 2

    asyncio.run(asyncio.wait_for(main(), 10))
