"""Rejected lines: the documented `error_log_lines` (first N) and the complete CSV report.

`error_log_lines` is stored in the job row, returned by every status poll and queued into
webhook bodies, so a file of huge invalid lines must not make it huge: each line is cut at
LOG_LINE_BYTES (and says so), and lines stop once the field would pass LOG_FIELD_BYTES. The
CSV report keeps every line whole, with cells a spreadsheet would run as a formula made
text by a leading `'`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import polars as pl

REPORT_COLUMNS = ("line_no", "counter", "reason", "raw")
#: Bytes (UTF-8) of one error_log_lines line before it is cut and marked.
LOG_LINE_BYTES = 1024
#: Bytes (UTF-8) of the whole error_log_lines field; later lines are left to the report.
LOG_FIELD_BYTES = 64 * 1024
#: Cells starting with these open as formulas in spreadsheets (and `'` itself, so that one
#: leading `'` is always ours and reading the report back is unambiguous).
_FORMULA_START = r"^[=+\-@\t\r']"
#: Control characters are written escaped (\t, \r, \xNN) in error_log_lines and the report:
#: a raw one would corrupt a terminal, a log viewer or a CSV reader.
_ESCAPES = {
    chr(code): {9: "\\t", 13: "\\r"}.get(code, f"\\x{code:02x}") for code in (*range(0x20), 0x7F)
}
_HAS_CONTROL = r"[\x00-\x1f\x7f]"


def escape_controls(column: str) -> pl.Expr:
    """The text column with every control character escaped (rows without one untouched)."""
    escaped = pl.col(column)
    for char, escape in _ESCAPES.items():
        escaped = escaped.str.replace_all(char, escape, literal=True)
    return (
        pl.when(pl.col(column).str.contains(_HAS_CONTROL)).then(escaped).otherwise(pl.col(column))
    )


def neutralise_formula(column: str) -> pl.Expr:
    """The text column with a `'` before every cell a spreadsheet would read as a formula."""
    cell = pl.col(column)
    neutral = pl.when(cell.str.contains(_FORMULA_START)).then(pl.lit("'") + cell).otherwise(cell)
    return neutral.alias(column)


def cut_line(line: str, limit: int = LOG_LINE_BYTES) -> str:
    """The line, or its first `limit` bytes and a mark saying how much was cut."""
    data = line.encode()
    if len(data) <= limit:
        return line
    head = data[:limit].decode(errors="ignore")
    return _marked(head, len(data) - len(head.encode()))


def _marked(head: str, cut: int) -> str:
    return f"{head}[... cut: {cut} more bytes; the error report has the whole line]"


#: Bytes of a report line read by read_report: the other columns and a cut `raw`.
_READ_BYTES = 4 * LOG_LINE_BYTES


def read_report(path: Path) -> Iterator[dict[str, str]]:
    """The report's rows as written before neutralising, `reason` and `raw` cut like log lines.

    Control characters are escaped in the report, so each row is one physical line, and `raw`
    is its last column: only the start of a line is read whatever the line's length, the rest
    is counted (memory stays bounded by a 0.5 GB line too).
    """
    with path.open("rb") as fh:
        header = next(csv.reader([fh.readline().decode()]), None)
        if header is None:
            return
        while line := fh.readline(_READ_BYTES):
            unread = 0
            if not line.endswith(b"\n"):
                unread = _skip_line(fh)
            text = line.decode(errors="ignore")
            unread += len(line) - len(text.encode())  # a character split by the read
            cells = next(csv.reader([text.rstrip("\r\n")]), [])
            row = dict(zip(header, cells, strict=False))
            reason, raw = (_unneutralised(row.get(key) or "") for key in ("reason", "raw"))
            whole = len(raw.encode()) + unread
            head = raw.encode()[:LOG_LINE_BYTES].decode(errors="ignore")
            cut = whole - len(head.encode())
            row["reason"], row["raw"] = cut_line(reason), _marked(head, cut) if cut else raw
            yield row


def _unneutralised(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def _skip_line(fh: IO[bytes]) -> int:
    """Read past the rest of a long report line; the bytes of `raw` it held."""
    rest, quotes = 0, 0
    while chunk := fh.readline(1 << 20):
        rest += len(chunk)
        quotes += chunk.count(b'"')
        if chunk.endswith(b"\n"):
            rest -= 1
            break
    # A quoted cell's quotes are doubled and it has a closing one.
    return rest - ((quotes + 1) // 2 if quotes else 0)


class ErrorReport:
    """Collects rejected entries (line_no, counter, reason, raw) in file order.

    Keeps the first `log_limit` in memory for `error_log_lines` and streams every entry to
    a CSV file beside the job, so the complete list is never capped and never held whole.
    """

    def __init__(self, path: Path | None, log_limit: int) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        self._log_limit = log_limit
        self._log: list[str] = []
        self._log_bytes = 0
        self._log_full = False
        self.total = 0

    def __enter__(self) -> ErrorReport:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("wb")
            self._file.write((",".join(REPORT_COLUMNS) + "\n").encode())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()

    def add(self, entries: pl.DataFrame) -> None:
        entries = entries.select(REPORT_COLUMNS).with_columns(
            escape_controls("raw"), escape_controls("reason")
        )
        self.total += len(entries)
        room = self._log_limit - len(self._log)
        if room > 0 and not self._log_full:
            for _, counter, reason, raw in entries.head(room).iter_rows():
                self._log_line(f"{counter}-{raw} {reason}" if reason else f"{counter}-{raw}")
        if self._file is not None:
            entries.with_columns(neutralise_formula("raw"), neutralise_formula("reason")).write_csv(
                self._file, include_header=False
            )

    def _log_line(self, line: str) -> None:
        line = cut_line(line)
        size = len(line.encode()) + 1  # and its newline
        if self._log_bytes + size > LOG_FIELD_BYTES + 1:
            self._log_full = True
            return
        self._log.append(line)
        self._log_bytes += size

    def log_lines(self) -> str:
        return "\n".join(self._log)
