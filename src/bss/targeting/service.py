"""The answer to a bid request: the OpenRTB `Data` objects of its user's segments.

`Targeting.answer(request, member_id)` reads the request's IDs and privacy signals
(bss.targeting.bidrequest), expands the IDs through member `member_id`'s links and shared
links (bss.identity.graph), and keeps the live memberships in active segments the member
owns, each segment once: one `Data` object for segments without a taxonomy, one per
taxonomy (`ext.segtax`) for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bss.db import now_s
from bss.identity.graph import Caps, expanded_segments
from bss.identity.ids import format_id
from bss.lifecycle.optout import SuppressionList
from bss.privacy import REASONS, decision
from bss.store import Membership, MembershipStore
from bss.targeting.bidrequest import read_ids, read_signals
from bss.targeting.catalog import Catalog, MemberSettings

#: Builds a named tuple without its Python-level __new__: one per segment answered.
_new = tuple.__new__

#: Why an answer holds no segments, beyond the privacy reasons (bss.privacy.REASONS).
NONE_REASONS = {
    **REASONS,
    "no_ids": "the request carries no user ID this service can look up",
    "no_segments": "none of the IDs (or IDs related to them) is in a live segment of this member",
}


@dataclass(frozen=True, slots=True)
class DataSettings:
    """BSS_OPENRTB_DATA_ID / BSS_OPENRTB_DATA_NAME and the TCF vendor id."""

    data_id: str
    data_name: str
    tcf_vendor_id: int | None
    caps: Caps


class SegmentSource(NamedTuple):
    """One segment of an answer, where its Data object names it, and the ID its membership
    came from (the dashboard's explanation). A named tuple: one is made per segment
    answered."""

    segment_id: int
    code: str | None
    via: str
    segtax: int | None
    openrtb_id: str
    value: str | None

    def out(self) -> dict[str, Any]:
        return {
            "id": self.segment_id,
            "code": self.code,
            "via": self.via,
            "segtax": self.segtax,
            "segment_id": self.openrtb_id,
            "value": self.value,
        }


@dataclass(slots=True)
class Answer:
    ids: list[str]
    related_ids: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    skipped: list[str] = field(default_factory=list)
    sources: list[SegmentSource] = field(default_factory=list)

    def out(self) -> dict[str, Any]:
        """The documented answer fields (`data`, `ids`), then the extra ones."""
        return {
            "data": self.data,
            "ids": self.ids,
            "related_ids": self.related_ids,
            "reason": self.reason,
            "skipped": self.skipped,
        }


class Targeting:
    """Answers over one membership store and one database (see bss.targeting.open)."""

    def __init__(
        self,
        store: MembershipStore,
        catalog: Catalog,
        settings: DataSettings,
        suppression: SuppressionList | None = None,
        clock: Callable[[], int] = now_s,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        #: Opt-outs: an ID opted out in the member's scope or platform-wide contributes none.
        self.suppression = suppression
        self.clock = clock

    def answer(self, request: dict[str, Any], member_id: int, *, related: bool = True) -> Answer:
        """The Data objects for `request` (a parsed BidRequest object) in member
        `member_id`'s segments. A member that does not exist gets none."""
        member = self.catalog.member(member_id) or MemberSettings()
        found = read_ids(
            request,
            member_id,
            user_id_is_external=member.user_id_is_external,
            max_ids=self.settings.caps.max_ids,
        )
        answer = Answer([format_id(k, key) for k, key in found.ids], skipped=found.all_notes())
        s = read_signals(request)
        allowed, reason = decision(
            gdpr=s.gdpr,
            consent=s.consent,
            us_privacy=s.us_privacy,
            gpp=s.gpp,
            gpp_sid=s.gpp_sid,
            coppa=s.coppa,
            vendor_id=self.settings.tcf_vendor_id,
        )
        if not allowed:
            answer.reason = reason
            return answer
        if not found.ids:
            answer.reason = "no_ids"
            return answer
        caps = self.settings.caps if related else Caps(max_hops=0)
        expansion, memberships = expanded_segments(
            self.store, found.ids, member_id, self.clock(), caps, hidden=self._hidden(member_id)
        )
        # The given IDs are the expansion's first (hop 0); the related ones come after.
        answer.related_ids = [format_id(r.kind, r.key) for r in expansion.ids if r.hop]
        answer.sources = self._sources(memberships, member_id, member)
        answer.data = self._data_objects(answer.sources)
        if not answer.data:
            answer.reason = "no_segments"
        return answer

    def _hidden(self, member_id: int) -> Callable[[int, str], bool] | None:
        """Whether an opt-out stands for an ID in the member's reads; None when none stands
        in its scope or platform-wide (no ID then needs asking)."""
        suppression = self.suppression
        if suppression is None or not suppression.active_for(member_id):
            return None
        return lambda kind, key: suppression.standing(member_id, kind, key)

    def _sources(
        self, memberships: list[tuple[Membership, str]], member_id: int, member: MemberSettings
    ) -> list[SegmentSource]:
        """The memberships in live segments the member owns, where its Data objects name
        each."""
        facts = self.catalog.facts([m.segment_id for m, _ in memberships])
        by = 1 if member.segment_id_field == "code" else 0
        sources = []
        for (m, via), f in zip(memberships, facts, strict=True):
            if f is None or f.member_id != member_id or not f.active:
                continue
            value = None if m.value is None else str(m.value)
            source = (m.segment_id, f.code, via, f.segtax, f.openrtb_ids[by], value)
            sources.append(_new(SegmentSource, source))
        return sources

    def _data_objects(self, sources: list[SegmentSource]) -> list[dict[str, Any]]:
        by_taxonomy: dict[int | None, dict[str, dict[str, str]]] = {}
        for _, _, _, segtax, openrtb_id, value in sources:
            segments = by_taxonomy.get(segtax)
            if segments is None:
                segments = by_taxonomy[segtax] = {}
            if openrtb_id not in segments:  # two segments on one node (or code): once
                segment = {"id": openrtb_id}
                if value is not None:
                    segment["value"] = value
                segments[openrtb_id] = segment
        out = []
        for taxonomy in sorted(by_taxonomy, key=_taxonomy_order):
            data: dict[str, Any] = {
                "id": self.settings.data_id,
                "name": self.settings.data_name,
                "segment": list(by_taxonomy[taxonomy].values()),
            }
            if taxonomy is not None:
                data["ext"] = {"segtax": taxonomy}
            out.append(data)
        return out


def _taxonomy_order(segtax: int | None) -> int:
    """Segments without a taxonomy first, then by taxonomy."""
    return -1 if segtax is None else segtax


def merge_user_data(
    request: dict[str, Any], data: list[dict[str, Any]], data_id: str
) -> dict[str, Any]:
    """`request` with `data` in `user.data`: entries with our `data_id` replaced, every other
    entry and field as posted. `request` itself is not changed. A request whose `user` or
    `user.data` is not what OpenRTB says (an object, an array) is returned as it is."""
    user = request.get("user")
    if user is None:
        if not data:
            return request
        user = {}
    if not isinstance(user, dict):
        return request
    existing = user.get("data")
    if existing is None:
        if not data:
            return request
        existing = []
    if not isinstance(existing, list):
        return request
    kept = [d for d in existing if not (isinstance(d, dict) and d.get("id") == data_id)]
    return {**request, "user": {**user, "data": kept + data}}
