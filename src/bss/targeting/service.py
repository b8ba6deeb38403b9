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
from typing import Any

from bss.db import now_s
from bss.identity.graph import Caps, expanded_segments
from bss.identity.ids import format_id
from bss.lifecycle.optout import SuppressionList
from bss.privacy import REASONS, decision
from bss.store import Membership, MembershipStore
from bss.targeting.bidrequest import read_ids, read_signals
from bss.targeting.catalog import Catalog, MemberSettings, SegmentFacts

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


@dataclass(frozen=True, slots=True)
class SegmentSource:
    """One segment of an answer, where its Data object names it, and the ID its membership
    came from (the dashboard's explanation)."""

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
        suppression = self.suppression
        expansion, memberships = expanded_segments(
            self.store,
            found.ids,
            member_id,
            self.clock(),
            caps,
            hidden=None
            if suppression is None
            else lambda kind, key: suppression.standing(member_id, kind, key),
        )
        given = set(found.ids)
        answer.related_ids = [
            format_id(r.kind, r.key) for r in expansion.ids if (r.kind, r.key) not in given
        ]
        facts = self.catalog.segments([m.segment_id for m, _ in memberships])
        owned = [
            (m, via, f)
            for m, via in memberships
            if (f := facts[m.segment_id]) is not None and f.member_id == member_id and f.active
        ]
        answer.sources = [self._source(m, via, f, member) for m, via, f in owned]
        answer.data = self._data_objects(answer.sources)
        if not answer.data:
            answer.reason = "no_segments"
        return answer

    @staticmethod
    def _source(m: Membership, via: str, f: SegmentFacts, member: MemberSettings) -> SegmentSource:
        segtax: int | None = None
        openrtb_id = str(m.segment_id)
        if f.taxonomy_id is not None and f.taxonomy_node:
            segtax, openrtb_id = f.taxonomy_id, f.taxonomy_node
        elif member.segment_id_field == "code" and f.code:
            openrtb_id = f.code
        value = None if m.value is None else str(m.value)
        return SegmentSource(m.segment_id, f.code, via, segtax, openrtb_id, value)

    def _data_objects(self, sources: list[SegmentSource]) -> list[dict[str, Any]]:
        by_taxonomy: dict[int | None, dict[str, dict[str, str]]] = {}
        for source in sources:
            segments = by_taxonomy.setdefault(source.segtax, {})
            if source.openrtb_id not in segments:  # two segments on one node (or code): once
                segment = {"id": source.openrtb_id}
                if source.value is not None:
                    segment["value"] = source.value
                segments[source.openrtb_id] = segment
        out = []
        for taxonomy in sorted(by_taxonomy, key=lambda t: -1 if t is None else t):
            data: dict[str, Any] = {
                "id": self.settings.data_id,
                "name": self.settings.data_name,
                "segment": list(by_taxonomy[taxonomy].values()),
            }
            if taxonomy is not None:
                data["ext"] = {"segtax": taxonomy}
            out.append(data)
        return out


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
