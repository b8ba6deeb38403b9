"""The segment loads report: figures kept as writes apply, and the documented report flow.

Figures are per segment and UTC day: pairs added (`total_loads`), pairs removed
(`total_removals`) and a sketch of the unique users added (bss.reports.sketch). A job's
figures are gathered while it runs (`SegmentLoads`) and written in the transaction that
finishes it; a real-time post's as it applies. Each source is written once
(`segment_load_sources`), so a replayed job or a retried post never counts twice. A report
reads these figures only, never the membership store.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from bss.db import fmt_ts, now_s, parse_ts, write_tx
from bss.errors import BssError, Invalid, NotFound
from bss.formats.config import BatchSegmentConfig
from bss.reports.models import reports, segment_load_sources, segment_loads
from bss.reports.sketch import UniqueSketch, user_hashes
from bss.segments.models import segments

DAY = 86400
REPORT_TYPE = "segment_load"
DIMENSIONS = ("segment_id", "segment_name", "segment", "day", "month")
METRICS = (
    "total_loads",
    "total_removals",
    "daily_uniques",
    "monthly_uniques",
    "avg_daily_uniques",
)
FILTERABLE = ("segment_id", "day", "month")
INTERVALS = ("today", "yesterday", "last_48_hours", "last_7_days", "month_to_date")
DEFAULT_INTERVAL = "month_to_date"
FORMATS = ("csv", "json")
#: The longest custom range one report may cover.
MAX_REPORT_DAYS = 1000


# --- figures -------------------------------------------------------------------------------


@dataclass(slots=True)
class SegmentLoads:
    """Figures of one source (a job, a real-time post), all on one UTC day."""

    day: int
    loads: Counter[int] = field(default_factory=Counter)
    removals: Counter[int] = field(default_factory=Counter)
    uniques: dict[int, UniqueSketch] = field(default_factory=dict)

    @classmethod
    def at(cls, now: int) -> SegmentLoads:
        return cls(day=now // DAY)

    def add(self, valid: pl.DataFrame) -> None:
        """Count applied pairs: columns segment_id, user_kind, user_key, removed."""
        if valid.is_empty():
            return
        for segment_id, removed, n in valid.group_by("segment_id", "removed").len().iter_rows():
            (self.removals if removed else self.loads)[segment_id] += n
        added = valid.filter(~pl.col("removed"))
        if added.is_empty():
            return
        hashes = user_hashes(added["user_kind"], added["user_key"])
        segment_ids = added["segment_id"].to_numpy()
        present = added["segment_id"].unique()
        if len(present) == 1:
            self.uniques.setdefault(int(present[0]), UniqueSketch()).add(hashes)
            return
        if len(present) <= 32:  # a few segments: a mask each beats sorting all pairs
            for segment_id in present.to_list():
                sketch = self.uniques.setdefault(segment_id, UniqueSketch())
                sketch.add(hashes[segment_ids == segment_id])
            return
        order = np.argsort(segment_ids, kind="stable")
        segment_ids, hashes = segment_ids[order], hashes[order]
        starts = np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])
        ends = np.r_[starts[1:], len(segment_ids)]
        for start, end in zip(starts, ends, strict=True):
            sketch = self.uniques.setdefault(int(segment_ids[start]), UniqueSketch())
            sketch.add(hashes[start:end])


def _insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    # Each dialect's insert() is its own class (with its own on_conflict_do_nothing()).
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).values(rows).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).values(rows).on_conflict_do_nothing())


def record_loads(conn: Connection, loads: SegmentLoads, *, source: str | None) -> bool:
    """Add a source's figures, in the caller's transaction; False if it was counted before.

    `source` names what could be offered again (a job, a post with an Idempotency-Key); None
    for what cannot (a post without a key), which needs no record."""
    if source is not None:
        counted = conn.execute(
            select(segment_load_sources.c.source).where(segment_load_sources.c.source == source)
        ).first()
        if counted is not None:
            return False
        conn.execute(insert(segment_load_sources).values(source=source, counted_on=now_s()))
    ids = sorted(set(loads.loads) | set(loads.removals))
    if not ids:
        return True
    # Rows are created and locked in segment order, so concurrent writers cannot deadlock.
    _insert_ignore(
        conn,
        segment_loads,
        [{"segment_id": i, "day": loads.day, "loads": 0, "removals": 0} for i in ids],
    )
    mine = (segment_loads.c.day == loads.day) & segment_loads.c.segment_id.in_(ids)
    stored = dict(
        conn.execute(
            select(segment_loads.c.segment_id, segment_loads.c.uniques)
            .where(mine)
            .order_by(segment_loads.c.segment_id)
            .with_for_update()
        ).all()
    )
    rows = []
    for segment_id in ids:
        uniques = stored[segment_id]
        added = loads.uniques.get(segment_id)
        if added is not None:
            sketch = UniqueSketch.from_bytes(uniques)
            sketch.merge(added)
            uniques = sketch.to_bytes()
        rows.append(
            {
                "sid": segment_id,
                "added": loads.loads[segment_id],
                "removed": loads.removals[segment_id],
                "sketch": uniques,
            }
        )
    conn.execute(
        update(segment_loads)
        .where(
            segment_loads.c.segment_id == bindparam("sid"),
            segment_loads.c.day == loads.day,
        )
        .values(
            loads=segment_loads.c.loads + bindparam("added"),
            removals=segment_loads.c.removals + bindparam("removed"),
            uniques=bindparam("sketch"),
        ),
        rows,
    )
    return True


# --- the report request --------------------------------------------------------------------


@dataclass(slots=True)
class ReportSpec:
    columns: list[str]
    segment_ids: list[int] | None
    days: set[int] | None
    months: set[str] | None
    start_day: int
    end_day: int  # exclusive
    orders: list[tuple[str, bool]]  # (column, descending)
    format: str
    interval: str | None


def _day_text(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%d")


def _month_of(day: int) -> str:
    return _day_text(day)[:7]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _interval_days(interval: str, today: int) -> tuple[int, int]:
    first_of_month = today - (datetime.fromtimestamp(today * DAY, UTC).day - 1)
    return {
        "today": (today, today + 1),
        "yesterday": (today - 1, today),
        "last_48_hours": (today - 1, today + 1),
        "last_7_days": (today - 7, today),
        "month_to_date": (first_of_month, today + 1),
    }[interval]


def _parse_day(text: Any, name: str) -> int:
    if not isinstance(text, str):
        raise Invalid(f"{name} must be a date string YYYY-MM-DD")
    try:
        return parse_ts(text) // DAY
    except ValueError as exc:
        raise Invalid(f"{name}: {exc}") from exc


def _parse_end_day(text: Any) -> int:
    if not isinstance(text, str):
        raise Invalid("end_date must be a date string YYYY-MM-DD")
    try:
        ts = parse_ts(text)
    except ValueError as exc:
        raise Invalid(f"end_date: {exc}") from exc
    return -(-ts // DAY)  # an end within a day includes that day


def _filters(raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    items = raw if isinstance(raw, list) else [raw]
    out: dict[str, list[Any]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise Invalid('filters must be a list of objects such as {"segment_id": 220}')
        for name, value in item.items():
            if name not in FILTERABLE:
                raise Invalid(f"cannot filter by {name!r}; filters: {', '.join(FILTERABLE)}")
            out.setdefault(name, []).extend(_as_list(value))
    return out


def parse_report_request(body: Any, now: int) -> tuple[ReportSpec, dict[str, Any]]:
    """Validate a POST /report body; returns the spec and the request as stored. The body
    is checked here, not by a model, so that each rule answers with its own message."""
    if not isinstance(body, dict) or not isinstance(body.get("report"), dict):
        raise Invalid('expected {"report": {"report_type": "segment_load", "columns": [...]}}')
    req = body["report"]
    if req.get("report_type") != REPORT_TYPE:
        raise Invalid(f'report_type must be "{REPORT_TYPE}" (the only report this service runs)')
    columns = _columns(req)
    start_day, end_day, interval = _date_range(req, now // DAY)
    segment_ids, days, months = _selection(_filters(req.get("filters")))
    orders = _orders(req.get("orders") or [], columns)
    fmt = str(req.get("format") or "csv").lower()
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}")
    timezone = req.get("timezone")
    if timezone not in (None, "UTC", "utc"):
        raise Invalid("timezone: reports are in UTC only")
    stored = {**req, "row_per": [c for c in columns if c in DIMENSIONS]}
    spec = ReportSpec(
        columns=list(columns),
        segment_ids=segment_ids,
        days=days,
        months=months,
        start_day=start_day,
        end_day=end_day,
        orders=orders,
        format=fmt,
        interval=interval,
    )
    return spec, stored


def _columns(req: dict[str, Any]) -> list[str]:
    """The report's columns, checked with its groups and the metrics' dimensions."""
    columns = req.get("columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise Invalid("columns must be a non-empty list of column names")
    unknown = [c for c in columns if c not in DIMENSIONS + METRICS]
    if unknown:
        raise Invalid(f"unknown column(s) {unknown}; columns: {', '.join(DIMENSIONS + METRICS)}")
    if len(set(columns)) != len(columns):
        raise Invalid("columns lists a column more than once")
    groups = req.get("groups") or []
    if not isinstance(groups, list) or any(g not in DIMENSIONS for g in groups):
        raise Invalid(f"groups must list dimensions: {', '.join(DIMENSIONS)}")
    missing = [g for g in groups if g not in columns]
    if missing:
        raise Invalid(f"groups {missing} must also be columns")
    if "daily_uniques" in columns and "day" not in columns:
        raise Invalid("daily_uniques needs the day dimension (add day to columns)")
    for metric in ("monthly_uniques", "avg_daily_uniques"):
        if metric in columns and ("month" not in columns or "day" in columns):
            raise Invalid(f"{metric} needs the month dimension, without day")
    return columns


def _date_range(req: dict[str, Any], today: int) -> tuple[int, int, str | None]:
    """(first day, day after the last, the named interval if one was given or defaulted)."""
    interval = req.get("report_interval")
    start_date, end_date = req.get("start_date"), req.get("end_date")
    if interval is not None and (start_date is not None or end_date is not None):
        raise Invalid("give report_interval or start_date/end_date, not both")
    if start_date is None and end_date is None:
        interval = interval if interval is not None else DEFAULT_INTERVAL
        if interval not in INTERVALS:
            raise Invalid(f"report_interval must be one of {', '.join(INTERVALS)}")
        return (*_interval_days(interval, today), interval)
    if start_date is None or end_date is None:
        raise Invalid("start_date and end_date go together")
    start_day, end_day = _parse_day(start_date, "start_date"), _parse_end_day(end_date)
    if end_day <= start_day:
        raise Invalid("end_date must be after start_date")
    if end_day - start_day > MAX_REPORT_DAYS:
        raise Invalid(f"a report covers at most {MAX_REPORT_DAYS} days")
    return start_day, end_day, interval


def _selection(
    filters: dict[str, list[Any]],
) -> tuple[list[int] | None, set[int] | None, set[str] | None]:
    """The filters' segment ids, days and months (None: not filtered by it)."""
    segment_ids = None
    if "segment_id" in filters:
        try:
            segment_ids = sorted({int(v) for v in filters["segment_id"] if not isinstance(v, bool)})
        except (TypeError, ValueError) as exc:
            raise Invalid("segment_id filters must be integers") from exc
        if not segment_ids or any(not 0 < v < 2**31 for v in segment_ids):
            raise Invalid("segment_id filters must be integers between 1 and 2147483647")
    days = {_parse_day(v, "day filter") for v in filters["day"]} if "day" in filters else None
    months = None
    if "month" in filters:
        months = set()
        for v in filters["month"]:
            try:
                months.add(datetime.strptime(str(v), "%Y-%m").strftime("%Y-%m"))
            except ValueError as exc:
                raise Invalid(f"month filter {v!r} is not YYYY-MM") from exc
    return segment_ids, days, months


def _orders(items: Any, columns: list[str]) -> list[tuple[str, bool]]:
    """(column, descending) for each order, as given."""
    orders: list[tuple[str, bool]] = []
    for item in items:
        name: str | None  # a dict item's "order_by" may be missing (or not a string)
        if isinstance(item, str):
            name, direction = item, "ASC"
        elif isinstance(item, dict):
            name, direction = item.get("order_by"), str(item.get("direction", "ASC"))
        else:
            raise Invalid('orders must list column names or {"order_by": ..., "direction": ...}')
        if not isinstance(name, str) or name not in columns:
            raise Invalid(f"cannot order by {name!r}: not a column of the report")
        if direction.upper() not in ("ASC", "DESC"):
            raise Invalid("order direction must be ASC or DESC")
        orders.append((name, direction.upper() == "DESC"))
    return orders


def _segments_in_scope(
    conn: Connection, member_id: int, config: BatchSegmentConfig, ids: list[int] | None
) -> dict[int, Any]:
    """The member's own segments; shared ones (those it may write) only when selected by id."""
    if ids is None:
        q = select(segments).where(segments.c.member_id == member_id)
        return {r["id"]: r for r in conn.execute(q).mappings()}
    rows = {
        r["id"]: r for r in conn.execute(select(segments).where(segments.c.id.in_(ids))).mappings()
    }
    owners = config.authorized_owners(member_id)
    # Another member's segment is answered as one that does not exist: telling them apart
    # would tell a member which ids exist elsewhere.
    unknown = [i for i in ids if i not in rows or rows[i]["member_id"] not in owners]
    if unknown:
        raise NotFound(f"segment(s) {unknown} not found")
    return rows


@dataclass(slots=True)
class _Figures:
    """One row of a report, as the kept figures add up."""

    loads: int = 0
    removals: int = 0
    sketch: UniqueSketch | None = None
    daily_sum: int = 0


def run_report(
    db: Engine, member_id: int, config: BatchSegmentConfig, spec: ReportSpec, now: int
) -> list[list[Any]]:
    """The report's rows (in column order), from the kept figures."""
    with db.connect() as conn:
        scope = _segments_in_scope(conn, member_id, config, spec.segment_ids)
        q = select(segment_loads).where(
            segment_loads.c.day >= spec.start_day, segment_loads.c.day < spec.end_day
        )
        if spec.segment_ids is not None:
            q = q.where(segment_loads.c.segment_id.in_(spec.segment_ids))
        else:
            q = q.join(segments, segments.c.id == segment_loads.c.segment_id).where(
                segments.c.member_id == member_id
            )
        figures = list(conn.execute(q).mappings())
    rows = _added_up(figures, scope, spec)
    out = [_row_values(key, row, scope, spec, now) for key, row in rows.items()]
    return _in_order(out, spec)


def _grain(columns: list[str]) -> str | None:
    return "day" if "day" in columns else "month" if "month" in columns else None


def _added_up(
    figures: list[Any], scope: dict[int, Any], spec: ReportSpec
) -> dict[tuple[Any, Any], _Figures]:
    """The selected figures added up per (segment or None, day or month or None)."""
    columns = spec.columns
    by_segment = any(c in columns for c in ("segment_id", "segment_name", "segment"))
    grain = _grain(columns)
    wants_sketch = any(c in columns for c in ("daily_uniques", "monthly_uniques"))
    wants_avg = "avg_daily_uniques" in columns
    rows: dict[tuple[Any, Any], _Figures] = {}
    for f in figures:
        segment_id, day = f["segment_id"], f["day"]
        if segment_id not in scope:
            continue
        if spec.days is not None and day not in spec.days:
            continue
        month = _month_of(day)
        if spec.months is not None and month not in spec.months:
            continue
        key = (
            segment_id if by_segment else None,
            day if grain == "day" else month if grain == "month" else None,
        )
        row = rows.setdefault(key, _Figures())
        row.loads += f["loads"]
        row.removals += f["removals"]
        if wants_sketch or wants_avg:
            sketch = UniqueSketch.from_bytes(f["uniques"])
            row.daily_sum += sketch.count()
            if wants_sketch:
                if row.sketch is None:
                    row.sketch = sketch
                else:
                    row.sketch.merge(sketch)
    return rows


def _row_values(
    key: tuple[Any, Any], row: _Figures, scope: dict[int, Any], spec: ReportSpec, now: int
) -> list[Any]:
    """One report row, in column order."""
    segment_id, when = key
    grain = _grain(spec.columns)
    segment = scope.get(segment_id) if segment_id is not None else None
    name = (segment["short_name"] or "") if segment is not None else None
    uniques = row.sketch.count() if row.sketch is not None else 0
    values: dict[str, Any] = {
        "segment_id": segment_id,
        "segment_name": name,
        "segment": f"{name} ({segment_id})" if segment is not None else None,
        "day": _day_text(when) if grain == "day" else None,
        "month": (_month_of(when) if grain == "day" else when if grain == "month" else None),
        "total_loads": row.loads,
        "total_removals": row.removals,
        "daily_uniques": uniques,
        "monthly_uniques": uniques,
        "avg_daily_uniques": (
            round(row.daily_sum / _days_counted(when, spec, now)) if grain == "month" else None
        ),
    }
    return [values[c] for c in spec.columns]


def _days_counted(month: str, spec: ReportSpec, now: int) -> int:
    """The days of `month` the report covers, up to today (at least one)."""
    last_day = min(spec.end_day, now // DAY + 1)
    year, mon = int(month[:4]), int(month[5:])
    first = date(year, mon, 1).toordinal() - date(1970, 1, 1).toordinal()
    after = first + calendar.monthrange(year, mon)[1]
    return max(1, min(after, last_day) - max(first, spec.start_day))


def _in_order(out: list[list[Any]], spec: ReportSpec) -> list[list[Any]]:
    """Rows by their dimensions, then by the orders asked for (the first one first)."""
    columns = spec.columns

    def sort_key(values: list[Any]) -> tuple[Any, ...]:
        return tuple((v is None, v) for v in values)

    dims = [i for i, c in enumerate(columns) if c in DIMENSIONS]
    out.sort(key=lambda r: sort_key([r[i] for i in dims]))
    for name, descending in reversed(spec.orders):
        column = columns.index(name)
        out.sort(key=lambda r: sort_key([r[column]]), reverse=descending)
    return out


def purge_reports(db: Engine, before: int) -> int:
    """Retention: reports requested, and records of sources counted, before `before` (UNIX
    seconds; a job that old is never replayed). The figures themselves are kept."""
    with write_tx(db) as conn:
        n = conn.execute(reports.delete().where(reports.c.created_on < before)).rowcount
        n += conn.execute(
            segment_load_sources.delete().where(segment_load_sources.c.counted_on < before)
        ).rowcount
    return n


# --- stored reports --------------------------------------------------------------------------


def create_report(
    db: Engine,
    *,
    member_id: int,
    user_id: int | None,
    username: str | None,
    config: BatchSegmentConfig,
    body: Any,
) -> str:
    """Validate, run and keep a report; returns its id (ready at once: figures are kept)."""
    now = now_s()
    spec, stored = parse_report_request(body, now)
    report_id = secrets.token_hex(16)
    with write_tx(db) as conn:
        conn.execute(
            insert(reports).values(
                report_id=report_id,
                member_id=member_id,
                user_id=user_id,
                username=username,
                report_type=REPORT_TYPE,
                json_request=json.dumps({"report": stored}, separators=(",", ":")),
                created_on=now,
                start_day=spec.start_day,
                end_day=spec.end_day,
                format=spec.format,
                execution_status="pending",
            )
        )
    try:
        rows = run_report(db, member_id, config, spec, now)
    except BssError:
        with write_tx(db) as conn:
            conn.execute(reports.delete().where(reports.c.report_id == report_id))
        raise
    result = json.dumps({"columns": spec.columns, "rows": rows}, separators=(",", ":"))
    with write_tx(db) as conn:
        conn.execute(
            update(reports)
            .where(reports.c.report_id == report_id)
            .values(result_json=result, execution_status="ready")
        )
    return report_id


def get_report_row(db: Engine, report_id: str, member_id: int | None) -> Any:
    with db.connect() as conn:
        row = (
            conn.execute(select(reports).where(reports.c.report_id == report_id)).mappings().first()
        )
    if row is None or (member_id is not None and row["member_id"] != member_id):
        raise NotFound(f"report {report_id} not found")
    return row


def report_out(row: Any) -> dict[str, Any]:
    created = fmt_ts(row["created_on"])
    header = (
        f"Report type:,{row['report_type']}\r\n,\r\nRun at:,{created}\r\n"
        f"Start date:,{_day_text(row['start_day'])}\r\n"
        f"End date:,{_day_text(row['end_day'])}\r\nTimezone:,UTC\r\n"
        f"User:,{row['username'] or ''} ({row['user_id'] or ''})\r\n"
    )
    return {
        "name": None,
        "created_on": created,
        "cache_hit": False,
        "fact_cache_hit": False,
        "fact_cache_error": None,
        "json_request": row["json_request"],
        "header_info": header,
        "url": f"report-download?id={row['report_id']}",
    }


def report_result(row: Any) -> tuple[list[str], list[list[Any]]]:
    data = json.loads(row["result_json"] or '{"columns": [], "rows": []}')
    return data["columns"], data["rows"]


def report_csv(row: Any) -> str:
    columns, rows = report_result(row)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in r] for r in rows)
    return buf.getvalue()
