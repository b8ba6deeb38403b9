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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import polars as pl
import pyarrow as pa

from bss.formats.avro_rules import user_functions
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError, InputFile, open_input
from bss.identity.ids import InvalidId, format_id, parse_id
from bss.identity.links import DAY_SECONDS
from bss.ingest.engine import OPTED_OUT, Suppress
from bss.ingest.report import ErrorReport
from bss.ingest.result import IngestResult
from bss.lifecycle.optout import REASON_OPTED_OUT
from bss.store.base import LINK_SCHEMA, MembershipStore

#: jobs.file_type of a link file (null, shown as "segments", for segment files).
LINKS = "links"
FILE_TYPES = ("segments", LINKS)
#: Replace mode sets segments' members: a link file has none to set.
E_LINKS_REPLACE = "mode=replace applies to segment files, not to link files"
#: Links applied per store call.
BATCH_LINKS = 50_000
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


def _csv_records(source: InputFile) -> Iterator[Outcome]:
    text = io.TextIOWrapper(source.stream, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True)
    line_no = 0
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_no = reader.line_num
            yield line_no, "", ("num_invalid_format", E_CSV.format(reason=exc))
            continue
        line_no = first
        if not fields:  # an empty line: no record
            continue
        raw = ",".join(fields)[:MAX_FIELD_CHARS]
        if any(len(f) > MAX_FIELD_CHARS for f in fields):
            yield (
                line_no,
                raw,
                ("num_invalid_format", f"a field is longer than {MAX_FIELD_CHARS} characters"),
            )
            continue
        try:
            raw.encode()
        except UnicodeEncodeError:
            yield (
                line_no,
                raw.encode(errors="surrogateescape").decode(errors="replace"),
                (
                    "num_invalid_format",
                    E_NOT_UTF8,
                ),
            )
            continue
        if len(fields) not in (2, 3):
            yield line_no, raw, ("num_invalid_format", E_FIELDS)
        elif len(fields) == 3 and fields[2].strip() != "-1":
            yield line_no, raw, ("num_invalid_format", E_THIRD)
        else:
            yield line_no, raw, _link_of(fields[0].strip(), fields[1].strip(), len(fields) == 3)


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


#: A valid link waiting for the store: its ends, removed, seq, line number and text.
Pending = tuple[User, User, bool, int, int, str]


class _Batch:
    def __init__(self, scope: int, asserted_at: int, expires_at: int) -> None:
        self.scope, self.asserted_at, self.expires_at = scope, asserted_at, expires_at
        self.rows: list[Pending] = []

    def opted_out(self, suppress: Suppress) -> list[Pending]:
        """Take out the rows an opt-out suppresses (either end, at the row's seq)."""
        rows = self.rows
        kinds = np.array([r[0][0] for r in rows] + [r[1][0] for r in rows], dtype=np.uint8)
        keys = [r[0][1] for r in rows] + [r[1][1] for r in rows]
        seqs = np.array([r[3] for r in rows] * 2, dtype=np.int64)
        mask = suppress(kinds, keys, seqs)
        hit = mask[: len(rows)] | mask[len(rows) :]
        self.rows = [r for r, h in zip(rows, hit.tolist(), strict=True) if not h]
        return [r for r, h in zip(rows, hit.tolist(), strict=True) if h]

    def table(self) -> pa.Table:
        rows = self.rows
        n = len(rows)
        return pa.table(
            {
                "scope": pa.array([self.scope] * n, pa.int64()),
                "a_kind": pa.array([r[0][0] for r in rows], pa.uint8()),
                "a_key": pa.array([r[0][1] for r in rows], pa.string()),
                "b_kind": pa.array([r[1][0] for r in rows], pa.uint8()),
                "b_key": pa.array([r[1][1] for r in rows], pa.string()),
                "asserted_at": pa.array([self.asserted_at] * n, pa.int64()),
                "expires_at": pa.array([self.expires_at] * n, pa.int64()),
                "removed": pa.array([r[2] for r in rows], pa.bool_()),
                "seq": pa.array([r[3] for r in rows], pa.int64()),
            },
            schema=LINK_SCHEMA,
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
    counters = result.counters
    batch = _Batch(member_id, asserted_at, asserted_at + ttl_days * DAY_SECONDS)
    rejected: list[tuple[int, str, str, str]] = []

    def flush(report: ErrorReport) -> None:
        if batch.rows and suppress is not None:
            for _a, _b, _removed, _seq, line_no, raw in batch.opted_out(suppress):
                result.num_opted_out += 1
                rejected.append((line_no, OPTED_OUT, REASON_OPTED_OUT, raw))
        for _a, _b, removed, *_ in batch.rows:
            counters.num_valid += 1
            counters.num_valid_user += 1
            if removed:
                result.pairs_removed += 1
            else:
                result.pairs_added += 1
        if batch.rows:
            store.apply_links(batch.table())
            batch.rows.clear()
        if rejected:
            report.add(
                pl.DataFrame(rejected, schema=["line_no", "counter", "reason", "raw"], orient="row")
            )
            rejected.clear()

    with ErrorReport(error_report_path, log_limit) as report:
        try:
            with open_input(path, max_decompressed_bytes) as source:
                records = (
                    _avro_records(source, member_id)
                    if source.kind == "avro"
                    else _csv_records(source)
                )
                for index, (line_no, raw, outcome) in enumerate(records):
                    result.lines_read += 1
                    if len(outcome) == 3:
                        a, b, removed = outcome
                        batch.rows.append((a, b, removed, seq_base + index, line_no, raw))
                    else:
                        counter, reason = outcome
                        setattr(counters, counter, getattr(counters, counter) + 1)
                        rejected.append((line_no, counter, reason, raw))
                    if len(batch.rows) >= BATCH_LINKS or len(rejected) >= BATCH_LINKS:
                        flush(report)
                        if progress is not None:
                            progress(source.fraction_read())
        except InputError as exc:
            result.error_code = exc.error_code
            result.error_message = exc.message
        flush(report)
        if report.total:
            result.error_log_lines = report.log_lines()
    return result


def link_replay_config(ttl_days: int) -> str:
    """What a store region's replay of a link job must repeat besides the file, the seqs and
    the time (bss.store.regions.job_replays.config_json): the TTL of its first run."""
    return json.dumps({"link_ttl_days": ttl_days})


def replay_ttl_days(config_json: str) -> int:
    return int(json.loads(config_json)["link_ttl_days"])
