"""A file of huge invalid lines must not make error_log_lines huge, and the CSV error report
must not open as formulas in a spreadsheet.

Against a real `bss serve`: a small gzip of 1 MiB invalid lines gives an error_log_lines of
cut, marked lines within the documented cap, while the downloadable report keeps every line
whole. Cells that start like a formula get one leading `'` in the report only. The cutting
and the report's round trip are held to plain reference implementations by property tests.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import polars as pl
import pytest
from conftest import legacy
from hypothesis import given, settings
from hypothesis import strategies as st

from bss.ingest.report import LOG_FIELD_BYTES, LOG_LINE_BYTES, ErrorReport, cut_line, read_report

MIB = 1 << 20
MARK = "[... cut: {} more bytes; the error report has the whole line]"


def reference_cut(line: str, limit: int = LOG_LINE_BYTES) -> str:
    """Character by character: the longest prefix within `limit` bytes, then the mark."""
    if len(line.encode()) <= limit:
        return line
    head = ""
    for char in line:
        if len((head + char).encode()) > limit:
            break
        head += char
    return head + MARK.format(len(line.encode()) - len(head.encode()))


@pytest.mark.slow  # a long property run: the full suite's, not the quick run's
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=1500), st.integers(min_value=1, max_value=1200))
def test_cut_line_matches_the_reference(line, limit):
    assert cut_line(line, limit) == reference_cut(line, limit)


def write_report(tmp_path: Path, rows: list[tuple[int, str, str, str]], log_limit: int = 999):
    path = tmp_path / "errors.csv"
    frame = pl.DataFrame(
        rows,
        schema={"line_no": pl.Int64, "counter": pl.Utf8, "reason": pl.Utf8, "raw": pl.Utf8},
        orient="row",
    )
    with ErrorReport(path, log_limit) as report:
        report.add(frame)
    return path, report


printable = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f")
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["", "=", "+", "-", "@", "'", "a"]), printable), max_size=8)
)
def test_report_cells_never_start_a_formula_and_read_back_whole(tmp_path_factory, cells):
    raws = [start + rest for start, rest in cells]
    rows = [(i + 1, "num_invalid_format", "", raw) for i, raw in enumerate(raws)]
    path, _ = write_report(tmp_path_factory.mktemp("r"), rows)
    with path.open(newline="", encoding="utf-8") as fh:
        written = [row["raw"] for row in csv.DictReader(fh)]
    for raw, cell in zip(raws, written, strict=True):
        if raw[:1] in ("=", "+", "-", "@", "'"):
            assert cell == "'" + raw
        else:
            assert cell == raw
        assert cell[:1] not in ("=", "+", "-", "@")
    assert [row["raw"] for row in read_report(path)] == [cut_line(raw) for raw in raws]


def test_the_field_stops_at_its_cap_and_the_report_keeps_everything(tmp_path):
    rows = [(i + 1, "num_invalid_format", "", f"{i}:" + "x" * 5000) for i in range(200)]
    path, report = write_report(tmp_path, rows)
    field = report.log_lines()
    lines = field.split("\n")
    assert len(field.encode()) <= LOG_FIELD_BYTES
    per_line = len(cut_line("num_invalid_format-0:" + "x" * 5000).encode()) + 1
    assert len(lines) == (LOG_FIELD_BYTES + 1) // per_line
    assert lines[0] == cut_line("num_invalid_format-0:" + "x" * 5000)
    assert report.total == 200
    assert [row["raw"] for row in csv.DictReader(io.StringIO(path.read_text()))] == [
        r[3] for r in rows
    ]


def test_huge_invalid_lines_give_a_small_error_log_and_a_whole_report(admin, member_id):
    # Just under the reader's 1 MiB line limit: each is rejected and reported whole.
    lines = [f"{i}-" + "z" * (MIB - 16) for i in range(40)]
    body = gzip.compress(legacy(lines))
    assert len(body) < MIB  # a small upload
    job = admin.run(member_id, body)
    assert job["phase"] == "completed" and job["num_invalid_format"] == 40
    report = admin.raw(
        "GET",
        "/batch-segment/error-report",
        params={"member_id": member_id, "job_id": job["job_id"]},
    )
    assert report.status_code == 200
    csv.field_size_limit(2 * MIB)  # this test reads the whole lines back
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [row["counter"] for row in rows] == ["num_invalid_format"] * 40
    assert len(job["error_log_lines"].encode()) <= LOG_FIELD_BYTES
    whole = [
        f"{r['counter']}-{r['raw']} {r['reason']}" if r["reason"] else f"{r['counter']}-{r['raw']}"
        for r in rows
    ]
    expected = [cut_line(line) for line in whole]
    assert all(len(line.encode()) > MIB - 16 for line in whole)
    assert expected[0].endswith(MARK.format(len(whole[0].encode()) - LOG_LINE_BYTES))
    fit = (LOG_FIELD_BYTES + 1) // (len(expected[0].encode()) + 1)
    assert job["error_log_lines"].split("\n") == expected[:fit]
    assert [row["raw"] for row in rows] == lines


def test_formula_cells_are_neutralised_in_the_downloaded_report(admin, member_id):
    lines = ['=HYPERLINK("http://evil.example")', "+1+1", "-2-2", "@SUM(A1)", "'quoted", "plain"]
    job = admin.run(member_id, legacy(lines))
    assert job["num_invalid_format"] == 6
    logged = job["error_log_lines"].split("\n")
    assert len(logged) == 6
    for entry, line in zip(logged, lines, strict=True):
        assert entry.startswith(f"num_invalid_format-{line} ")  # as uploaded, then the reason
    report = admin.raw(
        "GET",
        "/batch-segment/error-report",
        params={"member_id": member_id, "job_id": job["job_id"]},
    )
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [row["raw"] for row in rows] == [f"'{line}" for line in lines[:5]] + ["plain"]


def test_reading_a_report_back_reads_only_the_start_of_long_lines(tmp_path):
    raws = ['=a,"b"' * 300_000, "é" * 700_000, "short", "-" + "x" * 5000]
    rows = [(i + 1, "num_invalid_format", "why", raw) for i, raw in enumerate(raws)]
    path, _ = write_report(tmp_path, rows)
    assert [row["raw"] for row in read_report(path)] == [cut_line(raw) for raw in raws]
    assert [row["line_no"] for row in read_report(path)] == ["1", "2", "3", "4"]
