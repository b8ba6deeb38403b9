"""The segment registry the engine validates against: id, code, member_id, state, expire_minutes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

REGISTRY_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64(),
    "code": pl.String(),
    "member_id": pl.Int64(),
    "state": pl.String(),
    "expire_minutes": pl.Int64(),
}


class SegmentRegistry:
    """Segments known to the service. Codes match case-insensitively within their member."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame.select(
            [pl.col(name).cast(dtype) for name, dtype in REGISTRY_SCHEMA.items()]
        ).with_columns(code_key=pl.col("code").str.to_lowercase())

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> SegmentRegistry:
        rows = [
            {
                "id": int(r["id"]),
                "code": r.get("code") or None,
                "member_id": int(r["member_id"]),
                "state": (r.get("state") or "active").lower(),
                "expire_minutes": r.get("expire_minutes"),
            }
            for r in records
        ]
        return cls(pl.DataFrame(rows, schema=REGISTRY_SCHEMA))
