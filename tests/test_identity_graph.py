"""The identity graph in the store (LMDB, one Redis, a Redis Cluster), held to a plain
reference: the seq rule per (scope, pair), tombstones, expiry, ranking and caps of
`top_links`, and the expansion built on it (bss.identity.graph)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest
from cluster_util import (  # noqa: F401 - fixtures
    Stores,
    opened,
    redis_cluster_fixture,
    redis_single_fixture,
    stores_fixture,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bss.identity.graph import (
    Caps,
    Expansion,
    expand,
    expand_many,
    expanded_segments,
    related_ids,
)
from bss.identity.ids import format_id
from bss.store import APPLY_SCHEMA
from bss.store.base import LINK_SCHEMA, SHARED_SCOPE, Link

NOW = 1_800_000_000
#: Users of the tests: a few of each kind, keys with commas and colons too.
USERS: list[tuple[int, str]] = [
    (1, "7652266028043224430"),
    (1, "12"),
    (2, "idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc"),
    (3, "aaid:ab"),
    (4, "456:PS,123"),
    (4, "457:PS123"),
    (5, "liveramp.com:XY123"),
    (6, "1:2:10.0.0.1"),
]
MEMBER = 456


@dataclass
class LinkRow:
    scope: int
    a_kind: int
    a_key: str
    b_kind: int
    b_key: str
    asserted_at: int
    expires_at: int
    removed: bool
    seq: int


def table(rows: list[LinkRow]) -> pa.Table:
    return pa.Table.from_pylist([vars(r) for r in rows], schema=LINK_SCHEMA)


class Reference:
    """The graph's rules, stated plainly."""

    def __init__(self) -> None:
        self.links: dict[tuple[int, frozenset[tuple[int, str]]], LinkRow] = {}

    def apply(self, rows: list[LinkRow]) -> None:
        for row in rows:
            key = (row.scope, frozenset({(row.a_kind, row.a_key), (row.b_kind, row.b_key)}))
            old = self.links.get(key)
            if old is None or old.seq < row.seq:
                self.links[key] = row

    def purge(self, now: int) -> None:
        self.links = {k: r for k, r in self.links.items() if r.expires_at > now}

    def delete_scope(self, scope: int) -> None:
        self.links = {k: r for k, r in self.links.items() if k[0] != scope}

    def top(self, user: tuple[int, str], scopes: list[int], now: int, limit: int) -> list[Link]:
        found = []
        for (scope, pair), r in self.links.items():
            live = not r.removed and r.asserted_at <= now < r.expires_at
            if scope in scopes and user in pair and live:
                (other,) = pair - {user}
                found.append(Link(*other, scope, r.seq, r.asserted_at, r.expires_at))
        found.sort(key=lambda link: (-link.seq, link.scope, link.kind, link.key))
        return found[:limit]

    def expand(
        self, starts: list[tuple[int, str]], scopes: list[int], now: int, caps: Caps
    ) -> tuple[list[tuple[tuple[int, str], int, bool]], list[tuple[Any, Any, int]]]:
        """[(user, hop, needed a shared link)] in the order first reached, and the links
        followed between reached IDs [(lesser end, greater end, scope)] in the order first
        read, each once."""
        followed: list[tuple[Any, Any, int]] = []
        order: list[tuple[int, str]] = []
        hop_of: dict[tuple[int, str], int] = {}
        shared: dict[tuple[int, str], bool] = {}
        for user in starts:
            if user not in hop_of and len(order) < caps.max_ids:
                order.append(user)
                hop_of[user], shared[user] = 0, False
        level = list(order)
        for hop in range(1, caps.max_hops + 1):
            new: list[tuple[int, str]] = []
            for user in level:
                for link in self.top(user, scopes, now, caps.links_per_id):
                    other = (link.kind, link.key)
                    needs = shared[user] or link.scope == SHARED_SCOPE
                    if other not in hop_of and len(order) < caps.max_ids:
                        order.append(other)
                        new.append(other)
                        hop_of[other], shared[other] = hop, needs
                    elif hop_of.get(other) == hop:
                        shared[other] = shared[other] and needs
                    pair = (min(user, other), max(user, other), link.scope)
                    if other in hop_of and pair not in followed:
                        followed.append(pair)
            level = new
        return [(u, hop_of[u], shared[u]) for u in order], followed


def link_rows() -> Any:
    return st.lists(
        st.builds(
            LinkRow,
            scope=st.sampled_from([SHARED_SCOPE, MEMBER, 457]),
            a_kind=st.just(0),
            a_key=st.just(""),
            b_kind=st.just(0),
            b_key=st.just(""),
            asserted_at=st.integers(NOW - 100, NOW + 50),
            expires_at=st.integers(NOW - 10, NOW + 400),
            removed=st.booleans(),
            seq=st.integers(1, 60),
        ).flatmap(
            lambda row: st.tuples(
                st.just(row), st.sampled_from(range(len(USERS))), st.sampled_from(range(len(USERS)))
            )
        ),
        min_size=1,
        max_size=12,
    )


def _rows(drawn: list[tuple[LinkRow, int, int]]) -> list[LinkRow]:
    rows = []
    for row, a, b in drawn:
        if a == b:
            continue
        row.a_kind, row.a_key = USERS[a]
        row.b_kind, row.b_key = USERS[b]
        rows.append(row)
    return rows


ops = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), link_rows()),
        st.tuples(st.just("advance"), st.integers(1, 200)),
        st.tuples(st.just("purge")),
        st.tuples(st.just("delete_scope"), st.sampled_from([MEMBER, 457])),
    ),
    min_size=1,
    max_size=8,
)
CAPS = [Caps(2, 25, 50), Caps(2, 2, 5), Caps(1, 3, 50), Caps(3, 1, 4)]


def check(store: Any, ref: Reference, now: int) -> None:
    for scopes in ([MEMBER, SHARED_SCOPE], [SHARED_SCOPE], [457]):
        for limit in (25, 2):
            got = store.top_links(USERS, scopes, now, limit)
            assert got == [ref.top(u, scopes, now, limit) for u in USERS], (scopes, limit)
    groups = [[USERS[0]], [USERS[4], USERS[2]], [USERS[7]]]
    for caps in CAPS:
        for scopes in ([MEMBER, SHARED_SCOPE], [SHARED_SCOPE]):
            want = [ref.expand(starts, scopes, now, caps) for starts in groups]
            got = [expand(store, starts, scopes, now, caps) for starts in groups]
            # Many expansions read hop by hop together answer as each alone.
            together = expand_many(store, groups, scopes, now, caps)
            for one in (got, together):
                assert [[((r.kind, r.key), r.hop, r.shared) for r in e.ids] for e in one] == [
                    ids for ids, _ in want
                ]
                assert [[(f.a, f.b, f.link.scope) for f in e.links] for e in one] == [
                    links for _, links in want
                ]


@given(script=ops, shuffle=st.randoms(use_true_random=False))
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_links_match_reference(stores: Stores, script: list[Any], shuffle: random.Random) -> None:
    ref = Reference()
    now = NOW
    with opened(stores) as store:
        for op in script:
            if op[0] == "apply":
                rows = _rows(op[1])
                if not rows:
                    continue
                shuffle.shuffle(rows)
                half = len(rows) // 2
                # Two batches of one job in either order (the embedded store merges them
                # as runs), then a replay of all: the seq rule decides.
                store.apply_links_many(iter([table(rows[half:]), table(rows[:half])]))
                ref.apply(rows)
                check(store, ref, now)
                store.apply_links(table(rows))
            elif op[0] == "advance":
                now += op[1]
            elif op[0] == "purge":
                store.purge_expired(now)
                ref.purge(now)
            else:
                store.delete_scope_links(op[1])
                ref.delete_scope(op[1])
            check(store, ref, now)


def _link(a: int, b: int, seq: int, *, scope: int = MEMBER, removed: bool = False) -> LinkRow:
    return LinkRow(scope, *USERS[a], *USERS[b], NOW - 10, NOW + 1000, removed, seq)


def test_removed_link_stays_removed_under_replay_and_caps_bound_expansion(
    stores: Stores,
) -> None:
    with opened(stores) as store:
        store.apply_links(table([_link(0, 2, 5), _link(0, 4, 6), _link(2, 6, 7)]))
        store.apply_links(table([_link(0, 2, 9, removed=True)]))
        store.apply_links(table([_link(0, 2, 5)]))  # an older assertion replayed
        assert [(x.kind, x.key) for x in store.top_links([USERS[0]], [MEMBER], NOW, 25)[0]] == [
            USERS[4]
        ]
        # Another member's reads never follow member 456's links.
        assert store.top_links([USERS[0]], [457, SHARED_SCOPE], NOW, 25) == [[]]
        store.apply_links(table([_link(0, 2, 10), _link(2, 7, 3, scope=SHARED_SCOPE)]))
        got = related_ids(store, [USERS[0]], MEMBER, NOW, Caps(2, 25, 50))
        assert [(format_id(r.kind, r.key), r.hop, Expansion.via(r)) for r in got.ids] == [
            ("uid=7652266028043224430", 0, "uid=7652266028043224430"),
            (
                "device=idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc",
                1,
                "device=idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc",
            ),
            ("ext=456:PS,123", 1, "ext=456:PS,123"),
            ("eid=liveramp.com:XY123", 2, "eid=liveramp.com:XY123"),
            ("xfa=1:2:10.0.0.1", 2, "shared"),
        ]
        # One hop, one link per ID: the most recently asserted link only.
        got = related_ids(store, [USERS[0]], MEMBER, NOW, Caps(1, 1, 50))
        assert [(r.kind, r.key) for r in got.ids] == [USERS[0], USERS[2]]
        # Expiry: the links are gone at their expires_at.
        assert related_ids(store, [USERS[0]], MEMBER, NOW + 1000, Caps()).ids[1:] == []


def test_expanded_segments_take_the_latest_expiry_with_via(stores: Stores) -> None:
    def membership(user: int, segment: int, expires: int) -> dict[str, Any]:
        kind, key = USERS[user]
        return {
            "user_kind": kind,
            "user_key": key,
            "segment_id": segment,
            "value": None,
            "timestamp": NOW - 100,
            "expires_at": expires,
            "removed": False,
            "seq": 1,
        }

    with opened(stores) as store:
        store.apply(
            pa.Table.from_pylist(
                [membership(0, 5, NOW + 50), membership(2, 5, NOW + 90), membership(2, 6, NOW + 9)],
                schema=APPLY_SCHEMA,
            )
        )
        store.apply_links(table([_link(0, 2, 1)]))
        expansion, segments = expanded_segments(store, [USERS[0]], MEMBER, NOW, Caps())
        assert [(m.segment_id, m.expires_at, via) for m, via in segments] == [
            (5, NOW + 90, "device=idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc"),
            (6, NOW + 9, "device=idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc"),
        ]
        _, segments = expanded_segments(store, [USERS[0]], 457, NOW, Caps())
        assert [(m.segment_id, via) for m, via in segments] == [(5, "uid=7652266028043224430")]
        assert len(expansion.links) == 1


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("uid=7652266028043224430", (1, "7652266028043224430")),
        ("device=3:6D92078A", (2, "idfa:6d92078a")),
        ("ifa=IDFA:AB-CD", (3, "idfa:ab-cd")),
        ("ext=456:PS123", (4, "456:PS123")),
        ("eid=LiveRamp.com:XY123", (5, "liveramp.com:XY123")),
        ("xfa=1:2:10.0.0.1", (6, "1:2:10.0.0.1")),
    ],
)
def test_id_text_forms_round_trip(text: str, want: tuple[int, str]) -> None:
    from bss.identity.ids import parse_id

    kind, key = parse_id(text)
    assert (int(kind), key) == want
    assert parse_id(format_id(kind, key)) == (kind, key)


@pytest.mark.parametrize(
    "text",
    [
        "uid=0",
        "uid=-1",
        "ifa=idfa:00000000-0000-0000-0000-000000000000",
        "device=idfa:NULL",
        "ext=456:unknown",
        "eid=liveramp.com:anonymous",
        "eid=liveramp.com:Invalid",
        "ext=456:",
        "uid=",
    ],
)
def test_junk_ids_are_refused(text: str) -> None:
    from bss.identity.ids import InvalidId, parse_id

    with pytest.raises(InvalidId):
        parse_id(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uid=18446744073709551616", "between 1 and 2^64-1"),
        ("uid=12a", "between 1 and 2^64-1"),
        ("device=foo:12", "domain must be one of"),
        ("ext=x:PS", "member id"),
        ("cookie=12", "not an ID of the form"),
        ("uid=1\x00", "control character"),
        ("xfa=a:2:1.2.3.4", "device_make_id"),
        # digits outside ASCII: int() refuses "²" (a 500 once) and reads "٣" as 3
        ("uid=²", "between 1 and 2^64-1"),
        ("uid=٣", "between 1 and 2^64-1"),
        ("ext=٣:PS", "member id"),
        ("xfa=1:²:1.2.3.4", "device_make_id"),
    ],
)
def test_bad_ids_say_why(text: str, message: str) -> None:
    from bss.identity.ids import InvalidId, JunkId, parse_id

    with pytest.raises(InvalidId, match=re.escape(message)) as info:
        parse_id(text)
    assert not isinstance(info.value, JunkId)


def test_remove_links_of_tombstones_every_live_link_in_one_scope(stores: Stores) -> None:
    from bss.identity.links import link_batch, remove_links_of

    with opened(stores) as store:
        store.apply_links(
            link_batch(
                MEMBER,
                [
                    (USERS[0], USERS[2], False),
                    (USERS[3], USERS[0], False),
                    (USERS[2], USERS[3], False),
                ],
                asserted_at=NOW - 5,
                ttl_days=180,
                first_seq=10,
            )
        )
        store.apply_links(table([_link(0, 4, 11, scope=SHARED_SCOPE)]))
        batch = remove_links_of(store, [USERS[0]], MEMBER, seq=100, now=NOW, ttl_days=180)
        assert batch.num_rows == 2
        assert store.top_links([USERS[0], USERS[2]], [MEMBER, SHARED_SCOPE], NOW, 25) == [
            [Link(*USERS[4], SHARED_SCOPE, 11, NOW - 10, NOW + 1000)],
            [Link(*USERS[3], MEMBER, 12, NOW - 5, NOW - 5 + 180 * 86400)],
        ]
        # A replay of the original assertions does not bring them back.
        store.apply_links(
            link_batch(
                MEMBER,
                [(USERS[0], USERS[2], False)],
                asserted_at=NOW - 5,
                ttl_days=180,
                first_seq=10,
            )
        )
        assert store.top_links([USERS[0]], [MEMBER], NOW, 25) == [[]]


#: Pieces IDs are made of in the property test of `normal_ids`: forms in both cases, parts
#: that parse_id normalises (case, leading zeros, legacy device types, spaces), junk.
_ID_PIECES = st.sampled_from(
    ["uid=", "UID=", "device=", "ifa=", "ext=", "eid=", "xfa=", "idfa", "IDFA", "aaid", "3",
     "foo", ":", "=", "0", "00", "007", "1", "42", "18446744073709551615", "18446744073709551616",
     "99999999999999999999", "-", ".", "-1", "null", "NULL", "Unknown", "ab", "AB", " ", "\t",
     "é", "\x00", "\xa0", "\u2028", "x" * 600]
)  # fmt: skip


_FORMS = st.sampled_from(["uid=", "device=", "ifa=", "ext=", "eid=", "xfa=", "Ifa=", ""])
_HEADS = st.sampled_from(["idfa", "IDFA", "aaid", "3", "foo", "LiveRamp.com", "456", "0", ""])
_PARTS = st.lists(_ID_PIECES, max_size=3).map("".join)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.tuples(_FORMS, _HEADS, st.just(":"), _PARTS).map("".join),
        st.lists(_ID_PIECES, min_size=1, max_size=6).map("".join),
    )
)
def test_ids_taken_vectorised_are_those_parse_id_takes_unchanged(text: str) -> None:
    """Link files take IDs already in their normal form in bulk (bss.identity.ids.normal_ids),
    parse_id takes plain ones by a short path: each must be exactly what every rule of
    parse_id makes of it (a valid ID unchanged, for normal_ids)."""
    import polars as pl

    from bss.identity.ids import InvalidId, normal_ids, parse_id, parse_id_fully

    normal, kind, key = normal_ids(pl.col("text"))
    row = pl.DataFrame({"text": [text]}).select(normal=normal, kind=kind, key=key).row(0)
    try:
        parsed: tuple[int, str] | None = parse_id_fully(text)
    except InvalidId as exc:
        parsed = None
        # parse_id's short path leaves every refusal, and its message, to the full one.
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            parse_id(text)
    else:
        assert parse_id(text) == parsed
    if row[0]:
        assert parsed is not None and (int(parsed[0]), parsed[1]) == (row[1], row[2])
        assert text == format_id(*parsed)


def test_ids_in_their_normal_form_are_taken_vectorised() -> None:
    import polars as pl

    from bss.identity.ids import normal_ids

    texts = [
        "uid=7652266028043224430",
        "device=idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc",
        "ifa=aaid:ab-cd",
        "ext=456:PS,123".replace(",", ""),
        "eid=liveramp.com:XY123",
        # parse_id's business: a case to fold, a legacy type, a uid of 20 digits, junk
        "ifa=IDFA:ab",
        "device=3:ab",
        "uid=18446744073709551615",
        "ext=456:NULL",
    ]
    normal, kind, key = normal_ids(pl.col("text"))
    got = pl.DataFrame({"text": texts}).select(normal=normal, kind=kind, key=key).rows()
    assert [row[0] for row in got] == [True] * 5 + [False] * 4
    assert [row[1:] for row in got[:5]] == [
        (1, "7652266028043224430"),
        (2, "idfa:6d92078a-8246-4ba4-ae5b-76104861e7dc"),
        (3, "aaid:ab-cd"),
        (4, "456:PS123"),
        (5, "liveramp.com:XY123"),
    ]


@pytest.mark.parametrize("value", ["²", "٣", "0", "18446744073709551616", "12a", ""])
def test_a_cookie_holding_no_platform_uid_is_none(value: str) -> None:
    """The ID-sync cookie is read as a uid only when it is one: "²" made getuid a 500."""
    from bss.identity.sync import cookie_uid

    assert cookie_uid(value) is None
    assert cookie_uid("42") == "42"
