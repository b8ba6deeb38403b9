"""Erasure of a member (DELETE /member): its memberships in every region, jobs, kept files,
error reports, load figures and report requests go; an audit record stays. A member created
again with the same id, and a segment created with a freed id, start empty everywhere.

All real: `bss serve` with two store regions (the local one LMDB, the other LMDB or a
redis-server started here), its SQLite database read directly for what the API no longer
shows. No timed assertions: waits poll with a generous timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cluster_util import RedisServer, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy
from sqlalchemy import func, select

from bss.accounts import service as accounts
from bss.db import init_db, make_engine, now_s
from bss.errors import BssError
from bss.files import open_files
from bss.identity.links import link_batch
from bss.jobs.models import jobs
from bss.lifecycle.erasure import erase_member, list_erasures
from bss.lifecycle.models import member_erasures
from bss.reports.models import reports, segment_load_sources, segment_loads
from bss.segments import service as segments
from bss.store import APPLY_SCHEMA, seqs
from bss.store.keyvalue import LmdbStore
from bss.store.regions import region_writes

MEMBER = 601
SEG_A, SEG_B = 9101, 9102


def _until(check: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _lookups(api: Api, users: list[int], **params: Any) -> list[list[int]]:
    body = api.ok(
        "POST",
        "/user-segments",
        params=params,
        json={"users": [{"uid": str(uid)} for uid in users]},
    )
    return [sorted(s["id"] for s in answer["segments"]) for answer in body["users"]]


def _counts(api: Api, **params: Any) -> dict[int, int | None]:
    body = api.ok("GET", "/segment", params={"member_id": MEMBER, **params})
    return {s["id"]: s["member_count"] for s in body["segments"]}


@pytest.fixture
def eu_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path)
    yield redis
    redis.stop()


@pytest.fixture(params=["lmdb", "redis"])
def eu_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return f"lmdb://{tmp_path / 'eu.lmdb'}"
    if needs_redis.args[0]:
        pytest.skip(needs_redis.kwargs["reason"])
    eu = request.getfixturevalue("eu_redis")
    eu.start()
    return eu.url


def test_erased_member_leaves_nothing_and_starts_empty_in_every_region(
    bss_server, tmp_path: Path, eu_url: str
) -> None:
    srv = bss_server(
        store_regions=f"us=lmdb://{tmp_path / 'us.lmdb'};eu={eu_url}",
        local_region="us",
        region_retry_max_seconds=1,
        workers=1,
    )
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    api.config(MEMBER, num_error_log_lines=5)
    assert api.segment(MEMBER, "a", id=SEG_A)["id"] == SEG_A
    assert api.segment(MEMBER, "b", id=SEG_B)["id"] == SEG_B
    users = list(range(3000, 3060))
    lines = [f"{uid},{SEG_A}:0;{SEG_B}:0" for uid in users[:40]]
    lines += [f"{uid},{SEG_B}:0" for uid in users[40:]]
    lines.append("not a line")  # an error report with a raw line in it
    job = api.run(MEMBER, legacy(lines))
    assert job["phase"] == "completed" and job["num_valid"] == 100, job
    rt = [{"user_id": str(users[59]), "seg_block": [{"seg_id": SEG_A}]}]
    assert api.ok("POST", "/rt-segment", params={"member_id": MEMBER}, json={"rt_segment": rt})
    report = api.ok(
        "POST",
        "/report",
        params={"member_id": MEMBER},
        json={"report": {"report_type": "segment_load", "columns": ["segment_id"]}},
    )
    assert report["report_id"]
    _until(lambda: api.job(MEMBER, job["job_id"])["regions"]["eu"] == "applied", "eu: the job")
    before = [[SEG_A, SEG_B]] * 40 + [[SEG_B]] * 19 + [[SEG_A, SEG_B]]
    assert _lookups(api, users) == before
    _until(lambda: _lookups(api, users, region="eu") == before, "eu: the real-time post")

    db = make_engine(f"sqlite:///{srv.data_dir / 'bss.db'}")
    with db.connect() as conn:
        kept = conn.execute(
            select(jobs.c.file_path, jobs.c.report_path).where(jobs.c.member_id == MEMBER)
        ).one()
    assert Path(kept.file_path).exists() and Path(kept.report_path).exists()

    api.ok("DELETE", "/member", params={"id": MEMBER})

    assert api.get("/member", id=MEMBER)["error_id"] == "NOTFOUND"
    assert not Path(kept.file_path).exists() and not Path(kept.report_path).exists()
    with db.connect() as conn:
        assert conn.execute(select(func.count()).where(jobs.c.member_id == MEMBER)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(segment_loads)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(segment_load_sources)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(reports)).scalar() == 0
        audit = conn.execute(select(member_erasures)).mappings().one()
    assert (audit["member_id"], audit["requested_by"], audit["jobs_erased"]) == (
        MEMBER,
        ADMIN_USER,
        1,
    )
    assert sorted(json.loads(audit["segment_ids"])) == [SEG_A, SEG_B]
    assert audit["completed_on"] is not None and audit["store_seq"] is not None
    assert json.loads(audit["files"]) == []
    # Nothing of it is readable in the local region at once, nor in eu once caught up.
    assert _lookups(api, users) == [[]] * 60
    _until(lambda: _lookups(api, users, region="eu") == [[]] * 60, "eu: the erasure")

    # The same member id and the freed segment ids again: empty in every region.
    api.member(MEMBER)
    assert api.segment(MEMBER, "a again", id=SEG_A)["id"] == SEG_A
    assert api.segment(MEMBER, "b again", id=SEG_B)["id"] == SEG_B
    assert _counts(api) == _counts(api, region="eu") == {SEG_A: 0, SEG_B: 0}
    assert api.ok("GET", "/batch-segment", params={"member_id": MEMBER}).get(
        "batch_segment_upload_job"
    ) in (None, [])
    assert _lookups(api, users) == [[]] * 60
    # New writes to the reused ids apply as usual, in both regions.
    again = api.run(MEMBER, legacy([f"{users[0]},{SEG_A}:0"]))
    assert again["phase"] == "completed" and again["num_valid"] == 1, again
    after = [[SEG_A]] + [[]] * 59
    assert _lookups(api, users) == after
    _until(lambda: _lookups(api, users, region="eu") == after, "eu: the new job")
    assert _counts(api) == _counts(api, region="eu") == {SEG_A: 1, SEG_B: 0}


class _StoreDown:
    """A store whose deletions fail, as a store outage would make them."""

    def delete_segment(self, segment_id: int, seq: int) -> None:
        raise OSError("the store is down")


def _apply(store: LmdbStore, db: Any, pairs: list[tuple[str, int]]) -> None:
    first = seqs.reserve(db, len(pairs))
    now = now_s()
    store.apply(
        pa.table(
            {
                "user_kind": [0] * len(pairs),
                "user_key": [user for user, _ in pairs],
                "segment_id": [seg for _, seg in pairs],
                "value": [None] * len(pairs),
                "timestamp": [now] * len(pairs),
                "expires_at": [now + 86400] * len(pairs),
                "removed": [False] * len(pairs),
                "seq": list(range(first, first + len(pairs))),
            },
            schema=APPLY_SCHEMA,
        )
    )


def test_an_interrupted_erasure_is_finished_by_the_next_delete(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    files = open_files(f"file://{tmp_path}", scratch=tmp_path / "scratch")
    store = LmdbStore(tmp_path / "store")
    down: Any = _StoreDown()
    try:
        accounts.create_member(db, {"id": 7})
        seg = segments.create_segment(db, 7, {"code": "x", "id": 55})["id"]
        other = segments.create_segment(db, 7, {"code": "y"})["id"]
        _apply(store, db, [("u1", seg), ("u2", seg), ("u1", other)])
        store.apply_links(
            link_batch(
                7,
                [((0, "u1"), (0, "u2"), False)],
                asserted_at=now_s(),
                ttl_days=1,
                first_seq=seqs.reserve(db, 1),
            )
        )
        assert len(store.top_links([(0, "u1")], [7], now_s(), 10)[0]) == 1
        assert [m.segment_id for m in store.user_segments(0, "u1", now_s())] == sorted([seg, other])

        with pytest.raises(OSError, match="the store is down"):
            erase_member(db, 7, down, ["eu"], files, requested_by="ops")
        # The rows are gone already; the store work is owed and the audit row says so.
        assert not accounts.member_exists(db, 7)
        (pending,) = list_erasures(db, 7)
        assert pending["completed_on"] is None and pending["segments_erased"] == 2
        assert len(store.user_segments(0, "u1", now_s())) == 2

        done = erase_member(db, 7, store, ["eu"], files)
        assert done["completed_on"] is not None and done["requested_by"] == "ops"
        assert store.user_segments(0, "u1", now_s()) == []
        assert store.user_segments(0, "u2", now_s()) == []
        assert store.segment_member_counts(now_s()) == {}
        assert store.top_links([(0, "u1")], [7], now_s(), 10) == [[]]
        # Only one marker seq, owed once per segment to the other region.
        with db.connect() as conn:
            owed = conn.execute(
                select(region_writes.c.segment_id, region_writes.c.delete_seq)
            ).all()
        assert sorted(s for s, _ in owed) == sorted([seg, other])
        assert len({q for _, q in owed}) == 1
        # Nothing left to finish: a third DELETE is a plain NOTFOUND.
        with pytest.raises(BssError) as err:
            erase_member(db, 7, store, ["eu"], files)
        assert err.value.error_id == "NOTFOUND"

        # Re-created with the same id and segment id: empty, and new writes apply.
        accounts.create_member(db, {"id": 7})
        assert segments.create_segment(db, 7, {"code": "x", "id": 55})["id"] == seg
        assert store.user_segments(0, "u1", now_s()) == []
        _apply(store, db, [("u2", seg)])
        assert [m.segment_id for m in store.user_segments(0, "u2", now_s())] == [seg]
        assert store.user_segments(0, "u1", now_s()) == []
    finally:
        store.close()
