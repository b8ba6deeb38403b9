"""Load figures and webhook claims under concurrency on PostgreSQL (row locks, insert-ignore,
guarded claims): exact sums, one claim per member head. Same code path as SQLite."""

from __future__ import annotations

import threading
import uuid

import polars as pl
import pytest
from sqlalchemy import insert, select
from test_api_postgres import _database

from bss.db import init_db, make_engine, now_s, write_tx
from bss.reports.models import segment_loads
from bss.reports.service import SegmentLoads, record_loads
from bss.reports.sketch import UniqueSketch
from bss.settings import Settings
from bss.webhooks.models import webhook_deliveries
from bss.webhooks.service import WebhookSender, purge_deliveries


@pytest.fixture
def pg_engine():
    for url in _database():
        engine = make_engine(url)
        init_db(engine)
        yield engine
        engine.dispose()


def _loads(users: range) -> SegmentLoads:
    loads = SegmentLoads(day=20_000)
    loads.add(
        pl.DataFrame(
            {
                "segment_id": [1] * len(users),
                "user_kind": [1] * len(users),
                "user_key": [str(u) for u in users],
                "removed": [False] * len(users),
            },
            schema={
                "segment_id": pl.Int64,
                "user_kind": pl.UInt8,
                "user_key": pl.String,
                "removed": pl.Boolean,
            },
        )
    )
    return loads


def test_concurrent_sources_add_up_exactly(pg_engine):
    def writer(t: int) -> None:
        for s in range(5):
            start = (t * 5 + s) * 100
            with write_tx(pg_engine) as conn:
                record_loads(conn, _loads(range(start, start + 100)), source=f"job:{t}-{s}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pg_engine.connect() as conn:
        row = conn.execute(select(segment_loads)).mappings().one()
    assert row["loads"] == 4000
    assert UniqueSketch.from_bytes(row["uniques"]).count() == 4000


def test_senders_claim_one_head_per_member(pg_engine, tmp_path):
    now = now_s()
    with write_tx(pg_engine) as conn:
        for member_id in (1, 1, 2):
            conn.execute(
                insert(webhook_deliveries).values(
                    delivery_id=str(uuid.uuid4()),
                    member_id=member_id,
                    event="e",
                    body="{}",
                    state="pending",
                    attempts=0,
                    created_on=now,
                    next_attempt_ms=0,
                )
            )
    settings = Settings(data_dir=tmp_path)
    senders = [WebhookSender(pg_engine, settings, name=f"s{i}") for i in range(4)]
    claimed: list = []
    lock = threading.Lock()

    def claim(sender: WebhookSender) -> None:
        row = sender.claim_next()
        with lock:
            claimed.append(row)

    threads = [threading.Thread(target=claim, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted((r["member_id"], r["id"]) for r in claimed if r is not None)
    assert got == [(1, 1), (2, 3)]  # the head of each member, once; member 1's second waits


def test_retention_keeps_pending_deliveries(pg_engine):
    with write_tx(pg_engine) as conn:
        for state in ("pending", "delivered", "failed"):
            conn.execute(
                insert(webhook_deliveries).values(
                    delivery_id=str(uuid.uuid4()),
                    member_id=1,
                    event="e",
                    body="{}",
                    state=state,
                    attempts=0,
                    created_on=1,
                    next_attempt_ms=0,
                )
            )
    assert purge_deliveries(pg_engine, now_s()) == 2
    with pg_engine.connect() as conn:
        assert conn.execute(select(webhook_deliveries.c.state)).scalars().all() == ["pending"]
