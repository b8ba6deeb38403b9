"""Rejected lines: the documented `error_log_lines` (first N) and the complete CSV report."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO

import polars as pl

REPORT_COLUMNS = ("line_no", "counter", "reason", "raw")
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
        if room > 0:
            for _, counter, reason, raw in entries.head(room).iter_rows():
                self._log.append(f"{counter}-{raw} {reason}" if reason else f"{counter}-{raw}")
        if self._file is not None:
            entries.write_csv(self._file, include_header=False)

    def log_lines(self) -> str:
        return "\n".join(self._log)
