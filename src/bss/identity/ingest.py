"""Link files (`file_type=links`): bytes -> links -> the store, with the job's counters and
error report.

Two formats, told apart as segment files are (bss.formats.detect: gzip allowed, Avro by its
magic bytes):

- CSV text (RFC 4180 quoting, so an ID may hold commas, quotes or line breaks): one link a
  record, ``ID_A,ID_B`` to assert it, ``ID_A,ID_B,-1`` to remove it, each ID in the link
  text form (bss.identity.ids);
- Avro, schema ``xandr_link.avsc`` in bss.formats.schema: per record `a` and `b` of the
  segment files' uid union and `remove` (docs/identity.md).

Counters: `num_valid` links applied, `num_valid_user` the same, `num_invalid_format` a
record that is not a link (wrong field count, a third field other than -1, not UTF-8),
`num_invalid_user` a link with a bad or junk ID or an ID linked to itself, the extra
`num_opted_out` a link one of whose IDs an opt-out suppresses at its seq (bss.lifecycle.optout:
not applied, reported as a segment file's pair is). Record i of the
file (every record counted) gets seq `seq_base + i`, and every link the job's recorded
`asserted_at`, so a replay (kill -9, another region) writes exactly the same links.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
import numpy as np
import polars as pl
import pyarrow as pa

from bss.formats.avro_rules import user_functions
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError, InputFile, open_input
from bss.identity.ids import InvalidId, format_id, normal_ids, parse_id
from bss.identity.links import DAY_SECONDS
from bss.ingest.engine import OPTED_OUT, Suppress
from bss.ingest.report import REPORT_COLUMNS, ErrorReport
from bss.ingest.result import IngestResult
from bss.lifecycle.optout import REASON_OPTED_OUT
from bss.store.base import LINK_SCHEMA, MembershipStore

#: jobs.file_type of a link file (null, shown as "segments", for segment files).
LINKS = "links"
FILE_TYPES = ("segments", LINKS)
#: Replace mode sets segments' members: a link file has none to set.
E_LINKS_REPLACE = "mode=replace applies to segment files, not to link files"
#: Links (or rejected records) applied per store call where records are read one by one.
BATCH_LINKS = 50_000
#: Decompressed bytes of a CSV link file read at a time (whole lines): a store call each.
BLOCK_BYTES = 1 << 21
#: Longest CSV field taken (an ID is at most bss.identity.ids.MAX_ID_CHARS): a longer one
#: is a format error of its record, not a reason to hold megabytes.
MAX_FIELD_CHARS = 4096
E_FIELDS = "a link is ID_A,ID_B or ID_A,ID_B,-1"
E_THIRD = "the third field must be -1 (remove) or absent"
E_SAME = "a link joins two different IDs"
E_NOT_UTF8 = "the record is not UTF-8 text"
E_CSV = "the record is not valid CSV: {reason}"
User = tuple[int, str]
#: What a record comes to: its line number, its text for the report, then either the link
#: (a, b, removed) or the counter and reason that reject it.
Outcome = tuple[int, str, tuple[User, User, bool] | tuple[str, str]]


def _link_of(a_text: str, b_text: str, removed: bool) -> tuple[User, User, bool] | tuple[str, str]:
    try:
        a_kind, a_key = parse_id(a_text)
        b_kind, b_key = parse_id(b_text)
    except InvalidId as exc:
        return "num_invalid_user", str(exc)
    if (a_kind, a_key) == (b_kind, b_key):
        return "num_invalid_user", E_SAME
    return (int(a_kind), a_key), (int(b_kind), b_key), removed


def _fields_outcome(fields: list[str]) -> tuple[str, tuple[User, User, bool] | tuple[str, str]]:
    """One CSV record's text for the report and what it comes to."""
    raw = ",".join(fields)[:MAX_FIELD_CHARS]
    if any(len(f) > MAX_FIELD_CHARS for f in fields):
        return raw, ("num_invalid_format", f"a field is longer than {MAX_FIELD_CHARS} characters")
    try:
        raw.encode()
    except UnicodeEncodeError:
        shown = raw.encode(errors="surrogateescape").decode(errors="replace")
        return shown, ("num_invalid_format", E_NOT_UTF8)
    if len(fields) not in (2, 3):
        return raw, ("num_invalid_format", E_FIELDS)
    if len(fields) == 3 and fields[2].strip() != "-1":
        return raw, ("num_invalid_format", E_THIRD)
    return raw, _link_of(fields[0].strip(), fields[1].strip(), len(fields) == 3)


def _csv_records(text: Iterable[str], first_line: int) -> Iterator[Outcome]:
    """The records of CSV text whose first line is line `first_line` of the file."""
    reader = csv.reader(text, strict=True)
    before = first_line - 1
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield before + reader.line_num, "", ("num_invalid_format", E_CSV.format(reason=exc))
            continue
        if fields:  # an empty line is no record
            raw, outcome = _fields_outcome(fields)
            yield before + first, raw, outcome


def _avro_end(value: Any, users: dict[str, Callable[[Any], Any]]) -> str | tuple[int, str]:
    """One end of an Avro link: its (kind, key) or why not."""
    if isinstance(value, tuple):
        name, value = value
        branch = str(name).rsplit(".", 1)[-1]
    elif type(value) is int:
        branch = "anid"
    else:
        return "uid has no recognised ID type"
    rule = users.get(branch)
    if rule is None:
        return "uid has no recognised ID type"
    kind, key, error = rule(value)
    if error is not None:
        return str(error)
    return int(kind), str(key)


def _avro_records(source: InputFile, member_id: int) -> Iterator[Outcome]:
    users = user_functions(BatchSegmentConfig(), member_id)
    try:
        reader = fastavro.reader(source.stream, return_record_name=True)
        for record_no, record in enumerate(reader, start=1):
            raw = repr(record)[:MAX_FIELD_CHARS]
            if not isinstance(record, dict) or "a" not in record or "b" not in record:
                yield record_no, raw, ("num_invalid_format", "not a link record (a, b, remove)")
                continue
            ends = [_avro_end(record["a"], users), _avro_end(record["b"], users)]
            bad = [e for e in ends if isinstance(e, str)]
            if bad:
                yield record_no, raw, ("num_invalid_user", bad[0])
                continue
            # Through the text form: the same normalisation and junk rules as CSV.
            texts = [format_id(*e) for e in ends if not isinstance(e, str)]
            yield record_no, raw, _link_of(texts[0], texts[1], bool(record.get("remove")))
    except (ValueError, EOFError, KeyError, TypeError, OSError) as exc:
        raise InputError("invalid_avro", f"the Avro file cannot be read: {exc}") from exc


#: Columns of a block's valid links: the record's index in its block, its line number and
#: text (for the report, should an opt-out hold it back), the link.
_LINK_COLUMNS = {
    "index": pl.Int64,
    "line_no": pl.Int64,
    "raw": pl.String,
    "a_kind": pl.UInt8,
    "a_key": pl.String,
    "b_kind": pl.UInt8,
    "b_key": pl.String,
    "removed": pl.Boolean,
}
#: A rejected record: line number, counter, reason, text.
Rejected = tuple[int, str, str, str]


@dataclass(slots=True)
class _Block:
    """Consecutive records of a file: how many (every record takes a seq), the valid links
    among them (_LINK_COLUMNS) and the rejected ones in file order."""

    records: int
    links: pl.DataFrame
    rejected: list[Rejected]


def _outcome_blocks(outcomes: Iterator[Outcome]) -> Iterator[_Block]:
    """Records read one by one (Avro, CSV that needs the csv module) in blocks of at most
    BATCH_LINKS links or rejections."""
    rows: list[tuple[object, ...]] = []
    rejected: list[Rejected] = []
    records = 0
    for line_no, raw, outcome in outcomes:
        if len(outcome) == 3:
            a, b, removed = outcome
            rows.append((records, line_no, raw, a[0], a[1], b[0], b[1], removed))
        else:
            counter, reason = outcome
            rejected.append((line_no, counter, reason, raw))
        records += 1
        if len(rows) >= BATCH_LINKS or len(rejected) >= BATCH_LINKS:
            yield _Block(records, _frame(rows), rejected)
            rows, rejected, records = [], [], 0
    if records:
        yield _Block(records, _frame(rows), rejected)


def _frame(rows: list[tuple[object, ...]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_LINK_COLUMNS, orient="row")


def _plain_block(text: str, first_line: int) -> _Block | None:
    """The records of CSV text without quotes, NUL or bare CR (a record a line, its fields
    split at commas, as the csv module would read them), whose first line is line
    `first_line` of the file; None when a line is too long to be read this way. IDs in their
    normal form are taken vectorised, the other lines one by one as the csv path does."""
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's end
        lines.pop()
    if not lines:
        return _Block(0, _frame([]), [])
    if max(map(len, lines)) > MAX_FIELD_CHARS:
        return None
    frame = pl.DataFrame({"line": lines}, schema={"line": pl.String})
    frame = (
        frame.with_row_index("line_no", offset=first_line)
        .filter(pl.col("line") != "")  # an empty line is no record
        .with_row_index("index")
    )
    parts = pl.col("line").str.split_exact(",", 2)
    a_ok, a_kind, a_key = normal_ids(parts.struct.field("field_0"))
    b_ok, b_kind, b_key = normal_ids(parts.struct.field("field_1"))
    commas = pl.col("line").str.count_matches(",", literal=True)
    third = parts.struct.field("field_2")
    frame = frame.with_columns(
        plain=((commas == 1) | ((commas == 2) & (third == "-1")))
        & a_ok
        & b_ok
        & (parts.struct.field("field_0") != parts.struct.field("field_1")),
        a_kind=a_kind,
        a_key=a_key,
        b_kind=b_kind,
        b_key=b_key,
        removed=commas == 2,
    )
    links = frame.filter("plain").select(
        pl.col("index").cast(pl.Int64),
        pl.col("line_no").cast(pl.Int64),
        pl.col("line").alias("raw"),
        *(c for c in _LINK_COLUMNS if c not in ("index", "line_no", "raw")),
    )
    rows: list[tuple[object, ...]] = []
    rejected: list[Rejected] = []
    for index, line_no, line in (
        frame.filter(~pl.col("plain")).select("index", "line_no", "line").iter_rows()
    ):
        raw, outcome = _fields_outcome(line.split(","))
        if len(outcome) == 3:
            a, b, removed = outcome
            rows.append((index, line_no, raw, a[0], a[1], b[0], b[1], removed))
        else:
            counter, reason = outcome
            rejected.append((line_no, counter, reason, raw))
    if rows:
        links = pl.concat([links, _frame(rows)])
    return _Block(frame.height, links, rejected)


class _Prepended(io.RawIOBase):
    """`head`, then the rest of `stream`: the csv module's reader taking over mid-file."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(target), len(self._head))
            target[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(target))
        target[: len(data)] = data
        return len(data)


def _plain_text(data: bytes) -> str | None:
    """`data` as text when the fast reader may take it: UTF-8 without quotes (a quoted field
    may span lines and blocks), NUL or a CR that does not end a line (the csv module's
    line rules); CRLF line ends become LF, which changes no record and no line number."""
    if b"\x00" in data:
        return None
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None
        data = data.replace(b"\r\n", b"\n")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _lines_in(data: bytes) -> int:
    """Line ends in `data` as the csv path counts them (LF, CR, CRLF)."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _csv_blocks(stream: BinaryIO) -> Iterator[_Block]:
    """A CSV link file in blocks of about BLOCK_BYTES of whole lines. A block of plain text
    is read vectorised (_plain_block), another with the csv module; from the first quote on
    (or a line longer than a block) the csv module reads the rest of the file."""
    carry, line = b"", 1
    while True:
        data = stream.read(BLOCK_BYTES)
        at_end = not data
        data, carry = carry + data, b""
        if not at_end:
            cut = data.rfind(b"\n") + 1
            if cut == 0 or b'"' in data[:cut]:
                yield from _careful(_Prepended(data, stream), line)
                return
            data, carry = data[:cut], data[cut:]
        elif b'"' in data:
            yield from _careful(_Prepended(data, stream), line)
            return
        text = _plain_text(data)
        block = None if text is None else _plain_block(text, line)
        if block is not None:
            yield block
        elif data:
            decoded = data.decode("utf-8", errors="surrogateescape")
            yield from _outcome_blocks(_csv_records(io.StringIO(decoded, newline=""), line))
        line += _lines_in(data)
        if at_end:
            return


def _careful(raw: io.RawIOBase, first_line: int) -> Iterator[_Block]:
    text = io.TextIOWrapper(
        io.BufferedReader(raw, 1 << 20), encoding="utf-8", errors="surrogateescape", newline=""
    )
    yield from _outcome_blocks(_csv_records(text, first_line))


class _Apply:
    """Blocks of one file to the store, counted: record i of the file gets seq
    `seq_base + i`, every link the job's `asserted_at` and its expiry."""

    def __init__(self, result: IngestResult, store: MembershipStore, **fixed: int) -> None:
        self.result, self.store = result, store
        self.scope, self.seq_base = fixed["scope"], fixed["seq_base"]
        self.asserted_at, self.expires_at = fixed["asserted_at"], fixed["expires_at"]
        self.records = 0

    def block(
        self, block: _Block, report: ErrorReport, suppress: Suppress | None
    ) -> pa.Table | None:
        """Count the block and report its rejections; its links to apply (None: none)."""
        result, counters = self.result, self.result.counters
        links = block.links.with_columns(seq=pl.col("index") + (self.seq_base + self.records))
        self.records += block.records
        result.lines_read += block.records
        rejected = block.rejected
        for _line_no, counter, _reason, _raw in rejected:
            setattr(counters, counter, getattr(counters, counter) + 1)
        if suppress is not None and links.height:
            hit = self._opted_out(links, suppress)
            held = links.filter(pl.Series(hit))
            result.num_opted_out += held.height
            rejected = rejected + [
                (line_no, OPTED_OUT, REASON_OPTED_OUT, raw)
                for line_no, raw in held.select("line_no", "raw").iter_rows()
            ]
            links = links.filter(pl.Series(~hit))
        removed = int(links["removed"].sum())
        counters.num_valid += links.height
        counters.num_valid_user += links.height
        result.pairs_removed += removed
        result.pairs_added += links.height - removed
        if rejected:
            report.add(pl.DataFrame(rejected, schema=list(REPORT_COLUMNS), orient="row"))
        return self._table(links) if links.height else None

    @staticmethod
    def _opted_out(links: pl.DataFrame, suppress: Suppress) -> np.ndarray:
        """Which links an opt-out suppresses (either end, at the link's seq)."""
        n = links.height
        kinds = np.concatenate([links["a_kind"].to_numpy(), links["b_kind"].to_numpy()])
        keys = links["a_key"].to_list() + links["b_key"].to_list()
        seqs = np.tile(links["seq"].to_numpy().astype(np.int64), 2)
        mask = suppress(kinds.astype(np.uint8), keys, seqs)
        return np.asarray(mask[:n] | mask[n:], dtype=bool)

    def _table(self, links: pl.DataFrame) -> pa.Table:
        return (
            links.select(
                scope=pl.lit(self.scope, pl.Int64),
                a_kind="a_kind",
                a_key="a_key",
                b_kind="b_kind",
                b_key="b_key",
                asserted_at=pl.lit(self.asserted_at, pl.Int64),
                expires_at=pl.lit(self.expires_at, pl.Int64),
                removed="removed",
                seq="seq",
            )
            .to_arrow()
            .cast(LINK_SCHEMA)
        )


def ingest_links_file(
    path: Path,
    *,
    member_id: int,
    seq_base: int,
    store: MembershipStore,
    asserted_at: int,
    ttl_days: int,
    max_decompressed_bytes: int,
    error_report_path: Path | None = None,
    log_limit: int = 100,
    progress: Callable[[float], None] | None = None,
    suppress: Suppress | None = None,
) -> IngestResult:
    """Validate and apply one link file in member `member_id`'s scope; never raises for bad
    input (a file that cannot be read ends with `error_code` set, what was applied before
    stays applied). An exception raised by `progress` stops the job. `suppress` tells
    which IDs an opt-out suppresses at a seq: their links are not applied."""
    result = IngestResult()
    apply = _Apply(
        result,
        store,
        scope=member_id,
        seq_base=seq_base,
        asserted_at=asserted_at,
        expires_at=asserted_at + ttl_days * DAY_SECONDS,
    )
    with ErrorReport(error_report_path, log_limit) as report:

        def tables() -> Iterator[pa.Table]:
            # A file that stops being readable ends the stream: what it held before is
            # applied, as documented.
            try:
                with open_input(path, max_decompressed_bytes) as source:
                    blocks = (
                        _outcome_blocks(_avro_records(source, member_id))
                        if source.kind == "avro"
                        else _csv_blocks(source.stream)
                    )
                    for block in blocks:
                        table = apply.block(block, report, suppress)
                        if table is not None:
                            yield table
                        if progress is not None:
                            progress(source.fraction_read())
            except InputError as exc:
                result.error_code = exc.error_code
                result.error_message = exc.message

        store.apply_links_many(tables())
        if report.total:
            result.error_log_lines = report.log_lines()
    return result


def link_replay_config(ttl_days: int) -> str:
    """What a store region's replay of a link job must repeat besides the file, the seqs and
    the time (bss.store.regions.job_replays.config_json): the TTL of its first run."""
    return json.dumps({"link_ttl_days": ttl_days})


def replay_ttl_days(config_json: str) -> int:
    return int(json.loads(config_json)["link_ttl_days"])
