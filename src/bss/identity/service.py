"""Real-time links (POST /id-link) and link listings (GET /user-links), below the web layer.

A post is checked entry by entry: a bad entry (not an object, an ID that is not in the link
text form or is junk, a link of an ID to itself, `remove` not a boolean) is skipped with a
warning naming it and why, as /rt-segment does; only a body that is not the documented
shape is refused whole. Valid links get seqs from the global counter in post order, are
applied to the local store and owed to every other store region, as real-time posts are. A
link one of whose IDs an opt-out suppresses at the link's seq (bss.lifecycle.optout, in the
link's scope: the member's, or platform-wide for shared links) is not applied: a warning
with `"counter": "num_opted_out"` names it, as link files count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import Engine

from bss.db import fmt_ts, write_tx
from bss.errors import Invalid
from bss.identity.graph import Caps, expand
from bss.identity.ids import InvalidId, format_id, parse_id
from bss.identity.links import link_batch
from bss.ingest.engine import OPTED_OUT
from bss.lifecycle.optout import REASON_OPTED_OUT, SuppressionList
from bss.store import regions
from bss.store.base import SHARED_SCOPE, MembershipStore
from bss.store.seqs import reserve

#: Links one POST /id-link may carry; the rest are skipped with a warning each.
MAX_LINKS_PER_POST = 1000

W_TOO_MANY = "Too many links in request; at most {limit} per post."
W_NOT_OBJECT = 'A link is a JSON object such as {"a": "uid=...", "b": "ext=M:ID"}.'
W_BAD_ID = "Invalid ID {which!r}: {reason}."
W_SAME_ID = "A link joins two different IDs."
W_BAD_REMOVE = "'remove' must be true or false."
W_NO_VALID = "No valid link in request."

User = tuple[int, str]


@dataclass(slots=True)
class LinkPostResult:
    links_in_request: int = 0
    links_applied: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> dict[str, int]:
        return {"links_in_request": self.links_in_request, "links_applied": self.links_applied}


def _parsed_entry(entry: Any) -> tuple[User, User, bool] | str:
    """(a, b, remove) of one entry, or the warning that skips it."""
    if not isinstance(entry, dict):
        return W_NOT_OBJECT
    ends = []
    for which in ("a", "b"):
        text = entry.get(which)
        if not isinstance(text, str):
            return W_BAD_ID.format(which=which, reason="give the ID as a string such as uid=...")
        try:
            kind, key = parse_id(text)
        except InvalidId as exc:
            return W_BAD_ID.format(which=which, reason=str(exc))
        ends.append((int(kind), key))
    remove = entry.get("remove", False)
    if not isinstance(remove, bool):
        return W_BAD_REMOVE
    if ends[0] == ends[1]:
        return W_SAME_ID
    return ends[0], ends[1], remove


def post_links(
    db: Engine,
    store: MembershipStore,
    other_regions: Sequence[str],
    *,
    scope: int,
    body: Any,
    now: int,
    ttl_days: int,
    suppression: SuppressionList,
) -> LinkPostResult:
    """Apply a POST /id-link body in `scope` (the member id, or SHARED_SCOPE: the caller
    checked the poster may write it); `suppression` tells which links an opt-out stops."""
    if not isinstance(body, dict) or not isinstance(body.get("links"), list):
        raise Invalid(
            'expected a JSON body like {"links": [{"a": "uid=...", "b": "eid=source:id", '
            '"remove": false}], "scope": "member"}'
        )
    entries: list[Any] = body["links"]
    result = LinkPostResult(links_in_request=len(entries))
    valid: list[tuple[User, User, bool]] = []
    valid_at: list[int] = []
    for i, entry in enumerate(entries):
        if i >= MAX_LINKS_PER_POST:
            warning = W_TOO_MANY.format(limit=MAX_LINKS_PER_POST)
            result.warnings.append({"message": warning, "entity": entry, "index": i})
            continue
        parsed = _parsed_entry(entry)
        if isinstance(parsed, str):
            result.warnings.append({"message": parsed, "entity": entry, "index": i})
        else:
            valid.append(parsed)
            valid_at.append(i)
    if not valid:
        result.warnings.append({"message": W_NO_VALID})
        return result
    first = reserve(db, len(valid))
    batch = link_batch(scope, valid, asserted_at=now, ttl_days=ttl_days, first_seq=first)
    hit = _opted_out(suppression, scope, batch)
    if hit is not None:
        for at in np.flatnonzero(hit).tolist():
            i = valid_at[at]
            result.warnings.append(
                {
                    "message": f"{REASON_OPTED_OUT.capitalize()}.",
                    "entity": entries[i],
                    "index": i,
                    "counter": OPTED_OUT,
                }
            )
        batch = batch.filter(pa.array(~hit))
        if batch.num_rows == 0:
            result.warnings.append({"message": W_NO_VALID})
            return result
    store.apply_links(batch)
    result.links_applied = batch.num_rows
    with write_tx(db) as conn:
        regions.record_batch(conn, batch, other_regions)
    return result


def _opted_out(suppression: SuppressionList, scope: int, batch: pa.Table) -> np.ndarray | None:
    """Which links of `batch` an opt-out suppresses (either end, at the link's seq), or
    None when none does. The scope is the suppression scope too: SHARED_SCOPE is PLATFORM."""
    if not suppression.active_for(scope):
        return None
    n = batch.num_rows
    kinds = np.concatenate([batch["a_kind"].to_numpy(), batch["b_kind"].to_numpy()])
    keys = batch["a_key"].to_pylist() + batch["b_key"].to_pylist()
    seqs = np.tile(batch["seq"].to_numpy(), 2)
    mask = suppression.write_mask(scope, kinds, keys, seqs)
    hit = mask[:n] | mask[n:]
    return hit if hit.any() else None


def user_links(
    store: MembershipStore, user: User, scopes: list[int], now: int, caps: Caps
) -> dict[str, Any]:
    """GET /user-links: the IDs related to `user` through the links of `scopes`, and those
    links, in their text forms."""
    expansion = expand(store, [user], scopes, now, caps)
    return {
        "ids": [format_id(r.kind, r.key) for r in expansion.ids],
        "links": [
            {
                "a": format_id(*followed.a),
                "b": format_id(*followed.b),
                "scope": "shared" if followed.link.scope == SHARED_SCOPE else "member",
                "last_asserted": fmt_ts(followed.link.asserted_at),
                "expires_on": fmt_ts(followed.link.expires_at),
            }
            for followed in expansion.links
        ],
    }
