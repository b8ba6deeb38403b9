"""Opt-outs: a person's IDs leave a member's segments (or every member's) and stay out.

An opt-out (POST /user-optout, `bss optout add`, the ID sync's /optout cookie) reserves one
seq S and, in member M's scope (or platform-wide, scope 0):

- removes every membership of the IDs in M's segments (every segment, platform-wide): a
  removal at seq S per membership, in the local store at once and owed to every other
  region as a recorded batch, so the seq rule makes every region and every replay agree
  (the embedded store finds and removes them in one write transaction,
  `LmdbStore.remove_memberships`, committed after the database's rows);
- removes their links in M's scope (the shared scope, platform-wide), the same way;
- puts the IDs on the suppression list (as HMAC-SHA256 keyed hashes, never in the clear):
  a write for a suppressed ID (a file line, a real-time entry) with a seq above S is not
  applied while the opt-out stands; files count it in `num_opted_out` with an error-log
  line, real-time posts answer a warning.

A withdrawal (DELETE /user-optout) takes a seq W of its own: writes with a seq between S and
W stay suppressed (a replay decides as the first run did); writes above W apply again.
Suppressed IDs never appear in lookups or `/segment-members` exports (a read-time filter,
whatever a store region holds). The requests are kept as the audit trail (who, when, how
many IDs, how many memberships and links removed).

The functions other parts call:

- `is_opted_out(db, settings, member_id, user_kind, user_key)`: does a standing opt-out
  cover this ID in member `member_id`'s scope (None: platform-wide only)? For read paths
  (the OpenRTB read path calls it); cached per process for CACHE_SECONDS.
- `optout_platform_wide(db, settings, stores, user_kind, user_key, requested_by)`: opt one
  ID out for every member (the ID sync's /optout cookie).
- `opt_out(...)`, `withdraw(...)`, `list_requests(...)`: the API's.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from bss.db import fmt_ts, inserted_id, now_s, write_tx
from bss.identity.links import remove_links_of
from bss.lifecycle.models import optout_requests, optout_suppressions, service_secrets
from bss.lifecycle.tags import TagSet, id_tags, tag_keys
from bss.segments.models import segments
from bss.settings import Settings
from bss.store import APPLY_SCHEMA, MembershipStore, regions, seqs
from bss.store.base import SHARED_SCOPE

#: Scope of a platform-wide opt-out.
PLATFORM = 0
#: Users one request may name (the body of POST /user-segments).
MAX_USERS = 1000
#: How long a process trusts its copy of the suppression list (its own changes apply at once).
CACHE_SECONDS = 1.0
#: What a suppressed pair's error-log line and a real-time warning say.
REASON_OPTED_OUT = "the user opted out"
#: The extra job counter of suppressed pairs.
COUNTER = "num_opted_out"
_REMOVAL_LIFETIME = 180 * 24 * 3600
_NEVER = 1 << 62

User = tuple[int, str]


class StoreSource(Protocol):
    """The local store and the names of the other regions (bss.jobs.worker.StoreHandle)."""

    @property
    def remote_regions(self) -> list[str]: ...

    def get(self, region: str | None = None) -> MembershipStore: ...


def _secret(db: Engine, settings: Settings) -> bytes:
    if settings.optout_secret:
        return settings.optout_secret.encode()
    with db.connect() as conn:
        found = conn.execute(
            select(service_secrets.c.value).where(service_secrets.c.name == "optout")
        ).scalar()
    if found is None:
        try:
            with write_tx(db) as conn:
                conn.execute(
                    insert(service_secrets).values(name="optout", value=secrets.token_hex(32))
                )
        except IntegrityError:  # another process made it first: theirs stands
            pass
        return _secret(db, settings)
    return str(found).encode()


def _hash(secret: bytes, user_kind: int, user_key: str) -> str:
    return hmac.digest(secret, f"{user_kind}:{user_key}".encode(), "sha256").hex()


@dataclass(slots=True)
class _Interval:
    optout_seq: int
    withdrawn_seq: int  # _NEVER while the opt-out stands


class SuppressionList:
    """A process's copy of the suppression list: scope -> ID hash -> its intervals."""

    _by_engine: dict[int, SuppressionList] = {}
    _lock = threading.Lock()

    def __init__(self, db: Engine, settings: Settings) -> None:
        self.db = db
        self.secret = _secret(db, settings)
        self._loaded_at = -1.0
        self._scopes: dict[int, dict[str, list[_Interval]]] = {}
        #: The same, keyed by the raw digests: what write checks compare.
        self._digests: dict[int, dict[bytes, list[_Interval]]] = {}
        #: The newest request id when the list was read (None: never read).
        self._version: int | None = None
        self._tag_keys = tag_keys(self.secret)
        #: Every kept tag's bit, and the scopes with rows kept without one.
        self._tags = TagSet(np.zeros(0, np.int64))
        self._untagged: set[int] = set()

    @classmethod
    def of(cls, db: Engine, settings: Settings) -> SuppressionList:
        with cls._lock:
            found = cls._by_engine.get(id(db))
            if found is None or found.db is not db:
                found = cls._by_engine[id(db)] = cls(db, settings)
            return found

    def invalidate(self) -> None:
        self._loaded_at = -1.0
        self._version = None

    def _current(self) -> dict[int, dict[str, list[_Interval]]]:
        if time.monotonic() - self._loaded_at > CACHE_SECONDS:
            # Every opt-out and withdrawal adds a request row in the transaction that changes
            # the list: the list is read again only when the newest request is another.
            with self.db.connect() as conn:
                version = conn.execute(select(func.max(optout_requests.c.id))).scalar()
                if version != self._version or self._version is None:
                    self._load(conn)
                    self._version = version
            self._loaded_at = time.monotonic()
        return self._scopes

    def _load(self, conn: Connection) -> None:
        t = optout_suppressions
        rows = conn.execute(
            select(t.c.scope, t.c.id_hash, t.c.optout_seq, t.c.withdrawn_seq, t.c.id_tag)
        )
        scopes: dict[int, dict[str, list[_Interval]]] = {}
        tags: list[int] = []
        untagged: set[int] = set()
        for scope, id_hash, optout_seq, withdrawn_seq, id_tag in rows:
            interval = _Interval(optout_seq, _NEVER if withdrawn_seq is None else withdrawn_seq)
            scopes.setdefault(scope, {}).setdefault(id_hash, []).append(interval)
            if id_tag is None:
                untagged.add(scope)
            else:
                tags.append(id_tag)
        self._tags = TagSet(np.array(tags, dtype=np.int64))
        self._untagged = untagged
        self._scopes = scopes
        self._digests = {
            scope: {bytes.fromhex(h): iv for h, iv in ids.items()} for scope, ids in scopes.items()
        }

    def hash(self, user_kind: int, user_key: str) -> str:
        return _hash(self.secret, user_kind, user_key)

    def tags(self, users: Sequence[User]) -> list[int]:
        """The IDs' tags as kept."""
        kinds = np.array([kind for kind, _ in users], dtype=np.uint8)
        return id_tags(self._tag_keys, kinds, [key for _, key in users]).tolist()

    def _intervals(self, member_id: int | None, id_hash: str) -> Iterable[_Interval]:
        scopes = self._current()
        yield from scopes.get(PLATFORM, {}).get(id_hash, ())
        if member_id is not None and member_id != PLATFORM:
            yield from scopes.get(member_id, {}).get(id_hash, ())

    def standing(self, member_id: int | None, user_kind: int, user_key: str) -> bool:
        """An opt-out in the member's scope (or platform-wide) stands for this ID now."""
        if not self._current():
            return False
        id_hash = self.hash(user_kind, user_key)
        return any(i.withdrawn_seq == _NEVER for i in self._intervals(member_id, id_hash))

    def standing_scopes(self, user_kind: int, user_key: str) -> set[int]:
        """The scopes (member ids, PLATFORM) in which an opt-out stands for this ID now."""
        scopes = self._current()
        if not scopes:
            return set()
        id_hash = self.hash(user_kind, user_key)
        return {
            scope
            for scope, ids in scopes.items()
            if any(i.withdrawn_seq == _NEVER for i in ids.get(id_hash, ()))
        }

    def active_for(self, member_id: int) -> bool:
        scopes = self._current()
        return bool(scopes.get(PLATFORM) or scopes.get(member_id))

    def candidates(
        self, member_id: int, user_kind: np.ndarray, user_key: Sequence[str] | pa.Array
    ) -> np.ndarray:
        """Which of these IDs an opt-out in the member's scope (or platform-wide) may stand
        for: those whose tag is kept (tags.py), all when the scopes hold rows without a tag,
        none when they hold no row."""
        self._current()
        scopes = [PLATFORM] if member_id == PLATFORM else [PLATFORM, member_id]
        if not any(self._digests.get(scope) for scope in scopes):
            return np.zeros(len(user_kind), dtype=bool)
        if self._untagged.intersection(scopes):
            return np.ones(len(user_kind), dtype=bool)
        return self._tags.bitmap[id_tags(self._tag_keys, user_kind, user_key)]

    def write_mask(
        self,
        member_id: int,
        user_kind: np.ndarray,
        user_key: Sequence[str] | pa.Array,
        seq: np.ndarray,
    ) -> np.ndarray:
        """Which writes (one per row) an opt-out suppresses: a seq above an opt-out's and
        below its withdrawal's, in the member's scope or platform-wide. Deterministic for a
        given list: a replay decides as the first run did."""
        out = np.zeros(len(seq), dtype=bool)
        self._current()
        digests = self._digests
        scopes = [PLATFORM] if member_id == PLATFORM else [PLATFORM, member_id]
        by_digest = [digests[scope] for scope in scopes if digests.get(scope)]
        if not by_digest:
            return out
        if self._untagged.intersection(scopes):
            rows: Sequence[int] = range(len(seq))
            if isinstance(user_key, pa.Array):
                user_key = user_key.to_pylist()
        else:
            # The kept tags leave the suppressed IDs (and the rare collision: tags.py).
            rows = self._tags.matches(id_tags(self._tag_keys, user_kind, user_key)).tolist()
        # A user left costs one keyed hash (rows of one user share it) and a dict lookup
        # per scope; the intervals are walked only for the few users found.
        secret, digest = self.secret, hmac.digest
        users: dict[tuple[int, str], tuple[_Interval, ...]] = {}
        for i in rows:
            key = user_key[i]
            user = (int(user_kind[i]), key if isinstance(key, str) else key.as_py())
            found = users.get(user)
            if found is None:
                mac = digest(secret, f"{user[0]}:{user[1]}".encode(), "sha256")
                found = users[user] = tuple(iv for ids in by_digest for iv in ids.get(mac, ()))
            if found:
                s = int(seq[i])
                out[i] = any(iv.optout_seq < s < iv.withdrawn_seq for iv in found)
        return out


@dataclass(frozen=True, slots=True)
class MemberSuppression:
    """The suppression list as one member's writes are checked against it (a job's
    `suppress`: bss.ingest.engine.Suppress)."""

    suppression: SuppressionList
    member_id: int

    def __call__(
        self, user_kind: np.ndarray, user_key: Sequence[str] | pa.Array, seq: np.ndarray
    ) -> np.ndarray:
        return self.suppression.write_mask(self.member_id, user_kind, user_key, seq)

    def candidates(self, user_kind: np.ndarray, user_key: Sequence[str] | pa.Array) -> np.ndarray:
        return self.suppression.candidates(self.member_id, user_kind, user_key)


def is_opted_out(
    db: Engine, settings: Settings, member_id: int | None, user_kind: int, user_key: str
) -> bool:
    """Whether a standing opt-out covers this ID in member `member_id`'s scope or
    platform-wide (`member_id` None: platform-wide only). A read path answers nothing for
    such an ID. Cached per process for CACHE_SECONDS; this process's own opt-outs at once."""
    return SuppressionList.of(db, settings).standing(member_id, user_kind, user_key)


@dataclass(slots=True)
class OptOutResult:
    request_id: int
    seq: int
    ids: int
    memberships_removed: int
    links_removed: int


def opt_out(
    db: Engine,
    settings: Settings,
    stores: StoreSource,
    *,
    member_id: int | None,
    users: Sequence[User],
    requested_by: str | None,
    now: int | None = None,
) -> OptOutResult:
    """Opt `users` out in member `member_id`'s scope (None: platform-wide): suppress them,
    remove their memberships and links, in every region. See the module docstring."""
    now = now_s() if now is None else now
    users = list(dict.fromkeys(users))
    store = stores.get()
    seq = seqs.reserve(db, 1)
    owned = _owned_segments(db, member_id)
    links = remove_links_of(
        store,
        users,
        SHARED_SCOPE if member_id is None else member_id,
        seq=seq,
        now=now,
        ttl_days=settings.link_ttl_days,
    )
    suppression = SuppressionList.of(db, settings)
    request = _Request(member_id, users, seq, now, requested_by, links, suppression)
    remove = getattr(store, "remove_memberships", None)
    if remove is not None and users:
        # The embedded store finds and removes the memberships in one write transaction,
        # committed after the database's rows (the removals are owed to the other regions
        # before the local store has them, as below).
        rows = remove(
            users,
            seq,
            now=now,
            expires_at=now + _REMOVAL_LIFETIME,
            owned=owned,
            before_commit=lambda found: request.record(db, stores, _removal_batch(found, seq, now)),
        )
        removed = len(rows)
    else:
        found = store.users_segments(users, now) if users else []
        removals = _removal_batch(
            [
                (kind, key, m.segment_id)
                for (kind, key), memberships in zip(users, found, strict=True)
                for m in memberships
                if owned is None or m.segment_id in owned
            ],
            seq,
            now,
        )
        request.record(db, stores, removals)
        if removals.num_rows:
            store.apply(removals)
        removed = removals.num_rows
    suppression.invalidate()
    return OptOutResult(request.request_id, seq, len(users), removed, links.num_rows)


@dataclass(slots=True)
class _Request:
    """An opt-out's database rows: the audit row, the suppressions, what regions are owed."""

    member_id: int | None
    users: list[User]
    seq: int
    now: int
    requested_by: str | None
    links: pa.Table
    suppression: SuppressionList
    request_id: int = 0

    def record(self, db: Engine, stores: StoreSource, removals: pa.Table) -> None:
        users, seq = self.users, self.seq
        scope = PLATFORM if self.member_id is None else self.member_id
        secret = self.suppression.secret
        with write_tx(db) as conn:
            self.request_id = inserted_id(
                conn.execute(
                    insert(optout_requests).values(
                        member_id=self.member_id,
                        kind="optout",
                        requested_on=self.now,
                        requested_by=self.requested_by,
                        seq=seq,
                        ids=len(users),
                        memberships_removed=removals.num_rows,
                        links_removed=self.links.num_rows,
                    )
                )
            )
            if users:
                tags = self.suppression.tags(users)
                conn.execute(
                    insert(optout_suppressions),
                    [
                        {
                            "scope": scope,
                            "id_hash": _hash(secret, kind, key),
                            "optout_seq": seq,
                            "withdrawn_seq": None,
                            "request_id": self.request_id,
                            "id_tag": tag,
                        }
                        for (kind, key), tag in zip(users, tags, strict=True)
                    ],
                )
            if removals.num_rows:
                regions.record_batch(conn, removals, stores.remote_regions)
            if self.links.num_rows:
                regions.record_batch(conn, self.links, stores.remote_regions)


def _owned_segments(db: Engine, member_id: int | None) -> set[int] | None:
    """The segments an opt-out in the member's scope removes memberships of (None: all)."""
    if member_id is None:
        return None
    with db.connect() as conn:
        return set(
            conn.execute(select(segments.c.id).where(segments.c.member_id == member_id))
            .scalars()
            .all()
        )


def _removal_batch(rows: Sequence[tuple[int, str, int]], seq: int, now: int) -> pa.Table:
    """A removal at `seq` of each (user kind, user key, segment)."""
    n = len(rows)
    return pa.table(
        {
            "user_kind": [r[0] for r in rows],
            "user_key": [r[1] for r in rows],
            "segment_id": [r[2] for r in rows],
            "value": [None] * n,
            "timestamp": [now] * n,
            "expires_at": [now + _REMOVAL_LIFETIME] * n,
            "removed": [True] * n,
            "seq": [seq] * n,
        },
        schema=APPLY_SCHEMA,
    )


def optout_platform_wide(
    db: Engine,
    settings: Settings,
    stores: StoreSource,
    user_kind: int,
    user_key: str,
    *,
    requested_by: str | None = None,
) -> OptOutResult:
    """Opt one ID out for every member (the ID sync's /optout cookie): its memberships in
    every segment and its shared links go, in every region, and no write above the
    opt-out's seq applies for it while the opt-out stands."""
    return opt_out(
        db,
        settings,
        stores,
        member_id=None,
        users=[(user_kind, user_key)],
        requested_by=requested_by,
    )


def withdraw(
    db: Engine,
    settings: Settings,
    *,
    member_id: int | None,
    user: User,
    requested_by: str | None,
) -> int:
    """Withdraw the standing opt-outs of one ID in the scope at a seq of its own; how many
    stood (0: nothing to withdraw)."""
    suppression = SuppressionList.of(db, settings)
    scope = PLATFORM if member_id is None else member_id
    id_hash = suppression.hash(*user)
    seq = seqs.reserve(db, 1)
    t = optout_suppressions
    with write_tx(db) as conn:
        withdrawn = conn.execute(
            update(t)
            .where(t.c.scope == scope, t.c.id_hash == id_hash, t.c.withdrawn_seq.is_(None))
            .values(withdrawn_seq=seq)
        ).rowcount
        if withdrawn:
            conn.execute(
                insert(optout_requests).values(
                    member_id=member_id,
                    kind="withdrawal",
                    requested_on=now_s(),
                    requested_by=requested_by,
                    seq=seq,
                    ids=1,
                    memberships_removed=0,
                    links_removed=0,
                )
            )
    suppression.invalidate()
    return int(withdrawn)


def list_requests(
    db: Engine, member_id: int | None, *, start: int = 0, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """The audit trail of a scope, newest first: (total, one page)."""
    t = optout_requests
    where = t.c.member_id.is_(None) if member_id is None else t.c.member_id == member_id
    with db.connect() as conn:
        total = len(conn.execute(select(t.c.id).where(where)).all())
        rows = conn.execute(
            select(t).where(where).order_by(t.c.id.desc()).offset(start).limit(limit)
        ).mappings()
        return total, [request_out(r) for r in rows]


def request_out(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "member_id": row["member_id"],
        "kind": row["kind"],
        "requested_on": fmt_ts(row["requested_on"]),
        "requested_by": row["requested_by"],
        "ids": row["ids"],
        "memberships_removed": row["memberships_removed"],
        "links_removed": row["links_removed"],
    }
