"""Replace-mode uploads: each segment the file adds to becomes exactly the file's members.

`POST /batch-segment?member_id=M&mode=replace` (a passive file named `replace.*`, `bss upload
--replace`). The job writes its pairs as any job does, with seqs `seq_base + i`, so until it
completes a reader sees the old members plus the adds written so far. Once every pair is
written, each segment with at least one valid add in the file gets a floor at the job's
seq base: its entries below the floor are hidden, exactly as a segment deletion at that
seq would hide them, without deleting the segment. What stays is the file's adds (with
their expirations) and every write with a higher seq (a real-time post or a job that started
after this one). A job that started earlier and applies later loses in the replaced
segments: its seqs are below the floor.

The floors of a job are one database transaction (bss.lifecycle.floors): every read of the
store applies them, so readers switch from the old members to the new ones in one step, on
LMDB and Redis alike. The store's entries below them are dropped before the job completes,
so the member counts a completed job shows have dropped. A store with `drop_below` (LMDB)
counts, drops and publishes in one walk and one write transaction whose commit follows the
floors': a reader without the floors sees the segment whole or purged, so nothing waits.
Another (Redis, one write per master) counts first and drops (`delete_segment`) only once
every process's copy of the floors holds them. The removal guard: a job that would remove
more than the member's `max_replace_removal_fraction` of a segment's members (counted
before the job first ran) ends in `error` with REMOVAL_OVER_LIMIT and removes nothing,
unless the upload said `force=true`. A job that ends in `error` for any reason removes
nothing.

A replay (a worker killed mid-job, another region) writes the same entries with the same
seqs and sets the same floors (another region's in its own rows, once its replay has written
the pairs); what the floors removed is kept with the job before they are set, so the counts
a replay reports are the first run's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from bss.formats.config import BatchSegmentConfig
from bss.lifecycle.floors import PURGE_DELAY_SECONDS
from bss.store.base import MembershipStore
from bss.store.sorted_runs import WrittenKeys

#: Writes a job's floors where every read applies them (bss.lifecycle.floors.set_floors).
Publish = Callable[[Sequence[int]], None]

APPEND = "append"
REPLACE = "replace"
MODES = (APPEND, REPLACE)
#: error_code of a replace job refused by the removal guard.
REMOVAL_OVER_LIMIT = "replace_removal_over_limit"
#: Passive uploads: a file whose name (its last part) starts with one of these is a
#: replace-mode upload; the second also says force=true.
PASSIVE_PREFIX = "replace."
PASSIVE_FORCE_PREFIX = "replace-force."


def mode_columns(mode: str, force: bool) -> dict[str, Any]:
    """The jobs columns of an upload's mode (nothing for a plain append)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == APPEND:
        return {}
    return {"mode": REPLACE, "replace_force": 1 if force else 0}


def passive_mode(source_key: str) -> tuple[str, bool]:
    """(mode, force) of a passively uploaded file, by its name."""
    name = source_key.rsplit("/", 1)[-1]
    if name.startswith(PASSIVE_FORCE_PREFIX):
        return REPLACE, True
    if name.startswith(PASSIVE_PREFIX):
        return REPLACE, False
    return APPEND, False


@dataclass(slots=True)
class ReplaceState:
    """Kept with the job (`jobs.replace_state`) across replays."""

    #: Live members per segment the member may write, before the job first ran.
    before: dict[int, int] = field(default_factory=dict)
    #: Segment -> memberships its floor removed; set just before the floors are.
    removed: dict[int, int] | None = None

    @classmethod
    def load(cls, text: str | None) -> ReplaceState | None:
        if not text:
            return None
        data = json.loads(text)
        removed = data.get("removed")
        return cls(
            before={int(k): v for k, v in data["before"].items()},
            removed=None if removed is None else {int(k): v for k, v in removed.items()},
        )

    def dump(self) -> str:
        return json.dumps({"before": self.before, "removed": self.removed})


def replace_removed_total(state_text: str | None) -> int:
    state = ReplaceState.load(state_text)
    return sum((state.removed or {}).values()) if state is not None else 0


def counts_before(
    store: MembershipStore, writable: set[int] | frozenset[int], now: int
) -> dict[int, int]:
    """The member counts of the segments a job may write, as the guard measures against."""
    return {seg: n for seg, n in store.segment_member_counts(now).items() if seg in writable}


def written_keys(
    store: MembershipStore, replacing: bool
) -> AbstractContextManager[WrittenKeys | None]:
    """For a replace job (`replacing`) on a store whose `drop_below` walk uses them to skip
    the job's own entries (LMDB): a keeper of the keys the job writes. Nothing otherwise."""
    keeper = getattr(store, "written_keys", None) if replacing else None
    return nullcontext() if keeper is None else keeper()


@dataclass(slots=True)
class Refused:
    error_code: str
    error_message: str


def apply_floors(
    store: MembershipStore,
    *,
    added: Mapping[int, int],
    seq_base: int,
    state: ReplaceState,
    config: BatchSegmentConfig,
    force: bool,
    now: int,
    keep_state: Callable[[ReplaceState], None],
    publish: Publish | None = None,
    written: WrittenKeys | None = None,
) -> Refused | None:
    """Set the floors of a replace job whose pairs are all written: count what each floor
    removes, check the guard, keep the counts with the job (`keep_state`), then set them:
    `publish` writes them where every read applies them (bss.lifecycle.floors.set_floors),
    and the store drops the entries below. Without `publish` (a store no other process
    reads) the store drops them at once. Refused (and nothing removed) when the guard stops
    the job. `written`: what the store kept of the keys the job wrote (`written_keys`)."""
    replaced = sorted(seg for seg, n in added.items() if n > 0)
    refused: list[Refused] = []

    def decide(removed: dict[int, int]) -> bool:
        if state.removed is None:
            if not force:
                refusal = _guard(removed, state.before, config.max_replace_removal_fraction)
                if refusal is not None:
                    refused.append(refusal)
                    return False
            state.removed = removed
            keep_state(state)
        if publish is not None and replaced:
            publish(replaced)
        return True

    drop_below = getattr(store, "drop_below", None)
    if drop_below is not None and replaced:
        # One walk: the store counts what it drops, and keeps the drops only once the guard
        # passed and the floors are published, in one write transaction.
        drop_below(replaced, seq_base, now, decide, written)
    else:
        counted = state.removed is None
        if decide({seg: store.count_below(seg, seq_base, now) for seg in replaced if counted}):
            _purge(store, replaced, seq_base, published=publish is not None)
    return refused[0] if refused else None


def replay_floors(
    store: MembershipStore,
    state_text: str | None,
    seq_base: int,
    publish: Publish | None = None,
    written: WrittenKeys | None = None,
) -> None:
    """Another region's replay of a completed replace job: the same floors."""
    state = ReplaceState.load(state_text)
    replaced = sorted((state.removed or {}) if state is not None else ())
    if not replaced:
        return
    drop_below = getattr(store, "drop_below", None)
    if drop_below is not None:
        drop_below(replaced, seq_base, 0, lambda _counts: _publish(publish, replaced), written)
        return
    _publish(publish, replaced)
    _purge(store, replaced, seq_base, published=publish is not None)


def _publish(publish: Publish | None, replaced: Sequence[int]) -> bool:
    if publish is not None:
        publish(replaced)
    return True


def _purge(store: MembershipStore, replaced: Sequence[int], seq_base: int, published: bool) -> None:
    """Drop the entries below the floors on a store that cannot do it in one step for
    readers (one write per Redis master): only once every reader's copy holds the floors."""
    if not replaced:
        return
    if published:
        # Readers whose copy of the floors is older than the floor still read the old
        # members: they must not meet the store half purged.
        time.sleep(PURGE_DELAY_SECONDS)
    for seg in replaced:
        store.delete_segment(seg, seq_base)


def _guard(removed: dict[int, int], before: dict[int, int], limit: float) -> Refused | None:
    for seg in sorted(removed):
        total = before.get(seg, 0)
        if total and removed[seg] / total > limit:
            share = removed[seg] / total
            return Refused(
                REMOVAL_OVER_LIMIT,
                f"the replace would remove {removed[seg]} of segment {seg}'s {total} members "
                f"({share:.0%}), more than max_replace_removal_fraction ({limit:g}); nothing "
                "was removed. Upload again with force=true to replace anyway",
            )
    return None
