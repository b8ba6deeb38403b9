"""Replace-mode uploads (bss.lifecycle.replace), all real: `bss serve` processes (LMDB, a Redis
Cluster of real redis-servers, two store regions), the `bss` command, kill -9, and a
property test of floors and seqs on every store engine against a plain reference.

No timed assertions: every wait polls with a generous timeout.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from cluster_util import (
    RedisClusterProcs,
    Stores,
    needs_redis,
    redis_cluster_fixture,  # noqa: F401 (a fixture)
    redis_single_fixture,  # noqa: F401 (a fixture)
    stores_fixture,  # noqa: F401 (a fixture)
)
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, legacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bss.db import make_engine, now_s, parse_ts
from bss.formats.config import BatchSegmentConfig
from bss.lifecycle.replace import (
    REMOVAL_OVER_LIMIT,
    ReplaceState,
    apply_floors,
    passive_mode,
)
from bss.reports.models import segment_loads
from bss.segments.models import segment_floors
from bss.store import APPLY_SCHEMA, open_store
from bss.store.keyvalue import LmdbStore

MEMBER = 701
SEG_A, SEG_B, SEG_C = 9201, 9202, 9203


def _until(check: Callable[[], Any], what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _members(api: Api, users: list[int], seg: int, **params: Any) -> set[int]:
    """Which of `users` are live members of `seg` (one POST /user-segments per 1000)."""
    found: set[int] = set()
    for start in range(0, len(users), 1000):
        part = users[start : start + 1000]
        body = api.ok(
            "POST",
            "/user-segments",
            params=params,
            json={"users": [{"uid": str(uid)} for uid in part]},
        )
        for uid, answer in zip(part, body["users"], strict=True):
            if any(s["id"] == seg for s in answer["segments"]):
                found.add(uid)
    return found


def _counts(api: Api, **params: Any) -> dict[int, int]:
    body = api.ok("GET", "/segment", params={"member_id": MEMBER, **params})
    return {s["id"]: s["member_count"] for s in body["segments"]}


def _replace(api: Api, content: bytes, **params: Any) -> dict[str, Any]:
    body = api.ok(
        "POST", "/batch-segment", params={"member_id": MEMBER, "mode": "replace", **params}
    )
    job = body["batch_segment_upload_job"]
    assert job["mode"] == "replace"
    up = api.upload(job, content)
    assert up["status"] == "OK", up
    return api.wait(MEMBER, job["job_id"], timeout=600)


def _setup(api: Api) -> None:
    api.member(MEMBER)
    for code, seg in (("a", SEG_A), ("b", SEG_B), ("c", SEG_C)):
        assert api.segment(MEMBER, code, id=seg)["id"] == seg


def _loads(data_dir: Path) -> dict[int, tuple[int, int]]:
    db = make_engine(f"sqlite:///{data_dir / 'bss.db'}")
    with db.connect() as conn:
        rows = conn.execute(
            select(segment_loads.c.segment_id, segment_loads.c.loads, segment_loads.c.removals)
        ).all()
    totals: dict[int, tuple[int, int]] = {}
    for seg, loads, removals in rows:
        old = totals.get(seg, (0, 0))
        totals[seg] = (old[0] + loads, old[1] + removals)
    return totals


# --- the job: what stays, what goes, the guard, error jobs ---------------------------------


def test_replace_keeps_exactly_the_files_members_of_the_segments_it_names(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    users = list(range(5000, 5020))
    old = [f"{u},{SEG_A}:0;{SEG_B}:0;{SEG_C}:0" for u in users[:10]]
    first = api.run(MEMBER, legacy(old))
    assert first["phase"] == "completed" and first["mode"] == "append", first
    assert "replace_removed" not in first
    # A's members become users 6..15 (4 kept, 6 new, 6 gone); C is named by a removal only,
    # so it is not replaced (only its one pair is removed); B is not named: untouched.
    new = [f"{u},{SEG_A}:1440" for u in users[4:16]]
    new.append(f"{users[0]},{SEG_C}:-1")
    job = _replace(api, legacy(new))
    assert job["phase"] == "completed", job
    assert (job["mode"], job["replace_removed"], job["num_valid"]) == ("replace", 4, 13)
    assert _members(api, users, SEG_A) == set(users[4:16])
    assert _members(api, users, SEG_B) == set(users[:10])
    assert _members(api, users, SEG_C) == set(users[1:10])
    assert _counts(api) == {SEG_A: 12, SEG_B: 10, SEG_C: 9}
    # The removals are counted where users read them: the segment log and the loads report.
    log = job["segment_log_lines"].split("\n")
    assert log == ["added:", f"{SEG_A}:12", "removed:", f"{SEG_A}:4", f"{SEG_C}:1"], log
    assert _loads(srv.data_dir) == {SEG_A: (22, 4), SEG_B: (10, 0), SEG_C: (10, 1)}
    # Expirations come from the file: kept users' memberships now expire in 1440 minutes.
    seen = api.segments_of(MEMBER, uid=str(users[8]))
    lived = parse_ts(seen[SEG_A]["expiry"]) - parse_ts(seen[SEG_A]["timestamp"])
    assert lived == 1440 * 60 and seen[SEG_B]["expiry"] != seen[SEG_A]["expiry"]


def test_the_removal_guard_refuses_then_force_replaces(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    users = list(range(6000, 6010))
    api.run(MEMBER, legacy([f"{u},{SEG_A}:0" for u in users]))
    small = legacy([f"{u},{SEG_A}:0" for u in (*users[:4], 6100)])  # removes 6 of 10
    refused = _replace(api, small)
    assert (refused["phase"], refused["error_code"]) == ("error", REMOVAL_OVER_LIMIT), refused
    assert "6 of segment 9201's 10 members" in refused["error_message"]
    assert refused["replace_removed"] == 0
    # Nothing was removed; the adds it wrote stay, as any error job's do.
    assert _members(api, [*users, 6100], SEG_A) == {*users, 6100}
    # The member's own limit decides: at 0.7 the same file passes (6 of 11 removed).
    api.config(MEMBER, max_replace_removal_fraction=0.7)
    cfg = api.ok("GET", "/batch-segment-config", params={"member_id": MEMBER})
    assert cfg["batch_segment_upload_config"]["max_replace_removal_fraction"] == 0.7
    api.config(MEMBER, max_replace_removal_fraction=0.2)
    again = _replace(api, small)
    assert again["error_code"] == REMOVAL_OVER_LIMIT
    forced = _replace(api, small, force="true")
    assert forced["phase"] == "completed" and forced["replace_removed"] == 6, forced
    assert _members(api, [*users, 6100], SEG_A) == {*users[:4], 6100}
    bad = api.call("POST", "/batch-segment", params={"member_id": MEMBER, "mode": "overwrite"})
    assert (bad["_http"], bad["error_id"]) == (400, "SYNTAX"), bad
    over = api.call(
        "POST",
        "/batch-segment-config",
        params={"member_id": MEMBER},
        json={"batch_segment_upload_config": {"max_replace_removal_fraction": 1.5}},
    )
    assert (over["_http"], over["error_id"]) == (400, "SYNTAX"), over


def test_a_replace_job_that_ends_in_error_removes_nothing(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    users = list(range(7000, 7010))
    api.run(MEMBER, legacy([f"{u},{SEG_A}:0" for u in users]))
    api.config(MEMBER, num_invalid_before_error=0)
    job = _replace(api, legacy([f"{users[0]},{SEG_A}:0", "no segments here"]))
    assert (job["phase"], job["error_code"]) == ("error", "too_many_invalid_lines"), job
    corrupt = _replace(api, b"\x1f\x8b\x08\x00garbage")
    assert corrupt["phase"] == "error", corrupt
    assert _members(api, users, SEG_A) == set(users)
    assert _counts(api)[SEG_A] == 10


def test_bss_upload_replace_and_the_passive_name() -> None:
    assert passive_mode("submitted/replace.audience.txt") == ("replace", False)
    assert passive_mode("submitted/2026/replace-force.audience.gz") == ("replace", True)
    assert passive_mode("submitted/replace/audience.txt") == ("append", False)
    assert passive_mode("submitted/audience.replace.txt") == ("append", False)


def test_bss_upload_replace(bss_server, tmp_path: Path) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    api.run(MEMBER, legacy([f"{u},{SEG_A}:0" for u in range(8000, 8004)]))
    path = tmp_path / "tonight.txt"
    path.write_bytes(legacy([f"{u},{SEG_A}:0" for u in range(8002, 8006)]))

    def upload(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BSS), "upload", str(path), "--member-id", str(MEMBER), "--json", "--poll", "0.2"]
            + ["--url", srv.url, "--username", ADMIN_USER, "--password", ADMIN_PASSWORD]
            + list(flags),
            capture_output=True,
            text=True,
            timeout=300,
        )

    misuse = upload("--force")
    assert misuse.returncode == 2 and "--force only applies with --replace" in misuse.stderr
    done = upload("--replace")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["mode"], job["replace_removed"]) == ("replace", 2)
    assert _members(api, list(range(8000, 8006)), SEG_A) == set(range(8002, 8006))


def test_passive_replace_file(bss_server) -> None:
    srv = bss_server(passive_min_age_seconds=0, passive_scan_seconds=1)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    api.run(MEMBER, legacy([f"{u},{SEG_A}:0" for u in range(8100, 8104)]))
    submitted = srv.data_dir / "passive" / str(MEMBER) / "submitted"
    submitted.mkdir(parents=True)
    # 3 of 4 members go: past the guard's default 0.5, so the name says force.
    (submitted / "replace-force.nightly.txt").write_bytes(
        legacy([f"8103,{SEG_A}:0", f"8104,{SEG_A}:0"])
    )

    def passive_job() -> Any:
        body = api.ok("GET", "/batch-segment", params={"member_id": MEMBER})
        jobs = [j for j in body["batch_segment_upload_job"] if j["upload_source"] == "folder"]
        return jobs and jobs[0]["phase"] in ("completed", "error") and jobs[0]

    job = _until(passive_job, "the passive job")
    assert (job["phase"], job["mode"], job["replace_removed"]) == ("completed", "replace", 3)
    assert _members(api, list(range(8100, 8105)), SEG_A) == {8103, 8104}


def test_a_passive_link_file_named_replace_is_refused(bss_server) -> None:
    srv = bss_server(passive_min_age_seconds=0, passive_scan_seconds=1)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    submitted = srv.data_dir / "passive" / str(MEMBER) / "submitted"
    submitted.mkdir(parents=True)
    (submitted / "replace.graph.links").write_bytes(b"uid=8201,uid=8202\n")

    def passive_job() -> Any:
        body = api.ok("GET", "/batch-segment", params={"member_id": MEMBER})
        jobs = [j for j in body["batch_segment_upload_job"] if j["upload_source"] == "folder"]
        return jobs and jobs[0]["phase"] in ("completed", "error") and jobs[0]

    job = _until(passive_job, "the passive job")
    assert (job["phase"], job["error_code"]) == ("error", "replace_links"), job
    links = api.ok("GET", "/user-links", params={"member_id": MEMBER, "uid": 8201})["ids"]
    assert "uid=8202" not in links


# --- during the job: readers, real-time posts, kill -9 -------------------------------------


def _file(users: range, seg: int) -> bytes:
    return "".join(f"{u},{seg}:0\n" for u in users).encode()


OLD = range(1_000_000, 1_150_000)
NEW = range(1_100_000, 1_300_000)  # 50k users in both files


def _watch(api: Api, job_id: str, atomic_batches: bool) -> tuple[threading.Thread, dict[str, Any]]:
    """A reader thread: users in both files never leave A; old-only users stay until the
    floor is set, then never come back; with `atomic_batches` one lookup of many users sees
    all of them or none (the floor is one step for readers)."""
    both = list(range(1_100_000, 1_100_000 + 300, 3))
    old_only = list(range(1_000_000, 1_000_000 + 300, 3))
    seen: dict[str, Any] = {"rounds": 0, "gone_at": None, "errors": []}

    def run() -> None:
        while True:
            phase = api.job(MEMBER, job_id)["phase"]
            kept = _members(api, both + old_only, SEG_A)
            if not set(both) <= kept:
                seen["errors"].append(f"users in both files left: {sorted(set(both) - kept)[:5]}")
            stayed = kept & set(old_only)
            if atomic_batches and stayed not in (set(), set(old_only)):
                seen["errors"].append(f"half-replaced: {len(stayed)} of {len(old_only)} stay")
            if seen["gone_at"] is not None and stayed:
                seen["errors"].append("old members came back after the floor")
            if not stayed and seen["gone_at"] is None:
                seen["gone_at"] = seen["rounds"]
            seen["rounds"] += 1
            if phase in ("completed", "error"):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


def _reader_thread_and_real_time_add(api: Api, atomic_batches: bool) -> None:
    first = api.run(MEMBER, _file(OLD, SEG_A))
    assert first["phase"] == "completed" and first["num_valid"] == len(OLD), first
    body = api.ok(
        "POST",
        "/batch-segment",
        params={"member_id": MEMBER, "mode": "replace", "force": "true"},
    )
    job = body["batch_segment_upload_job"]
    assert api.upload(job, _file(NEW, SEG_A))["status"] == "OK"
    # Once the worker reads the file its seq base is reserved: a real-time add now is a
    # later write, kept by the floor (an old-only user and a user of neither file).
    _until(
        lambda: (
            (seen := api.job(MEMBER, job["job_id"]))["percent_complete"] > 0
            or seen["phase"] in ("processing", "completed")
        ),
        "the job to start",
    )
    reader, seen = _watch(api, job["job_id"], atomic_batches)
    rt = [{"user_id": str(u), "seg_block": [{"seg_id": SEG_A}]} for u in (1_000_001, 42)]
    assert api.ok("POST", "/rt-segment", params={"member_id": MEMBER}, json={"rt_segment": rt})
    done = api.wait(MEMBER, job["job_id"], timeout=600)
    reader.join(timeout=600)
    assert done["phase"] == "completed", done
    assert seen["errors"] == [], seen["errors"][:5]
    assert seen["rounds"] > 0
    # 100k old-only users left (the one re-added by the real-time post stays).
    assert done["replace_removed"] == len(OLD) - 50_000 - 1, done
    sample = [
        *range(999_990, 1_000_010),
        *range(1_099_990, 1_100_010),
        *range(1_299_990, 1_300_010),
    ]
    assert _members(api, [*sample, 42], SEG_A) == {
        *(u for u in sample if u in NEW),
        1_000_001,
        42,
    }
    assert _counts(api)[SEG_A] == len(NEW) + 2


def test_reader_thread_and_a_real_time_add_during_a_replace_lmdb(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    _reader_thread_and_real_time_add(api, atomic_batches=True)


@needs_redis
def test_reader_thread_and_a_real_time_add_during_a_replace_redis_cluster(
    bss_server, redis_cluster: RedisClusterProcs
) -> None:
    flushed = open_store(redis_cluster.url)
    for master in flushed._masters():  # type: ignore[attr-defined]
        master.flushall()
    flushed.close()
    srv = bss_server(store_url=redis_cluster.url)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    # The floor is one database row every read applies, not one write per master: one
    # lookup of many users (spread over every master) sees all old members or none.
    _reader_thread_and_real_time_add(api, atomic_batches=True)


def test_kill_9_mid_replace_then_replay(bss_server) -> None:
    srv = bss_server(job_lease_seconds=3)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    assert api.run(MEMBER, _file(OLD, SEG_A))["phase"] == "completed"
    body = api.ok(
        "POST", "/batch-segment", params={"member_id": MEMBER, "mode": "replace", "force": "1"}
    )
    job = body["batch_segment_upload_job"]
    assert api.upload(job, _file(NEW, SEG_A))["status"] == "OK"
    # Waits for the processing phase (a worker holds the job and its seqs), not for
    # percent_complete: progress is written at most once a second, so a fast run can reach
    # its floors (seconds at 0%) and finish unseen.
    seen = _until(
        lambda: (j := api.job(MEMBER, job["job_id"]))["phase"] == "processing" and j,
        "the job to start",
    )
    assert seen["phase"] in ("validating", "processing"), seen
    srv.kill9()
    # Old members are all there, or all gone if the floor was set just before the kill.
    srv.start()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    done = api.wait(MEMBER, job["job_id"], timeout=600)
    assert done["phase"] == "completed", done
    assert "re-running an interrupted job" in srv.log_path.read_text()
    assert done["replace_removed"] == 100_000 and done["num_valid"] == len(NEW), done
    assert _counts(api)[SEG_A] == len(NEW)
    sample = [
        *range(999_990, 1_000_010),
        *range(1_099_990, 1_100_010),
        *range(1_299_990, 1_300_010),
    ]
    assert _members(api, sample, SEG_A) == {u for u in sample if u in NEW}
    assert _loads(srv.data_dir)[SEG_A] == (len(OLD) + len(NEW), 100_000)


def test_replace_floors_are_kept_with_the_job_and_a_replay_changes_nothing(
    tmp_path: Path,
) -> None:
    """A replay that finds the floors' counts kept (the worker died after they were taken)
    sets the same floors and reports the same counts, without counting again."""
    store = LmdbStore(tmp_path / "store")
    now = now_s()
    try:
        store.apply(_batch([("old", SEG_A, 1), ("both", SEG_A, 2)], now))
        store.apply(_batch([("both", SEG_A, 10), ("new", SEG_A, 11)], now))
        kept: list[str] = []
        state = ReplaceState(before={SEG_A: 2})
        config = BatchSegmentConfig()
        for _ in range(2):
            refused = apply_floors(
                store,
                added={SEG_A: 2},
                seq_base=10,
                state=state,
                config=config,
                force=False,
                now=now,
                keep_state=lambda s: kept.append(s.dump()),
            )
            assert refused is None
            state = ReplaceState.load(kept[-1]) or state
        assert len(kept) == 1 and state.removed == {SEG_A: 1}
        assert sorted(k for _, k, _ in store.segment_members(SEG_A, now)) == ["both", "new"]
        assert store.segment_member_counts(now) == {SEG_A: 2}
        # A write of a job that started before the replace (seq below the floor) loses.
        store.apply(_batch([("late", SEG_A, 5)], now))
        assert store.user_segments(0, "late", now) == []
    finally:
        store.close()


def test_the_embedded_store_counts_and_drops_in_one_transaction(tmp_path: Path) -> None:
    """`drop_below` counts what it drops as `count_below` does (live, at or above the read
    floor) and keeps nothing when the decision says no: the guard refuses after the walk."""
    store = LmdbStore(tmp_path / "store")
    now = now_s()
    try:
        store.apply(_batch([("a", SEG_A, 1), ("b", SEG_A, 2), ("c", SEG_A, 3)], now))
        store.apply(_batch([("d", SEG_A, 4)], now, removed=True))
        store.apply(_batch([("b", SEG_A, 20), ("e", SEG_B, 5)], now))
        store.floors = lambda: {SEG_A: 2}
        assert store.count_below(SEG_A, 10, now) == 1  # c: a is below the floor, d removed
        seen: list[dict[int, int]] = []
        assert not store.drop_below([SEG_A, SEG_B], 10, now, lambda c: seen.append(c) or False)
        assert seen == [{SEG_A: 1, SEG_B: 1}]
        store.floors = lambda: {}
        assert store.segment_member_counts(now) == {SEG_A: 3, SEG_B: 1}
        assert sorted(k for _, k, _ in store.segment_members(SEG_A, now)) == ["a", "b", "c"]
        assert store.drop_below([SEG_A], 10, now, lambda c: seen.append(c) or True)
        assert seen[-1] == {SEG_A: 2}  # a and c (b is above, d removed)
        assert store.segment_member_counts(now) == {SEG_A: 1, SEG_B: 1}
        assert sorted(k for _, k, _ in store.segment_members(SEG_A, now)) == ["b"]
        # The deletion marker came with it: a later write below is dropped as it applies.
        store.apply(_batch([("late", SEG_A, 9)], now))
        assert store.user_segments(0, "late", now) == []
    finally:
        store.close()


# --- regions ---------------------------------------------------------------------------------


def test_other_regions_get_the_floor_with_the_job(bss_server, tmp_path: Path) -> None:
    srv = bss_server(
        store_regions=f"us=lmdb://{tmp_path / 'us.lmdb'};eu=lmdb://{tmp_path / 'eu.lmdb'}",
        local_region="us",
        region_retry_max_seconds=1,
    )
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    users = list(range(9000, 9020))
    api.run(MEMBER, legacy([f"{u},{SEG_A}:0;{SEG_B}:0" for u in users[:10]]))
    job = _replace(api, legacy([f"{u},{SEG_A}:0" for u in users[5:15]]), force="true")
    assert job["phase"] == "completed" and job["replace_removed"] == 5, job
    _until(lambda: api.job(MEMBER, job["job_id"])["regions"]["eu"] == "applied", "eu")
    for region in ("us", "eu"):
        assert _members(api, users, SEG_A, region=region) == set(users[5:15])
        assert _members(api, users, SEG_B, region=region) == set(users[:10])
    assert _counts(api, region="eu") == _counts(api) == {SEG_A: 10, SEG_B: 10, SEG_C: 0}
    # Each region's floor is a row of its own, written once that region had the pairs.
    db = make_engine(f"sqlite:///{srv.data_dir / 'bss.db'}")
    with db.connect() as conn:
        rows = conn.execute(select(segment_floors.c.region, segment_floors.c.segment_id)).all()
    assert sorted(rows) == [("eu", SEG_A), ("us", SEG_A)]


# --- the rule itself: floors and seqs on every engine against a reference ------------------


def _batch(rows: list[tuple[str, int, int]], now: int, removed: bool = False) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "user_kind": [0] * n,
            "user_key": [u for u, _, _ in rows],
            "segment_id": [s for _, s, _ in rows],
            "value": [None] * n,
            "timestamp": [now - 10] * n,
            "expires_at": [now + 86_400] * n,
            "removed": [removed] * n,
            "seq": [q for _, _, q in rows],
        },
        schema=APPLY_SCHEMA,
    )


_USERS = ["u0", "u1", "u2", "u3"]
_SEGS = [1, 2]
_write = st.tuples(
    st.just("write"),
    st.sampled_from(_USERS),
    st.sampled_from(_SEGS),
    st.integers(1, 60),
    st.booleans(),
)
_floor = st.tuples(
    st.sampled_from(["floor", "read_floor"]),
    st.just(""),
    st.sampled_from(_SEGS),
    st.integers(1, 60),
    st.just(False),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(st.one_of(_write, _write, _floor), min_size=1, max_size=25))
def test_floors_and_seqs_follow_the_reference(stores: Stores, ops: list[tuple]) -> None:
    """A floor at seq F hides every entry of its segment below F, now and for any later
    write below F; entries at or above F, and later writes above it, are unaffected. The
    reference: per (user, segment) the highest seq that is not below the floor wins. A read
    floor (the database's, bss.lifecycle.floors) hides the same entries from every read
    before the store drops them (`delete_segment`, then the counts drop too)."""
    now = now_s()
    store = stores.fresh()
    read_floors: dict[int, int] = {}
    store.floors = lambda: read_floors
    entries: dict[tuple[str, int], tuple[int, bool]] = {}
    floors: dict[int, int] = {}

    def visible() -> dict[tuple[str, int], tuple[int, bool]]:
        return {k: v for k, v in entries.items() if v[0] >= read_floors.get(k[1], 0)}

    def purge(seg: int, seq: int) -> None:
        nonlocal entries
        store.delete_segment(seg, seq)
        floors[seg] = max(floors.get(seg, 0), seq)
        entries = {k: v for k, v in entries.items() if k[1] != seg or v[0] >= floors[seg]}

    try:
        for op, user, seg, seq, removed in ops:
            if op == "write":
                store.apply(_batch([(user, seg, seq)], now, removed))
                stored = entries.get((user, seg))
                if seq >= floors.get(seg, 0) and (stored is None or seq > stored[0]):
                    entries[(user, seg)] = (seq, removed)
                continue
            probe = {s: store.count_below(s, seq, now) for s in _SEGS}
            assert probe == {
                s: sum(1 for (_, es), (q, r) in visible().items() if es == s and not r and q < seq)
                for s in _SEGS
            }
            if op == "floor":
                purge(seg, seq)
            else:
                read_floors[seg] = max(read_floors.get(seg, 0), seq)
            for user in _USERS:
                want = sorted(s for (u, s), (_, r) in visible().items() if u == user and not r)
                assert [m.segment_id for m in store.user_segments(0, user, now)] == want
            for s in _SEGS:
                want_members = sorted(
                    u for (u, es), (_, r) in visible().items() if es == s and not r
                )
                assert sorted(k for _, k, _ in store.segment_members(s, now)) == want_members
        for seg, seq in sorted(read_floors.items()):
            purge(seg, seq)
        for user in _USERS:
            want = sorted(s for (u, s), (_, r) in entries.items() if u == user and not r)
            assert [m.segment_id for m in store.user_segments(0, user, now)] == want
        want_counts: dict[int, int] = {}
        for (_, s), (_, r) in entries.items():
            if not r:
                want_counts[s] = want_counts.get(s, 0) + 1
        assert store.segment_member_counts(now) == want_counts
        for seg in _SEGS:
            want_members = sorted(u for (u, s), (_, r) in entries.items() if s == seg and not r)
            assert sorted(k for _, k, _ in store.segment_members(seg, now)) == want_members
    finally:
        store.close()


_MANY_USERS = [f"u{i:02d}" for i in range(12)]
_old_or_later = st.tuples(
    st.sampled_from(_MANY_USERS), st.sampled_from(_SEGS), st.integers(1, 299), st.booleans()
)
_JOB_BASE = 100


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    old=st.lists(_old_or_later, max_size=30),
    job=st.lists(st.tuples(st.sampled_from(_MANY_USERS), st.sampled_from(_SEGS)), max_size=30),
    later=st.lists(_old_or_later, max_size=12),
)
def test_the_walk_that_skips_the_jobs_own_keys_drops_what_the_full_walk_drops(
    tmp_path_factory: Any,
    monkeypatch: Any,
    old: list[tuple[str, int, int, bool]],
    job: list[tuple[str, int]],
    later: list[tuple[str, int, int, bool]],
) -> None:
    """The embedded store's replace walk reads only the entries its job did not write (the
    keys the store kept as it wrote them). Against a reference of the seq rule, with writes
    before the job, the job's (seqs from its base), and writes after it above and below the
    base, in key ranges and walk chunks of a few keys: both walks count and drop exactly
    the entries below the floor, and leave the same members."""
    monkeypatch.setattr("bss.store.keyvalue.MERGE_ROWS", 3)
    monkeypatch.setattr("bss.store.keyvalue._WALK_CHUNK", 4)
    now = now_s()
    entries: dict[tuple[str, int], tuple[int, bool]] = {}

    def note(rows: list[tuple[str, int, int, bool]]) -> None:
        for user, seg, seq, removed in rows:
            stored = entries.get((user, seg))
            if stored is None or seq > stored[0]:
                entries[(user, seg)] = (seq, removed)

    job_rows = [(u, s, _JOB_BASE + i, False) for i, (u, s) in enumerate(job)]
    note(old)
    note(job_rows)
    note(later)
    replaced = sorted({s for _, s in job})
    want_removed = {
        seg: sum(1 for (_, s), (q, r) in entries.items() if s == seg and q < _JOB_BASE and not r)
        for seg in replaced
    }
    for skip in (True, False):
        store = LmdbStore(tmp_path_factory.mktemp("store") / "m.lmdb")
        try:
            for user, seg, seq, removed in old:
                store.apply(_batch([(user, seg, seq)], now, removed))
            with store.written_keys() as written:
                batches = [_batch([(u, s, q)], now) for u, s, q, _ in job_rows]
                store.apply_many(batches, written=written)
                for user, seg, seq, removed in later:
                    store.apply(_batch([(user, seg, seq)], now, removed))
                seen: list[dict[int, int]] = []
                store.drop_below(
                    replaced,
                    _JOB_BASE,
                    now,
                    lambda counts, seen=seen: seen.append(counts) or True,
                    written if skip else None,
                )
            assert seen == [want_removed]
            for seg in _SEGS:
                floor = _JOB_BASE if seg in replaced else 0
                want = sorted(
                    u for (u, s), (q, r) in entries.items() if s == seg and not r and q >= floor
                )
                assert sorted(k for _, k, _ in store.segment_members(seg, now)) == want
                assert store.segment_member_counts(now).get(seg, 0) == len(want)
        finally:
            store.close()
