"""OpenRTB test helpers: bid requests written after the examples of the OpenRTB 2.5 and 2.6
specifications, and writes of memberships and links straight into a data dir's store (the
embedded LMDB store is shared by every process of a machine, so a running server sees them)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from bss.db import make_engine
from bss.identity.ids import parse_id
from bss.identity.links import link_batch
from bss.settings import Settings
from bss.store import APPLY_SCHEMA, MembershipStore, open_store
from bss.store.base import SHARED_SCOPE
from bss.store.seqs import reserve

IDFA = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
AAID = "38400000-8cf0-11bd-b23e-10b96e40000d"
BUYERUID = "7652266028043224430"

#: OpenRTB 2.5, after its "Simple Banner" example: a site, IDs and consent in ext objects.
REQUEST_25: dict[str, Any] = {
    "id": "80ce30c53c16e6ede735f123ef6e32361bfc7b22",
    "at": 1,
    "cur": ["USD"],
    "imp": [{"id": "1", "bidfloor": 0.03, "banner": {"h": 250, "w": 300, "pos": 0}}],
    "site": {
        "id": "102855",
        "cat": ["IAB3-1"],
        "domain": "www.foobar.com",
        "page": "http://www.foobar.com/1234.html ",
        "publisher": {
            "id": "8953",
            "name": "foobar.com",
            "cat": ["IAB3-1"],
            "domain": "foobar.com",
        },
    },
    "device": {
        "ua": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_8) AppleWebKit/537.13 (KHTML, like "
        "Gecko) Version/5.1.7 Safari/534.57.2",
        "ip": "123.145.167.10",
    },
    "user": {
        "id": "55816b39711f9b5acf3b90e313ed29e51665623f",
        "buyeruid": BUYERUID,
        "ext": {
            "eids": [
                {"source": "LiveRamp.com", "uids": [{"id": "XY1000", "atype": 3}]},
            ]
        },
    },
    "regs": {"ext": {"gdpr": 0}},
}

#: OpenRTB 2.6, after its app example: an app on iOS with an IFA, 2.6 user.eids and regs.
REQUEST_26: dict[str, Any] = {
    "id": "IxexyLDIIk",
    "at": 2,
    "bcat": ["IAB25", "IAB7-39", "IAB8-18"],
    "imp": [
        {
            "id": "1",
            "bidfloor": 0.5,
            "instl": 0,
            "tagid": "agltb3B1Yi1pbmNyDQsSBFNpdGUY7fD0FAw",
            "banner": {"w": 728, "h": 90, "pos": 1, "btype": [4], "battr": [14], "api": [3]},
        }
    ],
    "app": {
        "id": "agltb3B1Yi1pbmNyDAsSA0FwcBiJkfIUDA",
        "name": "Yahoo Weather",
        "cat": ["IAB15", "IAB15-10"],
        "ver": "1.0.2",
        "bundle": "12345",
        "storeurl": "https://itunes.apple.com/id628677149",
        "publisher": {"id": "agltb3B1Yi1pbmNyDAsSA0FwcBiJkfTUCV", "name": "yahoo"},
    },
    "device": {
        "dnt": 0,
        "ua": "Mozilla/5.0 (iPhone; CPU iPhone OS 6_1 like Mac OS X) AppleWebKit/534.46 "
        "(KHTML, like Gecko) Version/5.1 Mobile/9A334 Safari/7534.48.3",
        "ip": "123.145.167.189",
        "ifa": IDFA.upper(),
        "lmt": 0,
        "carrier": "VERIZON",
        "language": "en",
        "make": "Apple",
        "model": "iPhone",
        "os": "iOS",
        "osv": "6.1",
        "js": 1,
        "connectiontype": 3,
        "devicetype": 1,
        "geo": {"lat": 35.012345, "lon": -115.12345, "country": "USA", "type": 1},
    },
    "user": {
        "id": "ffffffd5135596709273b3a1a07e466ea2bf4fff",
        "yob": 1984,
        "gender": "M",
        "eids": [
            {
                "source": "id5-sync.com",
                "uids": [{"id": "ID5*xyz", "atype": 1}],
            },
            {"source": "adserver.org", "uids": [{"id": "TTD-1", "atype": 1}]},
        ],
        "data": [{"id": "other-provider", "name": "Other", "segment": [{"id": "99"}]}],
    },
    "regs": {"coppa": 0, "gdpr": 0},
    "source": {"ext": {"schain": {"complete": 1, "nodes": [], "ver": "1.0"}}},
}


def request_25(**changes: Any) -> dict[str, Any]:
    return _changed(REQUEST_25, changes)


def request_26(**changes: Any) -> dict[str, Any]:
    return _changed(REQUEST_26, changes)


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


class DataDir:
    """Writes memberships and links into a data dir's store and database."""

    def __init__(self, data_dir: Path, store: MembershipStore | None = None) -> None:
        """`store`: the data dir's store when this process has it open already (LMDB opens
        an environment once per process)."""
        settings = Settings(data_dir=data_dir)
        self.db = make_engine(settings.resolved_database_url)
        self.store = store or open_store(settings.resolved_store_url)
        self._own_store = store is None

    def memberships(self, pairs: list[tuple[str, int, int | None]], *, ttl: int = 3600) -> None:
        """(ID text form, segment id, value) pairs, live from now for `ttl` seconds."""
        now = int(time.time())
        seq = reserve(self.db, len(pairs))
        rows = []
        for i, (text, segment_id, value) in enumerate(pairs):
            kind, key = parse_id(text)
            rows.append(
                {
                    "user_kind": kind,
                    "user_key": key,
                    "segment_id": segment_id,
                    "value": value,
                    "timestamp": now - 60,
                    "expires_at": now + ttl,
                    "removed": False,
                    "seq": seq + i,
                }
            )
        self.store.apply(pa.Table.from_pylist(rows, schema=APPLY_SCHEMA))

    def links(self, pairs: list[tuple[str, str]], *, scope: int = SHARED_SCOPE) -> None:
        links = [(parse_id(a), parse_id(b), False) for a, b in pairs]
        seq = reserve(self.db, len(links))
        batch = link_batch(
            scope, links, asserted_at=int(time.time()) - 10, ttl_days=180, first_seq=seq
        )
        self.store.apply_links(batch)

    def close(self) -> None:
        if self._own_store:
            self.store.close()
        self.db.dispose()
