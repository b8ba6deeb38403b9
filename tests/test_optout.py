"""Opt-outs (bss.lifecycle.optout), all real: `bss serve` processes (LMDB, a second store
region on a redis-server that is down while the opt-out, a job and the withdrawal happen),
the database read directly for what must never be kept in the clear.

No timed assertions: every wait polls with a generous timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cluster_util import RedisServer, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, legacy
from sqlalchemy import select

from bss.db import init_db, make_engine
from bss.lifecycle.models import optout_requests, optout_suppressions, service_secrets
from bss.lifecycle.optout import SuppressionList, is_opted_out, opt_out
from bss.lifecycle.tags import id_tags, tag_keys
from bss.segments.models import segments
from bss.settings import Settings
from bss.store import APPLY_SCHEMA
from bss.store.keyvalue import LmdbStore

M, N = 801, 802
SEG_A, SEG_B, SEG_X = 9301, 9302, 9303


def _until(check: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _segs(api: Api, uid: int, **params: Any) -> list[int]:
    body = api.ok("POST", "/user-segments", params=params, json={"users": [{"uid": str(uid)}]})
    return sorted(s["id"] for s in body["users"][0]["segments"])


def _setup(api: Api) -> None:
    api.member(M)
    api.member(N)
    assert api.segment(M, "a", id=SEG_A)["id"] == SEG_A
    assert api.segment(M, "b", id=SEG_B)["id"] == SEG_B
    assert api.segment(N, "x", id=SEG_X)["id"] == SEG_X
    first = api.run(M, legacy([f"{u},{SEG_A}:0;{SEG_B}:0" for u in range(1, 6)]))
    assert first["phase"] == "completed", first
    other = api.run(N, legacy([f"{u},{SEG_X}:0" for u in range(1, 6)]))
    assert other["phase"] == "completed", other


def _optout(api: Api, uids: list[int], **params: Any) -> dict[str, Any]:
    body = api.ok(
        "POST", "/user-optout", params=params, json={"users": [{"uid": str(u)} for u in uids]}
    )
    return body["user_optout"]


def test_member_optout_removes_suppresses_and_is_withdrawn(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    done = _optout(api, [1, 2], member_id=M)
    assert (done["ids"], done["memberships_removed"], done["member_id"]) == (2, 4, M)
    # Gone from M's segments at once; member N's segment is another scope.
    assert _segs(api, 1) == [SEG_X] and _segs(api, 2) == [SEG_X]
    assert _segs(api, 3) == [SEG_A, SEG_B, SEG_X]

    # A file job: the opted-out user's pairs are counted and reported, not applied.
    job = api.run(M, legacy([f"1,{SEG_A}:0;{SEG_B}:0", f"3,{SEG_A}:0", f"6,{SEG_A}:0"]))
    assert job["phase"] == "completed", job
    assert (job["num_valid"], job["num_opted_out"]) == (2, 2), job
    assert "opted out" in job["error_log_lines"]
    assert _segs(api, 1) == [SEG_X] and _segs(api, 6) == [SEG_A]
    # Member N's writes for the same user are not suppressed by M's opt-out.
    assert api.run(N, legacy([f"2,{SEG_X}:0"]))["num_opted_out"] == 0

    # A real-time post: a warning naming it, nothing applied.
    rt = [{"user_id": "2", "seg_block": [{"seg_id": SEG_B}]}]
    answer = api.ok("POST", "/rt-segment", params={"member_id": M}, json={"rt_segment": rt})
    assert [w.get("counter") for w in answer["warnings"]] == ["num_opted_out", None], answer
    assert _segs(api, 2) == [SEG_X]

    # Exports and counts leave them out.
    csv = api.raw("GET", "/segment-members", params={"id": SEG_A}).text
    assert {line.split(",")[1] for line in csv.splitlines()[1:]} == {"3", "4", "5", "6"}
    counts = api.ok("GET", "/segment", params={"member_id": M})["segments"]
    assert {s["id"]: s["member_count"] for s in counts} == {SEG_A: 4, SEG_B: 3}

    # The audit trail: who, when, how many.
    trail = api.ok("GET", "/user-optout", params={"member_id": M})
    assert trail["count"] == 1
    (request,) = trail["user_optouts"]
    assert (request["kind"], request["ids"], request["memberships_removed"]) == ("optout", 2, 4)
    assert request["requested_by"] == ADMIN_USER

    # Withdrawn: only later writes apply again.
    gone = api.ok("DELETE", "/user-optout", params={"member_id": M, "uid": "1"})
    assert gone["user_optout"]["withdrawn"] == 1
    again = api.call("DELETE", "/user-optout", params={"member_id": M, "uid": "1"})
    assert (again["_http"], again["error_id"]) == (404, "NOTFOUND")
    back = api.run(M, legacy([f"1,{SEG_A}:0"]))
    assert (back["num_valid"], back["num_opted_out"]) == (1, 0), back
    assert _segs(api, 1) == [SEG_A, SEG_X]
    assert _segs(api, 2) == [SEG_X]  # still opted out
    kinds = [
        r["kind"] for r in api.ok("GET", "/user-optout", params={"member_id": M})["user_optouts"]
    ]
    assert kinds == ["withdrawal", "optout"]

    # Bad input: a clear 400, nothing kept.
    for body in ({"users": []}, {"users": [{"uid": "0"}]}, {"users": [{"uid": "1"}] * 1001}):
        bad = api.call("POST", "/user-optout", params={"member_id": M}, json=body)
        assert (bad["_http"], bad["error_id"]) == (400, "SYNTAX"), bad
    assert api.ok("GET", "/user-optout", params={"member_id": M})["count"] == 2

    # The suppression list keeps keyed hashes, never the IDs.
    db = make_engine(f"sqlite:///{srv.data_dir / 'bss.db'}")
    with db.connect() as conn:
        rows = conn.execute(select(optout_suppressions)).mappings().all()
        key = conn.execute(select(service_secrets.c.value)).scalar_one()
    assert sorted(r["id_hash"] for r in rows) == sorted(
        hmac.new(key.encode(), f"1:{u}".encode(), hashlib.sha256).hexdigest() for u in (1, 2)
    )


def test_platform_wide_optout_by_an_admin(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    done = _optout(api, [3])
    assert (done["member_id"], done["memberships_removed"]) == (None, 3)
    assert _segs(api, 3) == []
    for member, seg in ((M, SEG_A), (N, SEG_X)):
        job = api.run(member, legacy([f"3,{seg}:0"]))
        assert (job["num_valid"], job["num_opted_out"]) == (0, 1), job
    assert _segs(api, 3) == []
    # A member's user cannot opt out platform-wide: its own scope is implied.
    api.user(f"u{M}", M)
    member_api = Api(srv.url, f"u{M}", "password-123")
    mine = _optout(member_api, [4])
    assert (mine["member_id"], mine["memberships_removed"]) == (M, 2)
    assert _segs(api, 4) == [SEG_X]
    other = member_api.call(
        "POST", "/user-optout", params={"member_id": N}, json={"users": [{"uid": "5"}]}
    )
    assert (other["_http"], other["error_id"]) == (403, "UNAUTH"), other
    platform = api.ok("GET", "/user-optout")["user_optouts"]
    assert [(r["member_id"], r["ids"]) for r in platform] == [(None, 1)]


@pytest.fixture
def eu_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path, persistent=True)
    yield redis
    redis.stop()


@needs_redis
def test_regions_and_replays_decide_by_seq(bss_server, tmp_path: Path, eu_redis) -> None:
    """eu is down while M opts user 1 out, a job writes for it, and the opt-out is withdrawn:
    once back, eu applies the removals and replays the job after the withdrawal, and still
    suppresses the job's pair (its seq lies between the two), as the local region did."""
    eu_redis.start()
    srv = bss_server(
        store_regions=f"us=lmdb://{tmp_path / 'us.lmdb'};eu={eu_redis.url}",
        local_region="us",
        region_retry_max_seconds=1,
    )
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    _until(lambda: _segs(api, 1, region="eu") == [SEG_A, SEG_B, SEG_X], "eu: the first jobs")
    eu_redis.stop()
    _optout(api, [1], member_id=M)
    job = api.run(M, legacy([f"1,{SEG_A}:0", f"7,{SEG_A}:0"]))
    assert (job["num_valid"], job["num_opted_out"]) == (1, 1), job
    api.ok("DELETE", "/user-optout", params={"member_id": M, "uid": "1"})
    assert _segs(api, 1) == [SEG_X] and _segs(api, 7) == [SEG_A]
    eu_redis.start()
    _until(lambda: api.job(M, job["job_id"])["regions"]["eu"] == "applied", "eu: the job")
    _until(lambda: _segs(api, 1, region="eu") == [SEG_X], "eu: the removals")
    assert _segs(api, 7, region="eu") == [SEG_A]


@pytest.mark.parametrize("tagged", [True, False], ids=["tagged", "rows-without-tags"])
def test_write_mask_follows_the_intervals(tmp_path: Path, tagged: bool) -> None:
    """Suppressed: seqs strictly between an opt-out and its withdrawal, in the member's scope
    or platform-wide; `is_opted_out` is the standing state the read paths ask for. Rows
    kept with their tags are prefiltered by them; rows kept before tags, by HMAC alone."""
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    settings = Settings(data_dir=tmp_path, optout_secret="k")
    suppression = SuppressionList.of(db, settings)
    key = suppression.hash(0, "9")
    tag_9, tag_8 = suppression.tags([(0, "9"), (0, "8")]) if tagged else (None, None)
    with db.begin() as conn:
        conn.execute(
            optout_requests.insert().values(
                id=1,
                member_id=M,
                kind="optout",
                requested_on=0,
                seq=10,
                ids=1,
                memberships_removed=0,
                links_removed=0,
            )
        )
        conn.execute(
            optout_suppressions.insert(),
            [
                {
                    "scope": M,
                    "id_hash": key,
                    "optout_seq": 10,
                    "withdrawn_seq": 20,
                    "request_id": 1,
                    "id_tag": tag_9,
                },
                {
                    "scope": M,
                    "id_hash": key,
                    "optout_seq": 30,
                    "withdrawn_seq": None,
                    "request_id": 1,
                    "id_tag": tag_9,
                },
                {
                    "scope": 0,
                    "id_hash": suppression.hash(0, "8"),
                    "optout_seq": 50,
                    "withdrawn_seq": None,
                    "request_id": 1,
                    "id_tag": tag_8,
                },
            ],
        )
    suppression.invalidate()
    seqs = np.array([5, 10, 11, 19, 20, 25, 30, 31, 10**9])
    mask = suppression.write_mask(M, np.zeros(len(seqs), np.uint8), ["9"] * len(seqs), seqs)
    assert mask.tolist() == [False, False, True, True, False, False, False, True, True]
    assert not suppression.write_mask(N, np.zeros(1, np.uint8), ["9"], np.array([15]))[0]
    plat = suppression.write_mask(N, np.zeros(2, np.uint8), ["8", "8"], np.array([49, 51]))
    assert plat.tolist() == [False, True]
    # The sieve before the check: a superset of the IDs that may be suppressed.
    sifted = suppression.candidates(M, np.zeros(3, np.uint8), ["9", "8", "7"]).tolist()
    assert sifted == ([True, True, False] if tagged else [True, True, True])
    assert is_opted_out(db, settings, M, 0, "9") and not is_opted_out(db, settings, N, 0, "9")
    assert is_opted_out(db, settings, None, 0, "8") and is_opted_out(db, settings, N, 0, "8")
    assert not is_opted_out(db, settings, None, 0, "9")


def test_the_tag_prefilter_never_lets_a_suppressed_id_through(tmp_path: Path) -> None:
    """Opted out through opt_out (tags kept): among 20,000 IDs of every shape (long, short,
    empty, not ASCII, one kind's key under another kind), in batches sliced anywhere, the
    mask is exactly the suppressed rows, and an ID's tag is the same alone or in a batch."""
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    settings = Settings(data_dir=tmp_path, optout_secret="k")
    rng = np.random.default_rng(5)
    shapes = ["{}", "idfa:{}-ABCDEF", "éé{}üü", "x" * 40 + "{}", "{}" + "y" * 40]
    users = [
        (int(rng.integers(1, 7)), shapes[i % len(shapes)].format(int(rng.integers(0, 10**12))))
        for i in range(20_000)
    ]
    users += [(1, ""), (2, "1"), (1, "1")]
    picked = [users[i] for i in rng.choice(len(users), 500, replace=False)] + [(2, "1")]

    class _NoStore:
        remote_regions: list[str] = []

        def get(self, region: str | None = None) -> Any:
            return _Empty()

    class _Empty:
        def users_segments(self, users: Any, now: int) -> list[list[Any]]:
            return [[] for _ in users]

        def top_links(self, users: Any, scopes: Any, now: int, limit: int) -> list[list[Any]]:
            return [[] for _ in users]

        def apply_links(self, batch: Any) -> None:
            pass

    done = opt_out(db, settings, _NoStore(), member_id=M, users=picked, requested_by="t")
    suppression = SuppressionList.of(db, settings)
    alone = [suppression.tags([u])[0] for u in users[:300]]
    assert alone == suppression.tags(users[:300])
    wanted = set(picked)
    keys_of = tag_keys(suppression.secret)
    for start in range(0, len(users), 7_001):
        batch = users[start : start + 7_001]
        kinds = np.array([k for k, _ in batch], np.uint8)
        keys = [k for _, k in batch]
        sliced = pa.array(["pad", *keys]).slice(1)
        assert (id_tags(keys_of, kinds, sliced) == id_tags(keys_of, kinds, keys)).all()
        for given in (keys, sliced):  # as link files and real-time posts give them; as files
            mask = suppression.write_mask(M, kinds, given, np.full(len(batch), done.seq + 1))
            assert [batch[i] for i in np.flatnonzero(mask)] == [u for u in batch if u in wanted]


def test_related_ids_and_their_links_and_bss_optout_add(bss_server, tmp_path: Path) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    _setup(api)
    # uid 1 is linked to uid 2 in M's scope, uid 2 to uid 3: related=true reaches both.
    links = [{"a": "uid=1", "b": "uid=2"}, {"a": "uid=2", "b": "uid=3"}]
    api.ok("POST", "/id-link", params={"member_id": M}, json={"links": links})
    body = api.ok(
        "POST",
        "/user-optout",
        params={"member_id": M},
        json={"users": [{"uid": "1"}], "related": True},
    )["user_optout"]
    assert (body["ids"], body["memberships_removed"], body["links_removed"]) == (3, 6, 2)
    assert [_segs(api, u, member_id=M) for u in (1, 2, 3, 4)] == [[], [], [], [SEG_A, SEG_B]]
    linked = api.ok("GET", "/user-links", params={"member_id": M, "uid": "2"})
    assert linked.get("links", []) == []

    ids = tmp_path / "optouts.txt"
    ids.write_text('# tonight\n4\n\n{"uid": "5"}\n')
    done = subprocess.run(
        [str(BSS), "optout", "add", str(ids), "--member-id", str(M)]
        + ["--url", srv.url, "--username", ADMIN_USER, "--password", ADMIN_PASSWORD],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "requests": 1,
        "ids": 2,
        "memberships_removed": 4,
        "links_removed": 0,
    }
    assert _segs(api, 4) == [SEG_X] and _segs(api, 5) == [SEG_X]
    bad = tmp_path / "bad.txt"
    bad.write_text("4\nnot an id\n")
    refused = subprocess.run(
        [str(BSS), "optout", "add", str(bad), "--member-id", str(M)]
        + ["--url", srv.url, "--username", ADMIN_USER, "--password", ADMIN_PASSWORD],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "line 2" in refused.stderr, refused.stderr


def _link_job(api: Api, member_id: int, text: str) -> dict[str, Any]:
    job = api.ok("POST", "/batch-segment", params={"member_id": member_id, "file_type": "links"})[
        "batch_segment_upload_job"
    ]
    assert api.upload(job, text.encode())["status"] == "OK"
    return api.wait(member_id, job["job_id"])


def _links(api: Api, member_id: int, uid: int) -> list[str]:
    return api.ok("GET", "/user-links", params={"member_id": member_id, "uid": uid})["ids"]


def test_a_link_file_skips_links_of_opted_out_ids(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(M)
    api.member(N)
    _optout(api, [11], member_id=M)

    # Either end opted out: the link is counted in num_opted_out and reported, not applied.
    job = _link_job(api, M, "uid=11,uid=12\nuid=13,uid=11\nuid=12,uid=13\n")
    assert job["phase"] == "completed", job
    assert (job["file_type"], job["num_valid"], job["num_opted_out"]) == ("links", 1, 2), job
    assert "opted out" in job["error_log_lines"]
    assert _links(api, M, 12) == ["uid=12", "uid=13"]
    assert _links(api, M, 11) == ["uid=11"]  # itself only: no link applied
    # Member N's scope is not M's opt-out's.
    other = _link_job(api, N, "uid=11,uid=12\n")
    assert (other["num_valid"], other["num_opted_out"]) == (1, 0), other
    assert _links(api, N, 11) == ["uid=11", "uid=12"]

    # Replace mode sets segments' members: a link file cannot have it.
    bad = api.call(
        "POST", "/batch-segment", params={"member_id": M, "file_type": "links", "mode": "replace"}
    )
    assert (bad["_http"], bad["error_id"]) == (400, "SYNTAX"), bad
    assert "not to link files" in bad["error"], bad


def _post_links(api: Api, member_id: int, links: list[Any], **extra: Any) -> dict[str, Any]:
    return api.ok(
        "POST", "/id-link", params={"member_id": member_id}, json={"links": links, **extra}
    )


def test_a_link_post_skips_links_of_opted_out_ids(bss_server) -> None:
    srv = bss_server()
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(M)
    api.member(N)
    _optout(api, [21], member_id=M)

    # Either end opted out: a warning per link, counted as num_opted_out, not applied; the
    # post's other skipped entries keep their own warnings.
    links = [
        {"a": "uid=21", "b": "uid=22"},
        {"a": "uid=22", "b": "uid=23"},
        {"a": "uid=0", "b": "uid=22"},
        {"a": "uid=24", "b": "uid=21", "remove": False},
    ]
    posted = _post_links(api, M, links)
    assert posted["message"] == {"links_in_request": 4, "links_applied": 1}, posted
    opted = [(w["index"], w["entity"]) for w in posted["warnings"] if w.get("counter")]
    assert opted == [(0, links[0]), (3, links[3])], posted
    assert {w["counter"] for w in posted["warnings"] if "counter" in w} == {"num_opted_out"}
    assert [w["index"] for w in posted["warnings"]] == [2, 0, 3], posted
    assert _links(api, M, 22) == ["uid=22", "uid=23"]
    assert _links(api, M, 21) == ["uid=21"]

    # Nothing left to apply: the post says so, as one of only bad entries does.
    only = _post_links(api, M, [links[0]])
    assert only["message"] == {"links_in_request": 1, "links_applied": 0}, only
    assert [w.get("counter") for w in only["warnings"]] == ["num_opted_out", None], only

    # Member N's scope, and the shared scope, are not M's opt-out's ...
    assert _post_links(api, N, [links[0]])["message"]["links_applied"] == 1
    shared = _post_links(api, M, [{"a": "uid=21", "b": "uid=25"}], scope="shared")
    assert shared["message"]["links_applied"] == 1, shared
    # ... but a platform-wide opt-out suppresses shared links and every member's.
    _optout(api, [26])
    for member, scope in ((M, "shared"), (N, "member")):
        refused = _post_links(api, member, [{"a": "uid=26", "b": "uid=27"}], scope=scope)
        assert refused["message"]["links_applied"] == 0, refused
        assert refused["warnings"][0]["counter"] == "num_opted_out", refused

    # Withdrawn: links posted after the withdrawal apply again.
    api.ok("DELETE", "/user-optout", params={"member_id": M, "uid": "21"})
    assert _post_links(api, M, [links[0]])["message"]["links_applied"] == 1
    # (An admin's listing follows the shared link to uid 25 as well.)
    assert sorted(_links(api, M, 21)) == ["uid=21", "uid=22", "uid=23", "uid=25"]


class _Stores:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.remote_regions: list[str] = []

    def get(self, region: str | None = None) -> Any:
        return self.store


class _LookupThenApply:
    """The embedded store without its one-transaction removal: the path other engines take
    (a lookup, then `apply` of the removals)."""

    def __init__(self, store: LmdbStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "remove_memberships":
            raise AttributeError(name)
        return getattr(self._store, name)


def _removal_fixture(path: Path) -> tuple[Any, LmdbStore, int]:
    db = make_engine(f"sqlite:///{path / 'bss.db'}")
    init_db(db)
    with db.begin() as conn:
        conn.execute(
            segments.insert(),
            [
                {"id": s, "member_id": m, "code": f"s{s}", "code_key": f"s{s}", "state": "active",
                 "created_on": 0, "last_modified": 0}
                for s, m in ((1, M), (2, N))
            ],
        )  # fmt: skip
    store = LmdbStore(path / "store")
    now = int(time.time())
    rows = [  # user, segment, seq, removed, expires_at
        ("1", 1, 5, False, now + 3600),
        ("1", 2, 5, False, now + 3600),
        ("2", 1, 1 << 50, False, now + 3600),  # above the opt-out's seq: stays
        ("3", 1, 5, True, now + 3600),
        ("4", 1, 5, False, now - 1),
    ]
    store.apply(
        pa.table(
            {
                "user_kind": [0] * len(rows),
                "user_key": [r[0] for r in rows],
                "segment_id": [r[1] for r in rows],
                "value": [None] * len(rows),
                "timestamp": [now - 60] * len(rows),
                "expires_at": [r[4] for r in rows],
                "removed": [r[3] for r in rows],
                "seq": [r[2] for r in rows],
            },
            schema=APPLY_SCHEMA,
        )
    )
    return db, store, now


def test_the_embedded_stores_one_pass_removal_matches_lookup_then_apply(tmp_path: Path) -> None:
    """The embedded store removes an opt-out's memberships in the transaction that finds
    them; what stays and the member counts are the lookup-then-apply path's, and a failure
    before its commit leaves the store as it was."""
    users = [(0, "1"), (0, "2"), (0, "3"), (0, "4"), (0, "5")]
    outcomes = []
    for name, wrap in (("one-pass", lambda s: s), ("lookup", _LookupThenApply)):
        (tmp_path / name).mkdir()
        db, store, now = _removal_fixture(tmp_path / name)
        settings = Settings(data_dir=tmp_path / name, optout_secret="k")
        done = opt_out(
            db, settings, _Stores(wrap(store)), member_id=M, users=users, requested_by="t"
        )
        with db.connect() as conn:
            audit = conn.execute(select(optout_requests.c.memberships_removed)).scalar_one()
        outcomes.append(
            (
                done.memberships_removed,
                audit,
                [[m.segment_id for m in ms] for ms in store.users_segments(users, now)],
                store.segment_member_counts(now),
            )
        )
        store.close()
    # The same memberships stay; the one pass counts only what its removals beat (user 2's
    # entry above the opt-out's seq stays either way, the lookup counted it).
    assert outcomes[0] == (1, 1, [[2], [1], [], [], []], {1: 1, 2: 1})
    assert outcomes[1] == (2, 2, [[2], [1], [], [], []], {1: 1, 2: 1})

    (tmp_path / "failed").mkdir()
    db, store, now = _removal_fixture(tmp_path / "failed")

    def fail(_rows: list[tuple[int, str, int]]) -> None:
        raise RuntimeError("the database is gone")

    with pytest.raises(RuntimeError):
        store.remove_memberships(
            users, 1 << 45, now=now, expires_at=now + 60, owned=None, before_commit=fail
        )
    assert store.segment_member_counts(now) == {1: 2, 2: 1}
    assert [len(ms) for ms in store.users_segments(users, now)] == [2, 1, 0, 0, 0]
    store.close()
