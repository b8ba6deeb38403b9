"""Property-based: generated files with a known truth; every counter and the final store agree.

Each generated line carries its truth (well formed or not, user valid or not, what each SEG
block should do), and a plain-Python model of the documented rules derives the expected
counters and memberships from that truth, never from the engine's own code.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_util import (  # noqa: F401 - fixtures
    Stores,
    redis_cluster_fixture,
    redis_single_fixture,
    stores_fixture,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bss.formats.config import load_config
from bss.formats.records import UserKind
from bss.ingest.engine import MAX_LIFETIME_SECONDS, ingest_file
from bss.ingest.registry import SegmentRegistry
from bss.store.base import JOB_SEQ_SPAN, MembershipStore
from bss.store.keyvalue import LmdbStore

NOW = 1_700_000_000
MEMBER = 958
OTHER = 959
CONFIG = load_config({"segment_fields": "[SEG_ID,EXPIRATION,VALUE]"})
UNKNOWN_SEGMENTS = (90, 91)


@dataclass(frozen=True)
class Block:
    seg: int
    expiration: int
    value: int
    removal: bool


@dataclass(frozen=True)
class Line:
    text: str
    malformed: bool
    uid: str | None  # canonical key when the user ID is valid
    blocks: tuple[Block, ...]


segments_st = st.lists(
    st.tuples(
        st.sampled_from(["active", "active", "inactive"]),
        st.sampled_from([MEMBER, MEMBER, OTHER]),
        st.sampled_from([None, None, 30, 2880]),
    ),
    min_size=6,
    max_size=6,
)

block_st = st.builds(
    Block,
    seg=st.sampled_from([1, 2, 3, 4, 5, 6, *UNKNOWN_SEGMENTS]),
    expiration=st.sampled_from([-1, 0, 60, 1440, 300000, -7]),
    value=st.sampled_from([0, 5, 2147483647, 2147483648]),
    removal=st.booleans(),
)


@st.composite
def line_st(draw: st.DrawFn) -> Line:
    kind = draw(st.sampled_from(["good", "good", "good", "bad_user", "malformed"]))
    if kind == "malformed":
        text = draw(
            st.sampled_from(["x", "12,", "12,5", "12,5:0", "12,5:0:0:0", "12,5:a:0", "12,;5:0:0"])
        )
        return Line(text, True, None, ())
    blocks = draw(st.lists(block_st, min_size=1, max_size=5))
    adds = [b for b in blocks if not b.removal]
    removes = [b for b in blocks if b.removal]
    if not adds and not removes:
        return Line("x", True, None, ())
    blocks = tuple(adds + removes)
    if kind == "bad_user":
        uid_text, uid = draw(st.sampled_from(["0", "abc", "18446744073709551616", "-4"])), None
    else:
        n = draw(st.sampled_from([1, 2, 3, 18446744073709551615]))
        uid_text, uid = str(n), str(n)
    render = ";".join
    text = f"{uid_text}," + render(f"{b.seg}:{b.expiration}:{b.value}" for b in adds)
    if removes:
        text += "\t" + render(f"{b.seg}:{b.expiration}:{b.value}" for b in removes)
    return Line(text, False, uid, blocks)


@st.composite
def file_st(draw: st.DrawFn) -> list[Line]:
    lines = draw(st.lists(line_st(), min_size=1, max_size=40))
    # Sprinkle exact duplicates of earlier lines.
    for _ in range(draw(st.integers(0, 5))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(lines)))
    return lines


def model(lines: list[Line], segments: list[tuple[str, int, int | None]]):
    """The documented rules, applied one line at a time."""
    counts = dict.fromkeys(
        [
            "num_valid",
            "num_invalid_format",
            "num_valid_user",
            "num_invalid_user",
            "num_invalid_timestamp",
            "num_other_error",
        ],
        0,
    )
    dedup: dict[str, set[int]] = {
        k: set()
        for k in (
            "num_invalid_segment",
            "num_unauth_segment",
            "num_inactive_segment",
            "num_past_expiration",
        )
    }
    state: dict[tuple[str, int], tuple[bool, int, int]] = {}
    seen: set[str] = set()
    max_expiry = NOW + MAX_LIFETIME_SECONDS
    for line in lines:
        if line.malformed or line.text in seen:
            counts["num_invalid_format"] += 1
            continue
        seen.add(line.text)
        if line.uid is None:
            counts["num_invalid_user"] += 1
            continue
        counts["num_valid_user"] += 1
        for b in line.blocks:
            if b.seg in UNKNOWN_SEGMENTS:
                dedup["num_invalid_segment"].add(b.seg)
                continue
            seg_state, owner, _expire_minutes = segments[b.seg - 1]
            if owner != MEMBER:
                dedup["num_unauth_segment"].add(b.seg)
                continue
            if seg_state != "active":
                dedup["num_inactive_segment"].add(b.seg)
                continue
            if b.expiration < -1 or b.value > 2147483647:
                counts["num_other_error"] += 1
                continue
            effective = b.expiration  # always given in this file layout
            removed = b.removal or effective == -1
            expires = (
                max_expiry if (removed or effective == 0) else min(NOW + effective * 60, max_expiry)
            )
            counts["num_valid"] += 1
            state[(line.uid, b.seg)] = (removed, b.value, expires)
    counts.update({k: len(v) for k, v in dedup.items()})
    live = {}
    for (uid, seg), (removed, value, expires) in state.items():
        if not removed:
            live.setdefault(uid, {})[seg] = (value, expires)
    return counts, live


def _ingest(
    tmp: Path,
    content: bytes,
    reg: SegmentRegistry,
    chunk_bytes: int,
    store: MembershipStore | None = None,
):
    """Ingest `content` as one job into `store` (default: a fresh LMDB store in `tmp`); the
    caller closes the store."""
    path = tmp / "upload"
    path.write_bytes(content)
    store = store or LmdbStore(tmp / "m.lmdb")
    result = ingest_file(
        path,
        member_id=MEMBER,
        seq_base=JOB_SEQ_SPAN,
        config=CONFIG,
        registry=reg,
        store=store,
        now=NOW,
        max_decompressed_bytes=1 << 30,
        chunk_bytes=chunk_bytes,
    )
    return store, result


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(lines=file_st(), segments=segments_st, chunk_bytes=st.sampled_from([32, 200, 1 << 20]))
def test_counters_and_store_match_the_model(stores: Stores, lines, segments, chunk_bytes) -> None:
    """On every store engine (LMDB, one Redis, a Redis Cluster)."""
    reg = SegmentRegistry.from_records(
        {"id": i + 1, "member_id": owner, "state": state, "expire_minutes": exp}
        for i, (state, owner, exp) in enumerate(segments)
    )
    expected_counts, expected_live = model(lines, segments)
    with tempfile.TemporaryDirectory() as tmp:
        text = "\n".join(line.text for line in lines) + "\n"
        store, result = _ingest(Path(tmp), text.encode("latin-1"), reg, chunk_bytes, stores.fresh())
        uids = {line.uid for line in lines if line.uid}
        live = {}
        for uid in uids:
            got = {
                m.segment_id: (m.value, m.expires_at)
                for m in store.user_segments(UserKind.ANID, uid, NOW)
            }
            if got:
                live[uid] = got
        store.close()
    counters = result.counters
    got_counts = {name: getattr(counters, name) for name in expected_counts}
    assert got_counts == expected_counts
    assert live == expected_live
    assert result.error_code is None
    n_errors = len(result.error_log_lines.splitlines()) if result.error_log_lines else 0
    assert n_errors == min(
        200,
        counters.num_invalid_format
        + counters.num_invalid_user
        + _pair_problem_entries(lines, segments),
    )


def _pair_problem_entries(lines: list[Line], segments) -> int:
    """One error entry per rejected SEG block of a unique, well-formed line with a valid user."""
    seen: set[str] = set()
    total = 0
    for line in lines:
        if line.malformed or line.text in seen:
            continue
        seen.add(line.text)
        if line.uid is None:
            continue
        for b in line.blocks:
            if b.seg in UNKNOWN_SEGMENTS:
                total += 1
                continue
            seg_state, owner, _ = segments[b.seg - 1]
            if (
                owner != MEMBER
                or seg_state != "active"
                or b.expiration < -1
                or b.value > 2147483647
            ):
                total += 1
    return total


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blob=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.text(alphabet=st.sampled_from(list("0123456789,;:\t^-x \r")), max_size=30),
            max_size=30,
        ).map(lambda ls: "\n".join(ls).encode("latin-1")),
    ),
    chunk_bytes=st.sampled_from([16, 4096]),
)
def test_arbitrary_bytes_never_fail_the_process(blob: bytes, chunk_bytes: int) -> None:
    """Whatever the bytes, the job ends with counters that account for every line."""
    reg = SegmentRegistry.from_records([{"id": i, "member_id": MEMBER} for i in range(1, 10)])
    with tempfile.TemporaryDirectory() as tmp:
        store, result = _ingest(Path(tmp), blob, reg, chunk_bytes)
        store.close()
    c = result.counters
    if result.error_code is None:
        assert result.lines_read == c.num_valid_user + c.num_invalid_user + c.num_invalid_format
        assert result.lines_read <= blob.count(b"\n") + 1  # never more rows than lines
        assert c.num_valid == result.pairs_added + result.pairs_removed
    else:
        assert result.error_message
