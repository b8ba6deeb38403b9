"""The identity graph over HTTP (a real server): POST /id-link with its warnings and limits,
lookups with related=true (GET and POST /user-segments) and their `via`, GET /user-links,
and scopes: a member's links never expand another member's reads; shared links are written
by admins only and shown as "shared"."""

from __future__ import annotations

from typing import Any

from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, legacy


def _post_links(api: Api, member_id: int, links: list[Any], **extra: Any) -> dict[str, Any]:
    return api.call(
        "POST", "/id-link", params={"member_id": member_id}, json={"links": links, **extra}
    )


def _related(api: Api, member_id: int, **user: Any) -> list[tuple[str, str]]:
    body = api.ok(
        "GET", "/user-segments", params={"member_id": member_id, "related": "true", **user}
    )
    return [(s["code"], s["via"]) for s in body["segments"]]


def test_links_expand_lookups_within_their_scope(bss_server) -> None:
    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    for mid in (3, 4):
        admin.member(mid)
        admin.user(f"user{mid}", mid)
    m3, m4 = Api(srv.url, "user3", "password-123"), Api(srv.url, "user4", "password-123")
    s1, s2 = admin.segment(3, "s1"), admin.segment(3, "s2")
    t1 = admin.segment(4, "t1")
    assert admin.run(3, legacy([f"11,{s1['id']}:0", f"12,{s2['id']}:0"]))["num_valid"] == 2
    assert admin.run(4, legacy([f"12,{t1['id']}:0", f"13,{t1['id']}:0"]))["num_valid"] == 2

    posted = _post_links(m3, 3, [{"a": "uid=11", "b": "uid=12"}])
    assert posted["status"] == "OK", posted
    assert posted["message"] == {"links_in_request": 1, "links_applied": 1}
    assert posted["warnings"] == []

    assert _related(m3, 3, uid=11) == [("s1", "uid=11"), ("s2", "uid=12")]
    plain = m3.ok("GET", "/user-segments", params={"member_id": 3, "uid": 11})["segments"]
    assert [s["code"] for s in plain] == ["s1"] and "via" not in plain[0]
    # Member 3's link is invisible to member 4.
    assert _related(m4, 4, uid=11) == []
    assert _related(m4, 4, uid=12) == [("t1", "uid=12")]

    # Shared links: admins only; they serve every member, shown as "shared".
    refused = _post_links(m3, 3, [{"a": "uid=11", "b": "uid=13"}], scope="shared")
    assert refused["_http"] == 403 and refused["error"] == "Only admin users may write shared links"
    assert _post_links(admin, 3, [{"a": "uid=13", "b": "uid=11"}], scope="shared")["status"] == "OK"
    assert _related(m4, 4, uid=11) == [("t1", "shared")]
    assert _related(m3, 3, uid=11) == [("s1", "uid=11"), ("s2", "uid=12")]

    batch = m3.ok(
        "POST",
        "/user-segments",
        params={"member_id": 3},
        json={"users": [{"uid": "12"}, {"uid": "13"}, {"uid": "0"}], "related": True},
    )["users"]
    assert [[(s["code"], s["via"]) for s in u.get("segments", [])] for u in batch] == [
        [("s1", "uid=11"), ("s2", "uid=12")],
        # From uid=13 the member's IDs are reached through the shared link only.
        [("s1", "shared"), ("s2", "shared")],
        [],
    ]
    assert "0 is never a valid user" in batch[2]["error"]

    links = m3.ok("GET", "/user-links", params={"member_id": 3, "uid": 11})
    assert links["ids"] == ["uid=11", "uid=12"]
    assert [(x["a"], x["b"], x["scope"]) for x in links["links"]] == [
        ("uid=11", "uid=12", "member")
    ]
    assert links["links"][0]["expires_on"] > links["links"][0]["last_asserted"]
    seen = admin.ok("GET", "/user-links", params={"member_id": 3, "id": "uid=11"})
    assert seen["ids"] == ["uid=11", "uid=13", "uid=12"]  # the later link first
    assert sorted(x["scope"] for x in seen["links"]) == ["member", "shared"]
    assert m4.ok("GET", "/user-links", params={"uid": 11})["ids"] == ["uid=11"]

    # A removal takes the link away from the next read; an older assertion does not return it.
    removed = _post_links(m3, 3, [{"a": "uid=12", "b": "uid=11", "remove": True}])
    assert removed["message"]["links_applied"] == 1
    assert _related(m3, 3, uid=11) == [("s1", "uid=11")]

    bad = m3.call("GET", "/user-segments", params={"uid": 11, "related": "maybe"})
    assert bad["_http"] == 400 and bad["error"] == "related must be true or false"


def test_id_link_skips_bad_entries_with_a_warning_each(bss_server) -> None:
    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(5)
    entries: list[Any] = [
        {"a": "uid=21", "b": "ext=5:PS,1"},
        {"a": "uid=0", "b": "uid=22"},
        {"a": "ifa=idfa:00000000-0000-0000-0000-000000000000", "b": "uid=22"},
        {"a": "cookie=1", "b": "uid=22"},
        {"a": "uid=22", "b": "uid=22"},
        {"a": "uid=22", "b": "uid=23", "remove": "yes"},
        "uid=22,uid=23",
        {"a": 22, "b": "uid=23"},
        {"a": "eid=LiveRamp.com:XY", "b": "uid=23"},
    ]
    got = _post_links(admin, 5, entries)
    assert got["status"] == "OK", got
    assert got["message"] == {"links_in_request": 9, "links_applied": 2}
    assert [(w["index"], w["message"]) for w in got["warnings"]] == [
        (1, "Invalid ID 'a': junk ID 'uid=0'."),
        (2, "Invalid ID 'a': junk ID 'ifa=idfa:00000000-0000-0000-0000-000000000000'."),
        (
            3,
            "Invalid ID 'a': not an ID of the form uid=, device=<domain>:<id>, ifa=<type>:<id>, "
            "ext=<member>:<id>, eid=<source>:<id>, xfa=<make>:<model>:<ip>: 'cookie=1'.",
        ),
        (4, "A link joins two different IDs."),
        (5, "'remove' must be true or false."),
        (6, 'A link is a JSON object such as {"a": "uid=...", "b": "ext=M:ID"}.'),
        (7, "Invalid ID 'a': give the ID as a string such as uid=...."),
    ]
    assert admin.ok("GET", "/user-links", params={"member_id": 5, "uid": 23})["ids"] == [
        "uid=23",
        "eid=liveramp.com:XY",
    ]
    assert admin.ok("GET", "/user-links", params={"member_id": 5, "id": "ext=5:PS,1"})["ids"] == [
        "ext=5:PS,1",
        "uid=21",
    ]

    many = _post_links(
        admin, 5, [{"a": f"uid={i}", "b": f"uid={i + 5000}"} for i in range(1, 1003)]
    )
    assert many["message"] == {"links_in_request": 1002, "links_applied": 1000}
    assert [w["index"] for w in many["warnings"]] == [1000, 1001]
    assert many["warnings"][0]["message"] == "Too many links in request; at most 1000 per post."

    nothing = _post_links(admin, 5, [{"a": "uid=0", "b": "uid=1"}])
    assert nothing["message"]["links_applied"] == 0
    assert nothing["warnings"][-1]["message"] == "No valid link in request."
    for body in ({"link": []}, [1], {"links": {}}):
        bad = admin.call("POST", "/id-link", params={"member_id": 5}, json=body)
        assert bad["_http"] == 400 and bad["error"].startswith("expected a JSON body like"), bad
    scope = _post_links(admin, 5, [], scope="everyone")
    assert scope["_http"] == 400 and scope["error"] == 'scope must be "member" or "shared"'
    assert _post_links(admin, 77, [])["_http"] == 404


def _link_job(api: Api, member_id: int, content: bytes) -> dict[str, Any]:
    job = api.ok("POST", "/batch-segment", params={"member_id": member_id, "file_type": "links"})[
        "batch_segment_upload_job"
    ]
    assert job["file_type"] == "links"
    assert api.upload(job, content)["status"] == "OK"
    return api.wait(member_id, job["job_id"])


def test_link_files_in_csv_and_avro_through_the_job_flow(bss_server) -> None:
    import gzip
    import io
    import json
    from importlib.resources import files

    import fastavro

    srv = bss_server()
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(6)
    s = admin.segment(6, "s")
    seg_job = admin.run(6, legacy([f"31,{s['id']}:0"]))
    assert seg_job["file_type"] == "segments"
    text = (
        'uid=31,"ext=6:PS,1"\n'
        '"ext=6:PS,1","eid=LiveRamp.com:a""b"\n'
        "uid=31,uid=0\n"
        "uid=31,uid=32,5\n"
        "uid=31\n"
        "uid=32,uid=32\n"
        '"device=idfa:AB,CD",uid=33\n'
        "uid=31,uid=34\n"
        "uid=34,uid=31,-1\n"
    )
    job = _link_job(admin, 6, gzip.compress(text.encode()))
    assert job["phase"] == "completed", job
    counters = {k: job[k] for k in ("num_valid", "num_invalid_format", "num_invalid_user")}
    assert counters == {"num_valid": 5, "num_invalid_format": 2, "num_invalid_user": 2}
    assert job["error_log_lines"].splitlines() == [
        "num_invalid_user-uid=31,uid=0 junk ID 'uid=0'",
        "num_invalid_format-uid=31,uid=32,5 the third field must be -1 (remove) or absent",
        "num_invalid_format-uid=31 a link is ID_A,ID_B or ID_A,ID_B,-1",
        "num_invalid_user-uid=32,uid=32 a link joins two different IDs",
    ]
    links = admin.ok("GET", "/user-links", params={"member_id": 6, "uid": 31})
    assert links["ids"] == ["uid=31", "ext=6:PS,1", 'eid=liveramp.com:a"b']
    by_device = admin.ok("GET", "/user-links", params={"member_id": 6, "id": "device=idfa:ab,cd"})
    assert by_device["ids"] == ["device=idfa:ab,cd", "uid=33"]
    got = admin.ok(
        "GET",
        "/user-segments",
        params={"member_id": 6, "external_id": "PS,1", "related": "true"},
    )["segments"]
    assert [(x["code"], x["via"]) for x in got] == [("s", "uid=31")]

    schema = fastavro.parse_schema(
        json.loads(files("bss.formats.schema").joinpath("xandr_link.avsc").read_text())
    )
    buffer = io.BytesIO()
    fastavro.writer(
        buffer,
        schema,
        [
            {"a": 41, "b": ("xandr.avro.external_id", {"id": "Q7", "member_id": 0})},
            {"a": ("xandr.avro.device_id", {"id": "EE", "domain": "aaid"}), "b": 41},
            {"a": 0, "b": 41},
            {
                "a": 41,
                "b": ("xandr.avro.external_id", {"id": "Q7", "member_id": 0}),
                "remove": True,
            },
        ],
    )
    avro_job = _link_job(admin, 6, buffer.getvalue())
    assert avro_job["phase"] == "completed", avro_job
    assert (avro_job["num_valid"], avro_job["num_invalid_user"]) == (3, 1)
    assert "anid 0 is not a valid user ID" in avro_job["error_log_lines"]
    assert admin.ok("GET", "/user-links", params={"member_id": 6, "uid": 41})["ids"] == [
        "uid=41",
        "device=aaid:ee",
    ]
    bad = admin.call("POST", "/batch-segment", params={"member_id": 6, "file_type": "graph"})
    assert bad["_http"] == 400 and bad["error"] == "file_type must be one of: segments, links"
    history = admin.ok("GET", "/batch-segment", params={"member_id": 6})["batch_segment_upload_job"]
    assert sorted(j["file_type"] for j in history) == ["links", "links", "segments"]


def test_cli_validates_and_uploads_link_files(bss_server, tmp_path) -> None:
    import json
    import os
    import subprocess

    from conftest import BSS

    path = tmp_path / "links.csv"
    path.write_text('uid=51,"eid=id5:x,y"\nuid=51,uid=0\nuid=51\nuid=52,uid=51,-1\n')
    dry = subprocess.run(
        [str(BSS), "validate", str(path), "--member-id", "7", "--file-type", "links"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    fields = json.loads(dry.stdout)
    assert (fields["num_valid"], fields["num_invalid_user"], fields["num_invalid_format"]) == (
        2,
        1,
        1,
    )
    no_registry = subprocess.run(
        [str(BSS), "validate", str(path), "--member-id", "7"], capture_output=True, text=True
    )
    assert no_registry.returncode == 2
    assert no_registry.stderr == "error: --segments is required for a segment file\n"

    srv = bss_server()
    Api(srv.url, ADMIN_USER, ADMIN_PASSWORD).member(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSS_")}
    env.update(BSS_URL=srv.url, BSS_USERNAME=ADMIN_USER, BSS_PASSWORD=ADMIN_PASSWORD)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    out = subprocess.run(
        [str(BSS), "upload", str(path), "--member-id", "7", "--file-type", "links", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    job = json.loads(out.stdout)
    assert job["file_type"] == "links" and job["phase"] == "completed"
    assert (job["num_valid"], job["num_invalid_user"], job["num_invalid_format"]) == (2, 1, 1)
    admin = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    assert admin.ok("GET", "/user-links", params={"member_id": 7, "uid": 51})["ids"] == [
        "uid=51",
        "eid=id5:x,y",
    ]


def test_passive_files_named_links_are_link_files(tmp_path) -> None:
    from passive_util import Pipeline

    from bss.db import now_s
    from bss.passive.scanner import passive_file_type

    assert passive_file_type("submitted/crm.links.csv.gz") == "links"
    assert passive_file_type("submitted/a/today.LINKS") == "links"
    assert passive_file_type("submitted/links.csv") == "segments"
    assert passive_file_type("submitted/mylinks.txt") == "segments"
    pipeline = Pipeline(tmp_path / "data", max_file_bytes=10_000)
    try:
        pipeline.add_member(8002)
        folder = tmp_path / "data" / "passive" / "8002" / "submitted"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "crm.links.csv").write_text('uid=71,"ext=8002:A,B"\nuid=71,null\n')
        (folder / "users.txt").write_bytes(pipeline.good_file(8002, 2))
        scanner = pipeline.scanner()
        scanner.scan_once()
        scanner.drain(timeout=120)
        _, listed = pipeline.service.list_jobs(8002)
        jobs_by_key = {job["source_key"]: job for job in listed}
        link_job = jobs_by_key["submitted/crm.links.csv"]
        assert link_job["file_type"] == "links" and link_job["phase"] == "completed"
        assert (link_job["num_valid"], link_job["num_invalid_user"]) == (1, 1)
        assert jobs_by_key["submitted/users.txt"]["file_type"] == "segments"
        found = pipeline.stores.get().top_links([(1, "71")], [8002], now_s(), 25)
        assert [(x.kind, x.key) for x in found[0]] == [(4, "8002:A,B")]
    finally:
        pipeline.close()
