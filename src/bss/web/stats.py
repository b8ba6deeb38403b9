"""Read-only aggregates the dashboard charts: per day and per member, over the kept history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, case, func, select

from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import jobs

#: The counters of rejected input, in the order the charts show them.
ERROR_KINDS = tuple(name for name in COUNTER_NAMES if name not in ("num_valid", "num_valid_user"))
DAY = 86400


@dataclass
class DayStats:
    day: int  # UNIX seconds at 00:00 UTC
    jobs: int = 0
    failed: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))

    @property
    def pairs_applied(self) -> int:
        return self.counters["num_valid"]

    @property
    def entries(self) -> int:
        return self.counters["num_valid"] + sum(self.counters[k] for k in ERROR_KINDS)

    def error_rate(self, kind: str) -> float:
        return self.counters[kind] / self.entries if self.entries else 0.0


def daily(db: Engine, member_id: int | None, now: int, days: int) -> list[DayStats]:
    """One DayStats per day of the last `days` days (oldest first), from finished jobs."""
    first_day = (now // DAY - days + 1) * DAY
    day_col = (jobs.c.completed_time / DAY).label("day")  # integer division on both engines
    q = (
        select(
            day_col,
            func.count().label("jobs"),
            func.sum(case((jobs.c.phase == "error", 1), else_=0)).label("failed"),
            *[func.sum(jobs.c[name]).label(name) for name in COUNTER_NAMES],
        )
        .where(jobs.c.completed_time >= first_day)
        .group_by(day_col)
    )
    if member_id is not None:
        q = q.where(jobs.c.member_id == member_id)
    out = {first_day + i * DAY: DayStats(first_day + i * DAY) for i in range(days)}
    with db.connect() as conn:
        for row in conn.execute(q).mappings():
            stats = out.get(int(row["day"]) * DAY)
            if stats is None:
                continue
            stats.jobs = int(row["jobs"])
            stats.failed = int(row["failed"] or 0)
            stats.counters = {name: int(row[name] or 0) for name in COUNTER_NAMES}
    return list(out.values())


def per_member(db: Engine, now: int, days: int) -> list[dict[str, Any]]:
    """Totals per member over the last `days` days, most pairs first."""
    since = (now // DAY - days + 1) * DAY
    q = (
        select(
            jobs.c.member_id,
            func.count().label("jobs"),
            *[func.sum(jobs.c[name]).label(name) for name in COUNTER_NAMES],
        )
        .where(jobs.c.completed_time >= since)
        .group_by(jobs.c.member_id)
    )
    rows = []
    with db.connect() as conn:
        for row in conn.execute(q).mappings():
            counters = {name: int(row[name] or 0) for name in COUNTER_NAMES}
            invalid = sum(counters[k] for k in ERROR_KINDS)
            total = counters["num_valid"] + invalid
            rows.append(
                {
                    "member_id": row["member_id"],
                    "jobs": int(row["jobs"]),
                    "pairs_applied": counters["num_valid"],
                    "invalid": invalid,
                    "error_rate": invalid / total if total else 0.0,
                }
            )
    return sorted(rows, key=lambda r: (-r["pairs_applied"], r["member_id"]))


def segment_jobs(db: Engine, member_id: int, segment_id: int, limit: int = 20) -> list[Any]:
    """The member's recent jobs whose segment log names the segment (added or removed)."""
    needle = f"%\n{segment_id}:%"
    q = (
        select(
            jobs.c.job_id,
            jobs.c.phase,
            jobs.c.completed_time,
            jobs.c.created_on,
            jobs.c.upload_source,
            jobs.c.segment_log_lines,
        )
        .where(jobs.c.member_id == member_id, jobs.c.segment_log_lines.like(needle))
        .order_by(jobs.c.id.desc())
        .limit(limit)
    )
    with db.connect() as conn:
        return list(conn.execute(q).mappings())


def parse_segment_log(text: str | None) -> list[tuple[str, int, int]]:
    """`added:`/`removed:` SEG_ID:COUNT lines -> [(action, segment_id, count)]."""
    out: list[tuple[str, int, int]] = []
    action = "added"
    for line in (text or "").splitlines():
        line = line.strip()
        if line in ("added:", "removed:"):
            action = line[:-1]
            continue
        seg, _, count = line.partition(":")
        if seg.isascii() and seg.isdigit() and count.isascii() and count.isdigit():
            out.append((action, int(seg), int(count)))
    return out
