"""Real-time segment updates (POST /rt-segment): small JSON posts applied at once.

A post is checked by the batch format's rules, not rules of its own: user IDs by the legacy
format's (bss.formats.legacy.parse_user_ids), pairs by the ingest engine's
(bss.ingest.engine.PairRules: segment exists, may be written, is active; value and
expiration in range; 0 = the 180-day maximum; -1 removes). Valid pairs go to the same store
with seqs reserved from the global counter, in post order, so the later write wins by the
time the service applied it; they are visible to lookups when the answer is sent.

A segment of another member the poster may not write gets the same warning and counter as
one that does not exist, so that posts cannot probe which ids exist.

Only a body that is not the documented shape is refused whole (400, nothing applied); a bad
entry is skipped with a warning naming it and why, as documented.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from sqlalchemy import ColumnElement, Engine, delete, or_, select, update

from bss.db import now_s, write_tx
from bss.errors import Conflict, Invalid, RateLimited
from bss.formats.config import BatchSegmentConfig
from bss.formats.legacy import DEVICE_ID_DOMAINS, parse_user_ids
from bss.formats.records import MAX_VALUE, MIN_VALUE, PAIR_SCHEMA
from bss.ingest.engine import (
    INVALID_SEGMENT,
    OPTED_OUT,
    UNAUTH_SEGMENT,
    VALID,
    PairRules,
    problem_reason,
    store_batch,
)
from bss.ingest.registry import SegmentRegistry
from bss.lifecycle.optout import REASON_OPTED_OUT, SuppressionList
from bss.metrics import COUNTERS
from bss.ratelimit import RateLimiter, Verdict
from bss.realtime.models import rt_idempotency_keys
from bss.reports.service import SegmentLoads, record_loads
from bss.segments.models import segments
from bss.settings import Settings
from bss.store import regions
from bss.store.base import MembershipStore
from bss.store.seqs import reserve

# The documented warning texts, word for word.
W_TOO_MANY_USERS = "Too many user_ids in request."
W_NO_USER = "'user_id' is required and cannot be empty"
W_NO_SEG_BLOCK = "'seg_block' is required"
W_NO_SEGMENT = "'seg_id' or 'seg_code' and 'member_id' are required"
W_NO_VALID_SEGMENTS = "No valid segments for user_id: {user_id}."
W_NO_VALID_REQUEST = "No valid rt_segment in request."
# Ours, in the same style.
W_TOO_MANY_SEGMENTS = "Too many segments for user_id: {user_id}; at most {limit} per user."
W_BOTH_SEGMENT_KEYS = "Give either 'seg_id' or 'seg_code' and 'member_id', not both."
W_BAD_DOMAIN = "'domain' {domain!r} is not supported; use null or one of: {domains}."
W_BAD_USER = "Invalid user_id {user_id!r}: {reason}."

_INT64 = 2**63
_BLOCK_INTS = ("seg_id", "value", "expiration", "member_id")
#: A post whose Idempotency-Key row is older than this without an answer was interrupted.
IDEMPOTENCY_STALE_SECONDS = 60


def post_sha256(body: Any) -> str:
    """A post's fingerprint: the same JSON value, however it was spaced or ordered."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(slots=True)
class RtResult:
    users_in_request: int = 0
    segments_in_request: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    pairs_applied: int = 0
    #: The post's fingerprint, kept with the answer under its Idempotency-Key.
    post_sha256: str | None = None

    def stored(self) -> str:
        """The answer as kept under the post's Idempotency-Key."""
        return json.dumps({**self.body(), "post_sha256": self.post_sha256})

    def body(self) -> dict[str, Any]:
        return {
            "message": {
                "users_in_request": self.users_in_request,
                "segments_in_request": self.segments_in_request,
            },
            "warnings": self.warnings,
        }


def rate_exceeded(verdict: Verdict, what: str) -> RateLimited:
    return RateLimited(
        f"Rate limit exceeded. You have exceeded your request limit of {verdict.limit} {what} "
        "per 1 seconds to rt-segment, please wait and try again",
        error_code="RATE_EXCEEDED",
        retry_after=verdict.retry_after,
    )


# --- the documented shape ---------------------------------------------------------------------


def _int_field(block: dict[str, Any], name: str, where: str) -> None:
    value = block.get(name)
    if value is None:
        return
    if type(value) is not int:
        raise Invalid(f"{where}.{name} must be an integer or null")
    if not -_INT64 <= value < _INT64:
        raise Invalid(f"{where}.{name} is out of range")


def check_shape(body: Any) -> tuple[list[Any], str | None]:
    """The entries of a post, or a 400 naming the first place it is not the documented shape."""
    if not isinstance(body, dict) or "rt_segment" not in body:
        raise Invalid('the body must be a JSON object {"rt_segment": [...]}')
    entries = body["rt_segment"]
    if not isinstance(entries, list):
        raise Invalid("rt_segment must be an array")
    default_domain = body.get("domain")
    if default_domain is not None and not isinstance(default_domain, str):
        raise Invalid("domain must be a string or null")
    for i, entry in enumerate(entries):
        where = f"rt_segment[{i}]"
        if not isinstance(entry, dict):
            raise Invalid(f"{where} must be an object")
        user_id = entry.get("user_id")
        if user_id is not None and (type(user_id) not in (str, int)):
            raise Invalid(f"{where}.user_id must be a string")
        if entry.get("domain") is not None and not isinstance(entry["domain"], str):
            raise Invalid(f"{where}.domain must be a string or null")
        blocks = entry.get("seg_block")
        if blocks is None:
            continue
        if not isinstance(blocks, list):
            raise Invalid(f"{where}.seg_block must be an array")
        for j, block in enumerate(blocks):
            bwhere = f"{where}.seg_block[{j}]"
            if not isinstance(block, dict):
                raise Invalid(f"{bwhere} must be an object")
            for name in _BLOCK_INTS:
                _int_field(block, name, bwhere)
            code = block.get("seg_code")
            if code is not None and not isinstance(code, str):
                raise Invalid(f"{bwhere}.seg_code must be a string or null")
    return entries, default_domain


# --- the post ---------------------------------------------------------------------------------


def _registry(db: Engine, ids: set[int], codes: set[tuple[int, str]]) -> SegmentRegistry:
    """Just the segments the post names (by id, or by owner and code)."""
    conditions: list[ColumnElement[bool]] = []
    if ids:
        conditions.append(segments.c.id.in_(sorted(ids)))
    for owner in sorted({o for o, _ in codes}):
        keys = sorted(c for o, c in codes if o == owner)
        conditions.append((segments.c.member_id == owner) & segments.c.code_key.in_(keys))
    rows: list[dict[str, Any]] = []
    if conditions:
        q = select(
            segments.c.id,
            segments.c.code,
            segments.c.member_id,
            segments.c.state,
            segments.c.expire_minutes,
        ).where(or_(*conditions))
        with db.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
    return SegmentRegistry.from_records(rows)


def _foreign_as_unknown(resolved: pl.DataFrame) -> pl.DataFrame:
    """Another member's segment warned about, and counted, as one that does not exist: a
    different answer would tell the poster which ids exist for other members."""
    status = pl.col("status")
    return resolved.with_columns(
        status=pl.when(status == UNAUTH_SEGMENT).then(pl.lit(INVALID_SEGMENT)).otherwise(status)
    )


class RealtimeService:
    def __init__(self, db: Engine, settings: Settings, limiter: RateLimiter) -> None:
        self.db = db
        self.settings = settings
        #: Counted in the database, so the limits hold for the deployment, not per process.
        self.limiter = limiter
        self._last_purge = 0.0

    # -- limits ------------------------------------------------------------------------------

    def admit(self, member_id: int) -> None:
        limit = self.settings.rt_posts_per_second
        if limit > 0:
            verdict = self.limiter.hit(f"rt-posts:{member_id}", limit, 1)
            if not verdict.allowed:
                raise rate_exceeded(verdict, "writes")

    def _take_users(self, member_id: int, n: int) -> None:
        limit = self.settings.rt_users_per_second
        if limit <= 0 or n == 0:
            return
        key = f"rt-users:{member_id}"
        verdict = self.limiter.hit(key, limit, 1, cost=n)
        if not verdict.allowed:
            self.limiter.hit(key, limit, 1, cost=-n)  # refused whole: its users do not count
            raise rate_exceeded(verdict, "users")

    # -- idempotency -------------------------------------------------------------------------

    def replay_or_claim(self, member_id: int, key: str, body: Any) -> dict[str, Any] | None:
        """The stored answer of an earlier post with this key, or None after claiming the
        key for this post (409 while another post with it is being applied, and for a post
        whose body differs from the one the key was first used with)."""
        self._purge_keys()
        k = rt_idempotency_keys
        now = now_s()
        where = (k.c.member_id == member_id) & (k.c.idempotency_key == key)
        with write_tx(self.db) as conn:
            row = conn.execute(select(k).where(where)).mappings().first()
            if row is None:
                conn.execute(
                    k.insert().values(member_id=member_id, idempotency_key=key, created_on=now)
                )
                return None
            if row["response_json"] is not None:
                earlier: dict[str, Any] = json.loads(row["response_json"])
                if earlier.get("post_sha256", post_sha256(body)) != post_sha256(body):
                    raise Conflict(
                        "this Idempotency-Key was used with a different body: a retry must "
                        "send the same body, a new post needs a new key"
                    )
                return earlier
            if row["created_on"] > now - IDEMPOTENCY_STALE_SECONDS:
                raise Conflict(
                    "a post with this Idempotency-Key is being applied; retry in a moment",
                    retry_after=1,
                )
            # Its post was interrupted (process ended): this one applies it.
            conn.execute(update(k).where(where).values(created_on=now))
            return None

    def release_key(self, member_id: int, key: str) -> None:
        """The post failed before it applied anything: its key may be used again."""
        k = rt_idempotency_keys
        with write_tx(self.db) as conn:
            conn.execute(
                delete(k).where(
                    k.c.member_id == member_id,
                    k.c.idempotency_key == key,
                    k.c.response_json.is_(None),
                )
            )

    def _purge_keys(self) -> None:
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()
        cutoff = now_s() - self.settings.rt_idempotency_seconds
        with write_tx(self.db) as conn:
            conn.execute(
                delete(rt_idempotency_keys).where(rt_idempotency_keys.c.created_on < cutoff)
            )

    # -- the post ----------------------------------------------------------------------------

    def apply(
        self,
        *,
        member_id: int,
        config: BatchSegmentConfig,
        body: Any,
        store: MembershipStore,
        idempotency_key: str | None = None,
        other_regions: Sequence[str] = (),
    ) -> RtResult:
        """Check and apply one post (its shape was checked by `check_shape`); store regions
        other than `store`'s are owed its batch (caught up by bss.jobs.regions)."""
        entries, default_domain = check_shape(body)
        settings = self.settings
        result = RtResult(post_sha256=post_sha256(body) if idempotency_key else None)
        warn = result.warnings
        max_users = settings.rt_max_users_per_post
        for entry in entries[max_users:]:
            warn.append({"message": W_TOO_MANY_USERS, "entity": entry})
        entries = entries[:max_users]
        nothing_valid = {"message": W_NO_VALID_REQUEST, "entity": {"rt_segment": entries}}

        users, blocks = _required_fields(
            entries, default_domain, settings.rt_max_segments_per_user, warn
        )
        result.users_in_request = len(users)
        result.segments_in_request = len(blocks)
        self._take_users(member_id, len(users))
        if not users:
            warn.append(nothing_valid)
            return result
        good_users = _parsed_users(users, config, member_id, warn)
        now = now_s()
        rules = PairRules(member_id, config, _registry(self.db, *_segments_named(blocks)))
        valid = _valid_pairs(rules, blocks, good_users, now, warn)
        block_of = {(u, p): b for u, p, b in blocks}
        if not valid.is_empty():
            first = reserve(self.db, len(valid))  # seqs in post order
            valid = valid.with_columns(_seq=pl.int_range(0, len(valid), dtype=pl.Int64) + first)
            valid = self._drop_opted_out(member_id, valid, block_of, warn)
        if valid.is_empty():
            warn.append(nothing_valid)
            return result
        self._store(member_id, valid, store, now, idempotency_key, other_regions, result)
        return result

    def _store(
        self,
        member_id: int,
        valid: pl.DataFrame,
        store: MembershipStore,
        now: int,
        idempotency_key: str | None,
        other_regions: Sequence[str],
        result: RtResult,
    ) -> None:
        """Apply the valid pairs to the same store as files, then record their loads, the
        other regions' debt and the post's answer (for its Idempotency-Key) in one
        transaction."""
        applied = store_batch(valid, pl.col("_seq"))
        store.apply(applied)
        result.pairs_applied = len(valid)
        COUNTERS.inc("bss_rt_pairs_applied_total", len(valid))
        loads = SegmentLoads.at(now)
        loads.add(valid.select("segment_id", "user_kind", "user_key", "removed"))
        source = f"rt:{member_id}:{idempotency_key}" if idempotency_key else None
        with write_tx(self.db) as conn:
            record_loads(conn, loads, source=source)
            regions.record_batch(conn, applied, other_regions)
            if idempotency_key:
                k = rt_idempotency_keys
                conn.execute(
                    update(k)
                    .where(k.c.member_id == member_id, k.c.idempotency_key == idempotency_key)
                    .values(response_json=result.stored())
                )

    def _drop_opted_out(
        self,
        member_id: int,
        valid: pl.DataFrame,
        block_of: dict[tuple[int, int], Any],
        warn: list[dict[str, Any]],
    ) -> pl.DataFrame:
        """Entries whose user opted out (at their seq) are skipped with a warning each."""
        suppression = SuppressionList.of(self.db, self.settings)
        if not suppression.active_for(member_id):
            return valid
        mask = suppression.write_mask(
            member_id,
            valid["user_kind"].to_numpy(),
            valid["user_key"].to_list(),
            valid["_seq"].to_numpy(),
        )
        if not mask.any():
            return valid
        for user_row, pos in valid.filter(pl.Series(mask)).select("line_no", "pos").iter_rows():
            warn.append(
                {
                    "message": f"{REASON_OPTED_OUT.capitalize()}.",
                    "entity": block_of[(user_row, pos)],
                    "counter": OPTED_OUT,
                }
            )
        return valid.filter(~pl.Series(mask))

    def remember(self, member_id: int, key: str, result: RtResult) -> None:
        """Keep the answer of a post that applied nothing (all warnings) under its key."""
        k = rt_idempotency_keys
        with write_tx(self.db) as conn:
            conn.execute(
                update(k)
                .where(
                    k.c.member_id == member_id,
                    k.c.idempotency_key == key,
                    k.c.response_json.is_(None),
                )
                .values(response_json=result.stored())
            )


#: A user of a post: (its row, its entry, its user_id as text, its device ID domain).
_User = tuple[int, dict[str, Any], str, str | None]
#: A SEG block of a post: (its user's row, its position, the block).
_Block = tuple[int, int, dict[str, Any]]


def _required_fields(
    entries: list[dict[str, Any]],
    default_domain: Any,
    max_segments: int,
    warn: list[dict[str, Any]],
) -> tuple[list[_User], list[_Block]]:
    """The users and SEG blocks that have the documented required fields; a warning for
    each that does not (a user left without a usable block is dropped with its own)."""
    users: list[_User] = []
    blocks: list[_Block] = []
    for entry in entries:
        user_id = entry.get("user_id")
        user_text = "" if user_id is None else str(user_id).strip()
        if not user_text:
            warn.append({"message": W_NO_USER, "entity": entry})
            continue
        if entry.get("seg_block") is None:
            warn.append({"message": W_NO_SEG_BLOCK, "entity": entry})
            continue
        domain = entry.get("domain", default_domain)
        domain = domain.strip().lower() if isinstance(domain, str) and domain.strip() else None
        mine = _usable_blocks(len(users), entry["seg_block"], user_text, max_segments, warn)
        if not mine:
            message = W_NO_VALID_SEGMENTS.format(user_id=user_text)
            warn.append({"message": message, "entity": entry})
            continue
        users.append((len(users), entry, user_text, domain))
        blocks.extend(mine)
    return users, blocks


def _usable_blocks(
    row: int, seg_blocks: list[Any], user_text: str, max_segments: int, warn: list[dict[str, Any]]
) -> list[_Block]:
    """A user's SEG blocks that name one segment (by id, or by code and member), up to
    `max_segments` of them."""
    mine: list[_Block] = []
    for pos, block in enumerate(seg_blocks):
        if pos >= max_segments:
            message = W_TOO_MANY_SEGMENTS.format(user_id=user_text, limit=max_segments)
            warn.append({"message": message, "entity": block})
            continue
        has_id = block.get("seg_id") is not None
        code = block.get("seg_code")
        has_code = isinstance(code, str) and code.strip() != ""
        if has_id and has_code:
            warn.append({"message": W_BOTH_SEGMENT_KEYS, "entity": block})
        elif not has_id and not (has_code and block.get("member_id") is not None):
            warn.append({"message": W_NO_SEGMENT, "entity": block})
        else:
            mine.append((row, pos, block))
    return mine


def _parsed_users(
    users: list[_User], config: BatchSegmentConfig, member_id: int, warn: list[dict[str, Any]]
) -> pl.DataFrame:
    """(user_row, user_kind, user_key) of the users whose ID the batch format's rules
    accept; a warning for each other."""
    for _row, entry, _user_text, domain in users:
        if domain is not None and domain not in DEVICE_ID_DOMAINS:
            domains = ", ".join(sorted(DEVICE_ID_DOMAINS))
            message = W_BAD_DOMAIN.format(domain=domain, domains=domains)
            warn.append({"message": message, "entity": entry})
    known = [u for u in users if u[3] is None or u[3] in DEVICE_ID_DOMAINS]
    parsed = parse_user_ids(
        [u[2] for u in known], [u[3] for u in known], config, member_id
    ).with_columns(pl.Series("user_row", [u[0] for u in known], dtype=pl.Int64))
    for (_row, entry, user_text, _d), error in zip(
        known, parsed["user_error"].to_list(), strict=True
    ):
        if error is not None:
            message = W_BAD_USER.format(user_id=user_text, reason=error)
            warn.append({"message": message, "entity": entry})
    return parsed.filter(pl.col("user_error").is_null()).select("user_row", "user_kind", "user_key")


def _segments_named(blocks: list[_Block]) -> tuple[set[int], set[tuple[int, str]]]:
    """The segment ids and (member, code) pairs the blocks name."""
    ids = {int(b["seg_id"]) for _u, _p, b in blocks if b.get("seg_id") is not None}
    codes = {
        (int(b["member_id"]), b["seg_code"].strip().lower())
        for _u, _p, b in blocks
        if b.get("seg_id") is None
    }
    return ids, codes


def _valid_pairs(
    rules: PairRules,
    blocks: list[_Block],
    good_users: pl.DataFrame,
    now: int,
    warn: list[dict[str, Any]],
) -> pl.DataFrame:
    """The (user, segment) pairs the ingest engine's rules accept, in post order; a warning
    for each other, with its counter."""
    rows = [
        {
            "line_no": user_row,
            "pos": pos,
            "seg_id": block.get("seg_id"),
            "seg_code": None if block.get("seg_id") is not None else block.get("seg_code"),
            "seg_member_id": block.get("member_id") if block.get("seg_id") is None else None,
            "expiration": block.get("expiration"),
            "timestamp": None,
            "value": block.get("value"),
            "removal": False,
            "timestamp_invalid": False,
            "value_invalid": block.get("value") is not None
            and not MIN_VALUE <= block["value"] <= MAX_VALUE,
            "expiration_invalid": block.get("expiration") is not None and block["expiration"] < -2,
        }
        for user_row, pos, block in blocks
    ]
    pairs = pl.DataFrame(rows, schema=PAIR_SCHEMA).with_columns(
        value=pl.when(pl.col("value_invalid")).then(None).otherwise(pl.col("value"))
    )
    pairs = pairs.join(good_users, left_on="line_no", right_on="user_row", how="inner")
    resolved = _foreign_as_unknown(rules.resolve(pairs, now)).sort("line_no", "pos")
    block_of = {(u, p): b for u, p, b in blocks}
    problems = resolved.filter(pl.col("status") != VALID).with_columns(reason=problem_reason())
    for user_row, pos, status, reason in problems.select(
        "line_no", "pos", "status", "reason"
    ).iter_rows():
        warn.append(
            {"message": f"{reason}.", "entity": block_of[(user_row, pos)], "counter": status}
        )
    return resolved.filter(pl.col("status") == VALID)
