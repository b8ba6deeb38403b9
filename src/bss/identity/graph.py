"""Related IDs: the bounded, deterministic expansion of user IDs through their links.

The functions other parts call in process:

- `related_ids(store, users, member_id, now, caps)` -> `Expansion`: the IDs related to
  `users` in member `member_id`'s reads (its own links and shared links; shared links only
  when `member_id` is None), each with how it was reached. `Expansion.via(r)` is what an
  answer shows for it: the ID's text form, or ``"shared"`` when a shared link was needed.
- `expand(store, users, scopes, now, caps)`: the same over explicit link scopes (GET
  /user-links shows a member its own links only).
- `expanded_segments(store, users, member_id, now, caps)`: the live memberships of every
  related ID, each segment once (the membership that expires last), with its `via`.
- `expand_many` / `expanded_segments_many`: the same for many groups of IDs at once (one
  store read per hop for all of them), each group answered as if alone.
- `remove_links_of(store, users, scope, seq, now, ttl_days)` (bss.identity.links): remove
  every live link of some IDs in one scope, as tombstones under the seq rule (opt-outs).

The expansion is a pure function of the live links in the reader's scopes: from the given
IDs, breadth first, at most `caps.max_hops` hops; at each ID its `caps.links_per_id` most
recently asserted live links (highest seq first: seqs are handed out in the order the
service first applied writes); the IDs in the order first reached, stopping once
`caps.max_ids` IDs (the given ones included) are reached. It never depends on batch
boundaries, replays, the order regions applied things or which process applied them. Each
hop is one `top_links` call on the store (one round trip per master on Redis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from bss.identity.ids import format_id
from bss.store.base import SHARED_SCOPE, Link, Membership, MembershipStore

User = tuple[int, str]
#: Builds a named tuple without its Python-level __new__: several per link followed.
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class Caps:
    """BSS_LINK_MAX_HOPS, BSS_LINKS_PER_ID, BSS_CLUSTER_MAX_IDS."""

    max_hops: int = 2
    links_per_id: int = 25
    max_ids: int = 50


class Reached(NamedTuple):
    kind: int
    key: str
    #: Hops from the nearest given ID (0 for the given IDs).
    hop: int
    #: Every way it was first reached (at its hop) needed a shared link.
    shared: bool


class FollowedLink(NamedTuple):
    """A link the expansion followed, between two reached IDs."""

    a: User
    b: User
    link: Link


class Expansion:
    """The IDs an expansion reached (`ids`, in the order first reached) and the links it
    followed between them (`links`). The links are put together when first asked for: most
    readers (lookups, OpenRTB) want only the IDs, and a link is read from both of its ends."""

    __slots__ = ("_found", "_read", "_links")

    def __init__(self, found: dict[User, Reached], read: list[tuple[User, list[Link]]]) -> None:
        #: Each reached ID -> how, in the order first reached.
        self._found = found
        #: Each ID whose links were read, with those links (ranked, capped), in read order.
        self._read = read
        self._links: list[FollowedLink] | None = None

    @property
    def ids(self) -> list[Reached]:
        return list(self._found.values())

    @property
    def links(self) -> list[FollowedLink]:
        """Each link between two reached IDs that a read took, once, in the order first
        read. A link read is between reached IDs exactly when its other end was reached:
        the expansion only stops adding IDs once it holds `max_ids`, and never restarts."""
        if self._links is None:
            found, seen, followed = self._found, set(), []
            for user, links in self._read:
                for link in links:
                    other = link[:2]
                    if other not in found:
                        continue
                    key = (user, other, link[2]) if user <= other else (other, user, link[2])
                    if key not in seen:
                        seen.add(key)
                        followed.append(_new(FollowedLink, (key[0], key[1], link)))
            self._links = followed
        return self._links

    @staticmethod
    def via(reached: Reached) -> str:
        """What an answer names as a segment's source: the ID, or "shared" when a shared
        link was needed to reach it."""
        return "shared" if reached.shared else format_id(reached.kind, reached.key)


def scopes_of(member_id: int | None) -> list[int]:
    """The link scopes a member's reads follow: its own and the shared ones."""
    return [SHARED_SCOPE] if member_id is None else [member_id, SHARED_SCOPE]


def related_ids(
    store: MembershipStore, users: list[User], member_id: int | None, now: int, caps: Caps
) -> Expansion:
    """The IDs related to `users` in member `member_id`'s reads (see the module docstring)."""
    return expand(store, users, scopes_of(member_id), now, caps)


def expand(
    store: MembershipStore, users: list[User], scopes: list[int], now: int, caps: Caps
) -> Expansion:
    """Breadth-first expansion of `users` through the live links of `scopes`."""
    return expand_many(store, [users], scopes, now, caps)[0]


class _Walk:
    """One expansion under way."""

    def __init__(self, users: list[User], caps: Caps) -> None:
        self.found: dict[User, Reached] = {}
        for user in users:
            if user not in self.found and len(self.found) < caps.max_ids:
                self.found[user] = _new(Reached, (user[0], user[1], 0, False))
        self.frontier = list(self.found)
        self.read: list[tuple[User, list[Link]]] = []

    def step(self, hop: int, per_user: list[list[Link]], max_ids: int) -> None:
        """Take the frontier's links (ranked, capped), in frontier order. The hot loop of
        every expansion: per link one slice and one dict look-up in the common case."""
        found, read, next_frontier = self.found, self.read, []
        for user, links in zip(self.frontier, per_user, strict=True):
            if not links:
                continue
            read.append((user, links))
            parent_shared = found[user].shared
            for link in links:
                other = link[:2]  # (kind, key), built by one slice
                reached = found.get(other)
                if reached is None:
                    if len(found) < max_ids:
                        shared = parent_shared or link[2] == SHARED_SCOPE
                        found[other] = _new(Reached, (link[0], link[1], hop, shared))
                        next_frontier.append(other)
                elif (
                    reached.hop == hop
                    and reached.shared
                    and not (parent_shared or link[2] == SHARED_SCOPE)
                ):
                    # Also reached at this hop through the member's own links only.
                    found[other] = reached._replace(shared=False)
        self.frontier = next_frontier


class _Reads(Protocol):
    """What an expansion reads: a store, or one snapshot of it (`snapshot_reads`)."""

    def top_links(
        self, users: Sequence[User], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]: ...

    def users_segments(self, users: Sequence[User], now: int) -> list[list[Membership]]: ...


def _reading(store: MembershipStore) -> AbstractContextManager[_Reads]:
    """One read transaction for a whole expansion where the store offers one (LMDB); the
    store itself otherwise (Redis: each hop one round trip per master anyway)."""
    snapshot = getattr(store, "snapshot_reads", None)
    return nullcontext(store) if snapshot is None else snapshot()


def expand_many(
    store: MembershipStore, groups: list[list[User]], scopes: list[int], now: int, caps: Caps
) -> list[Expansion]:
    """`expand` of each group of users, all groups' hops read together: one `top_links`
    call per hop however many groups (a POST /user-segments of 1000 users)."""
    with _reading(store) as reads:
        return _expand_many(reads, groups, scopes, now, caps)


def _expand_many(
    reads: _Reads, groups: list[list[User]], scopes: list[int], now: int, caps: Caps
) -> list[Expansion]:
    walks = [_Walk(users, caps) for users in groups]
    for hop in range(1, caps.max_hops + 1):
        if len(walks) == 1:
            walk = walks[0]
            if not walk.frontier:
                break
            walk.step(
                hop, reads.top_links(walk.frontier, scopes, now, caps.links_per_id), caps.max_ids
            )
            continue
        wanted = list(dict.fromkeys(u for walk in walks for u in walk.frontier))
        if not wanted:
            break
        read = dict(
            zip(wanted, reads.top_links(wanted, scopes, now, caps.links_per_id), strict=True)
        )
        for walk in walks:
            walk.step(hop, [read[u] for u in walk.frontier], caps.max_ids)
    return [Expansion(walk.found, walk.read) for walk in walks]


def expanded_segments_many(
    store: MembershipStore,
    groups: list[list[User]],
    member_id: int | None,
    now: int,
    caps: Caps,
    hidden: Callable[[int, str], bool] | None = None,
) -> list[tuple[Expansion, list[tuple[Membership, str]]]]:
    """`expanded_segments` of each group, with one read of memberships for all. An ID for
    which `hidden(kind, key)` is true (an opt-out standing for it) contributes no segment."""
    with _reading(store) as reads:
        expansions = _expand_many(reads, groups, scopes_of(member_id), now, caps)
        return _segments_of(reads, expansions, now, hidden)


def _segments_of(
    reads: _Reads,
    expansions: list[Expansion],
    now: int,
    hidden: Callable[[int, str], bool] | None,
) -> list[tuple[Expansion, list[tuple[Membership, str]]]]:
    if len(expansions) == 1:
        users = list(expansions[0]._found)
    else:
        users = list(dict.fromkeys(u for e in expansions for u in e._found))
    if hidden is not None:
        users = [u for u in users if not hidden(*u)]
    segments = dict(zip(users, reads.users_segments(users, now), strict=True))
    return [(e, _best(e, segments)) for e in expansions]


def _best(
    expansion: Expansion, segments: dict[User, list[Membership]]
) -> list[tuple[Membership, str]]:
    """Each segment once: the membership that expires last (on a tie the ID reached first),
    with its via (made for the winners only), by segment id."""
    best: dict[int, tuple[Membership, Reached]] = {}
    for user, reached in expansion._found.items():
        for m in segments.get(user, ()):
            held = best.get(m[0])  # segment_id
            if held is None or m[3] > held[0][3]:  # expires_at
                best[m[0]] = (m, reached)
    vias: dict[Reached, str] = {}  # most segments come from a few IDs: each named once
    winners = [best[s] for s in sorted(best)]
    return [(m, vias.get(r) or vias.setdefault(r, Expansion.via(r))) for m, r in winners]


def expanded_segments(
    store: MembershipStore,
    users: list[User],
    member_id: int | None,
    now: int,
    caps: Caps,
    hidden: Callable[[int, str], bool] | None = None,
) -> tuple[Expansion, list[tuple[Membership, str]]]:
    """The expansion of `users` and the live memberships of all its IDs but the `hidden`
    ones, each segment once (the membership that expires last; on a tie the ID reached
    first) with its `via`, by segment id."""
    return expanded_segments_many(store, [users], member_id, now, caps, hidden)[0]
