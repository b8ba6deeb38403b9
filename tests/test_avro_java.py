"""Avro files written by the Java Avro library, the way avro-tools `fromjson` writes them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bss.formats.avro import PUBLISHED_SCHEMA_FILE
from bss.formats.config import BatchSegmentConfig
from bss.formats.records import UserKind
from bss.ingest.engine import MAX_LIFETIME_SECONDS, ingest_file
from bss.ingest.registry import SegmentRegistry
from bss.store.base import JOB_SEQ_SPAN
from bss.store.keyvalue import LmdbStore

JARS = [
    "avro",
    "jackson-core-asl",
    "jackson-mapper-asl",
    "commons-compress",
    "slf4j-api",
    "slf4j-nop",
    "snappy-java",
    "xz",
    "paranamer",
]
CLASSPATH = ":".join(f"/usr/share/java/{name}.jar" for name in JARS)
SCHEMA = Path(__file__).parents[1] / "src" / "bss" / "formats" / "schema" / PUBLISHED_SCHEMA_FILE
NOW = 1_700_000_000

# Java's JSON encoding names the union branch: {"long": N} or {"xandr.avro.<record>": {...}}.
RECORDS = [
    '{"uid": {"long": 5727816213491965430}, "segments": [{"id": 10, "code": "", "member_id": 0, "expiration": 1440, "timestamp": 0, "value": 7}]}',
    '{"uid": {"xandr.avro.device_id": {"id": "AEBE52E7-03EE-455A-B3C4-E57283966239", "domain": "idfa"}}, "segments": [{"id": 10, "code": "", "member_id": 0, "expiration": 0, "timestamp": 0, "value": 0}, {"id": 11, "code": "", "member_id": 0, "expiration": -1, "timestamp": 0, "value": 0}]}',
    '{"uid": {"xandr.avro.eid": {"source": "netid.de", "id": "abc"}}, "segments": [{"id": 0, "code": "shoppers", "member_id": 958, "expiration": 60, "timestamp": 0, "value": 0}]}',
]


@pytest.fixture(scope="module")
def java_writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("javac") or not Path("/usr/share/java/avro.jar").exists():
        pytest.skip("needs javac and Debian's libavro-java (.ci/run installs them)")
    out = tmp_path_factory.mktemp("java")
    src = Path(__file__).parent / "java" / "AvroFromJson.java"
    subprocess.run(
        ["javac", "-cp", CLASSPATH, "-d", str(out), str(src)], check=True, capture_output=True
    )
    return out


@pytest.mark.parametrize("codec", ["deflate", "snappy", "null"])
def test_java_written_files_are_read(java_writer: Path, tmp_path: Path, codec: str) -> None:
    (tmp_path / "in.json").write_text("\n".join(RECORDS) + "\n")
    avro_file = tmp_path / "out.avro"
    subprocess.run(
        [
            "java",
            "-cp",
            f"{CLASSPATH}:{java_writer}",
            "AvroFromJson",
            str(SCHEMA),
            str(tmp_path / "in.json"),
            str(avro_file),
            codec,
        ],
        check=True,
        capture_output=True,
    )
    assert avro_file.read_bytes()[:4] == b"Obj\x01"
    reg = SegmentRegistry.from_records(
        [
            {"id": 10, "member_id": 958},
            {"id": 11, "member_id": 958},
            {"id": 12, "code": "Shoppers", "member_id": 958},
        ]
    )
    store = LmdbStore(tmp_path / "m.lmdb")
    result = ingest_file(
        avro_file,
        member_id=958,
        seq_base=JOB_SEQ_SPAN,
        config=BatchSegmentConfig(),
        registry=reg,
        store=store,
        now=NOW,
        max_decompressed_bytes=1 << 30,
    )
    assert result.error_code is None
    assert (result.counters.num_valid, result.counters.num_valid_user) == (4, 3)

    def live(kind: UserKind, key: str) -> dict[int, tuple]:
        return {m.segment_id: (m.value, m.expires_at) for m in store.user_segments(kind, key, NOW)}

    assert live(UserKind.ANID, "5727816213491965430") == {10: (7, NOW + 1440 * 60)}
    assert live(UserKind.DEVICE, "idfa:aebe52e7-03ee-455a-b3c4-e57283966239") == {
        10: (0, NOW + MAX_LIFETIME_SECONDS)
    }
    assert live(UserKind.EID, "netid.de:abc") == {12: (0, NOW + 3600)}
    store.close()
