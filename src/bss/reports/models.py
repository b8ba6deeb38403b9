"""Tables of the reports domain: segment load figures, what they counted, report requests."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Table, Text

from bss.db import metadata

#: Per segment and UTC day: pairs added (loads), pairs removed, and a sketch of the unique
#: users added (bss.reports.sketch). Written as jobs finish and real-time posts apply.
segment_loads = Table(
    "segment_loads",
    metadata,
    Column("segment_id", Integer, primary_key=True),
    #: UTC day number: UNIX seconds // 86400.
    Column("day", Integer, primary_key=True),
    Column("loads", BigInteger, nullable=False, default=0),
    Column("removals", BigInteger, nullable=False, default=0),
    Column("uniques", LargeBinary, nullable=True),
)

#: Every job or real-time post whose figures were counted, so that none counts twice.
segment_load_sources = Table(
    "segment_load_sources",
    metadata,
    Column("source", String(120), primary_key=True),
    Column("counted_on", BigInteger, nullable=False),
)

#: Report requests (POST /report) and their results.
reports = Table(
    "reports",
    metadata,
    Column("report_id", String(32), primary_key=True),
    Column("member_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=True),
    Column("username", String(200), nullable=True),
    Column("report_type", String(40), nullable=False),
    Column("json_request", Text, nullable=False),
    Column("created_on", BigInteger, nullable=False),
    Column("start_day", Integer, nullable=False),
    Column("end_day", Integer, nullable=False),
    Column("format", String(10), nullable=False),
    #: {"columns": [...], "rows": [[...], ...]}
    Column("result_json", Text, nullable=True),
    Column("execution_status", String(20), nullable=False),
)
