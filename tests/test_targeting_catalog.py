"""The targeting catalog: segment facts and member settings answered from memory, read again
in bulk once they are older than their bound, never one query per request meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bss.targeting.catalog as catalog_module
from bss.accounts.service import create_member
from bss.db import init_db, make_engine
from bss.segments.service import create_segment, segments_by_ids, update_segment
from bss.targeting.catalog import Catalog


def test_facts_are_read_once_then_again_in_bulk_after_max_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(db)
    create_member(db, {"id": 1, "name": "m"})
    ids = [create_segment(db, 1, {"code": f"c{i}"})["id"] for i in range(3)]
    queries: list[list[int]] = []

    def counted(db_: Any, wanted: list[int]) -> Any:  # the real read, counted
        queries.append(sorted(wanted))
        return segments_by_ids(db_, wanted)

    monkeypatch.setattr(catalog_module, "segments_by_ids", counted)
    catalog = Catalog(db, max_age=3600)
    facts = catalog.segments([*ids, 999])
    assert [facts[i].code for i in ids] == ["c0", "c1", "c2"] and facts[999] is None
    read = len(queries)
    assert queries == [sorted([*ids, 999])]
    for _ in range(50):
        catalog.segments([*ids, 999])
    assert len(queries) == read  # known ids, unknown ones too, cost no query
    update_segment(db, ids[0], {"code": "renamed", "state": "inactive"})
    assert catalog.segments([ids[0]])[ids[0]].code == "c0"  # within max_age
    catalog.max_age = 0
    facts = catalog.segments([ids[0]])
    assert queries[-1] == sorted([*ids, 999])  # every known id again, in one query
    assert (facts[ids[0]].code, facts[ids[0]].active) == ("renamed", False)
    assert catalog.segments([999])[999] is None
    new = create_segment(db, 1, {"code": "new"})["id"]
    catalog.max_age = 3600
    assert catalog.segments([new])[new].code == "new"  # a new id is looked up at once
