"""Links in every store region (a real `bss serve` with two regions, eu on a redis-server
started here): link files and link posts reach a region that was down once it is back, and
deleting the member deletes its links in every region."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_util import RedisServer, needs_redis
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api

MEMBER = 811


def _until(check: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def eu_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path, persistent=True)
    yield redis
    redis.stop()


def _graph(api: Api, uids: list[int], **params: Any) -> list[list[str]]:
    return [
        api.ok("GET", "/user-links", params={"member_id": MEMBER, "uid": uid, **params})["ids"]
        for uid in uids
    ]


def _link_job(api: Api, text: str) -> dict[str, Any]:
    job = api.ok("POST", "/batch-segment", params={"member_id": MEMBER, "file_type": "links"})[
        "batch_segment_upload_job"
    ]
    assert api.upload(job, text.encode())["status"] == "OK"
    return api.wait(MEMBER, job["job_id"])


@needs_redis
def test_links_reach_a_region_that_was_down_and_go_with_the_member(
    bss_server, eu_redis: RedisServer, tmp_path: Path
) -> None:
    eu_redis.start()
    srv = bss_server(
        store_regions=f"us=lmdb://{tmp_path / 'us.lmdb'};eu={eu_redis.url}",
        local_region="us",
        region_retry_max_seconds=1,
        workers=1,
    )
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(MEMBER)
    uids = [61, 62, 63, 64, 65]
    job1 = _link_job(api, "uid=61,uid=62\nuid=62,uid=63\n")
    assert job1["phase"] == "completed" and job1["num_valid"] == 2, job1
    _until(lambda: api.job(MEMBER, job1["job_id"])["regions"]["eu"] == "applied", "eu: job 1")
    local = _graph(api, uids)
    assert local[0] == ["uid=61", "uid=62", "uid=63"]
    assert _graph(api, uids, region="eu") == local

    eu_redis.stop()
    job2 = _link_job(api, "uid=62,uid=63,-1\nuid=64,uid=65\n")
    assert job2["phase"] == "completed" and job2["num_valid"] == 2, job2
    posted = api.ok(
        "POST",
        "/id-link",
        params={"member_id": MEMBER},
        json={"links": [{"a": "uid=65", "b": "uid=61"}]},
    )
    assert posted["message"]["links_applied"] == 1
    local = _graph(api, uids)
    assert local == [
        ["uid=61", "uid=65", "uid=62", "uid=64"],
        ["uid=62", "uid=61", "uid=65"],
        ["uid=63"],
        ["uid=64", "uid=65", "uid=61"],
        ["uid=65", "uid=61", "uid=64", "uid=62"],
    ]
    _until(
        lambda: api.job(MEMBER, job2["job_id"])["regions"]["eu"].startswith("error"),
        "a failed attempt on eu",
    )
    eu_redis.start()
    _until(lambda: api.job(MEMBER, job2["job_id"])["regions"]["eu"] == "applied", "eu: job 2")
    _until(lambda: _graph(api, uids, region="eu") == local, "eu: the link post")

    api.ok("DELETE", "/member", params={"id": MEMBER})
    alone = [[f"uid={uid}"] for uid in uids]
    assert _graph(api, uids) == alone
    _until(lambda: _graph(api, uids, region="eu") == alone, "eu: the member's links deleted")
