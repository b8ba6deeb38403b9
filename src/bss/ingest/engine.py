"""The ingest engine: validate parsed chunks against the registry and config, apply, count, report.

One pass over the file, a chunk at a time, everything vectorized with Polars. Memory is
bounded by the chunk size plus 8 bytes per distinct line (the duplicate-line check).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa

from bss.formats import InputError, ParsedChunk, open_input, read_chunks
from bss.formats.config import DEFAULT_SEGMENT_LOG_LINES, BatchSegmentConfig
from bss.formats.records import EXPIRATION_MEMBER_DEFAULT, EXPIRATION_REMOVE, REASON_DUPLICATE
from bss.ingest.registry import SegmentRegistry
from bss.ingest.report import ErrorReport
from bss.ingest.result import IngestResult
from bss.store.base import APPLY_SCHEMA, MembershipStore
from bss.store.sorted_runs import WrittenKeys

MAX_LIFETIME_SECONDS = 180 * 24 * 3600

#: Error code of a job stopped because num_invalid_before_error was exceeded.
TOO_MANY_INVALID = "too_many_invalid_lines"

# Pair statuses, in order of precedence; the names are the counters they feed.
VALID = "num_valid"
INVALID_SEGMENT = "num_invalid_segment"
UNAUTH_SEGMENT = "num_unauth_segment"
INACTIVE_SEGMENT = "num_inactive_segment"
INVALID_TIMESTAMP = "num_invalid_timestamp"
OTHER_ERROR = "num_other_error"
PAST_EXPIRATION = "num_past_expiration"
#: An extra counter: valid pairs not applied because their user opted out (bss.lifecycle).
OPTED_OUT = "num_opted_out"
#: Counters of problems with a segment count each segment once per job.
DEDUPLICATED = (INVALID_SEGMENT, UNAUTH_SEGMENT, INACTIVE_SEGMENT, PAST_EXPIRATION)


class _SeenLines:
    """64-bit hashes of every well-formed line so far, to find duplicate lines.

    A byte-per-slot filter (64 MiB, fixed) answers "surely new" for most lines with one
    memory access; only its hits are checked exactly, against sorted runs of hashes kept
    like a small LSM tree (a run merges with the previous one once it is as large), so
    remembering n lines costs O(n log n) in all rather than a full re-sort per chunk.
    """

    FILTER_BITS = 26

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.filter = np.zeros(1 << self.FILTER_BITS, dtype=np.uint8)
        self.shift = np.uint64(64 - self.FILTER_BITS)

    def _contains(self, wanted: np.ndarray) -> np.ndarray:
        found = np.zeros(len(wanted), dtype=bool)
        for run in self.runs:
            idx = np.searchsorted(run, wanted)
            idx[idx == len(run)] = 0
            found |= run[idx] == wanted
        return found

    def mark_repeats(self, hashes: np.ndarray) -> np.ndarray:
        """True where a hash was seen in an earlier chunk or earlier in this one; then remember all."""
        repeats = ~pl.Series(hashes).is_first_distinct().to_numpy()
        candidates = np.flatnonzero(self.filter[hashes >> self.shift] & ~repeats)
        if len(candidates):
            repeats[candidates[self._contains(hashes[candidates])]] = True
        fresh = hashes[~repeats]
        if len(fresh):
            self.filter[fresh >> self.shift] = 1
            self.runs.append(np.sort(fresh))
            while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
                last = self.runs.pop()
                # Two sorted runs: the stable sort merges them in linear time.
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")
        return repeats


class Suppress(Protocol):
    """Where opt-outs suppress a member's writes (bss.lifecycle.optout.MemberSuppression)."""

    def __call__(
        self, user_kind: np.ndarray, user_key: list[str] | pa.Array, seq: np.ndarray
    ) -> np.ndarray:
        """(user kinds, user keys, seqs) of writes -> where an opt-out suppresses one."""
        ...

    def candidates(self, user_kind: np.ndarray, user_key: pa.Array) -> np.ndarray:
        """Which of these IDs an opt-out may stand for: a cheap superset, so that the
        writes of the others need no check."""
        ...


class _Aborted(Exception):
    """The engine gave up mid-file (a crash, a lost lease, a shutdown): apply nothing more."""


class _StoreWriter:
    """Hands the engine's batches to the store on a thread of its own, so the store works on
    one chunk while the engine parses the next. At most one batch waits, which keeps memory
    bounded. The store sees the job's batches as one stream (`apply_many`): the embedded
    store writes them all in key order at the end, much faster than one by one."""

    _ABORT = object()

    def __init__(
        self,
        store: MembershipStore,
        progress: Callable[[float], None] | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        self._store = store
        self._progress = progress
        self._written = written
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="bss-store-writer", daemon=True)
        self._thread.start()

    def _batches(self) -> Iterator[pa.Table]:
        while (batch := self._queue.get()) is not None:
            if batch is self._ABORT:
                raise _Aborted
            yield batch
        self._ended = True

    def _run(self) -> None:
        try:
            self._store.apply_many(self._batches(), self._progress, self._written)
        except _Aborted:
            pass
        except BaseException as exc:  # re-raised on the engine's thread
            self._error = exc
            # Take what is still sent, so the engine never blocks on a full queue.
            while not self._ended and self._queue.get() not in (None, self._ABORT):
                pass

    def put(self, batch: pa.Table) -> None:
        self._raise_if_failed()
        self._queue.put(batch)

    def close(self) -> None:
        """Wait until every batch is applied; re-raise a store failure."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without applying what the store has not written yet."""
        self._queue.put(self._ABORT)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


class PairRules:
    """The rules every pair meets, whatever brought it (a file, a real-time post): the segment
    exists, the member may write it, it is active; timestamp, value and expiration are in
    range; the effective expiration (given, else the segment's, else the member default;
    0 = the 180-day maximum, -1 = removal) lies ahead."""

    def __init__(
        self, member_id: int, config: BatchSegmentConfig, registry: SegmentRegistry
    ) -> None:
        self.member_id = member_id
        self.config = config
        self.owners = sorted(config.authorized_owners(member_id))
        segments = registry.frame
        self.by_id = segments.select(
            pl.col("id").alias("seg_id"),
            pl.col("member_id").alias("_owner"),
            pl.col("state").alias("_state"),
            pl.col("expire_minutes").alias("_seg_expire"),
        )
        self.by_code = segments.select(
            pl.col("member_id").alias("_code_owner"),
            pl.col("code_key").alias("_code_key"),
            pl.col("id").alias("_code_id"),
            pl.col("state").alias("_code_state"),
            pl.col("expire_minutes").alias("_code_expire"),
        ).filter(pl.col("_code_key").is_not_null())

    def resolve(self, pairs: pl.DataFrame, now: int) -> pl.DataFrame:
        """Attach the registry's view of each pair's segment and decide its `status`.

        `pairs` has PAIR_SCHEMA's columns; `_segment_ref` names the segment for reasons."""
        max_expiry = now + MAX_LIFETIME_SECONDS
        pairs = pairs.with_columns(
            _code_owner=pl.coalesce(pl.col("seg_member_id"), pl.lit(self.member_id, pl.Int64)),
            _code_key=pl.col("seg_code").str.to_lowercase(),
        )
        pairs = pairs.join(self.by_id, on="seg_id", how="left").join(
            self.by_code, on=["_code_owner", "_code_key"], how="left"
        )
        by_code = pl.col("seg_id").is_null()
        pairs = pairs.with_columns(
            segment_id=pl.when(by_code).then(pl.col("_code_id")).otherwise(pl.col("seg_id")),
            _found=pl.when(by_code)
            .then(pl.col("_code_id").is_not_null())
            .otherwise(pl.col("_owner").is_not_null()),
            _owner=pl.when(by_code).then(pl.col("_code_owner")).otherwise(pl.col("_owner")),
            _state=pl.when(by_code).then(pl.col("_code_state")).otherwise(pl.col("_state")),
            _seg_expire=pl.when(by_code)
            .then(pl.col("_code_expire"))
            .otherwise(pl.col("_seg_expire")),
            _segment_ref=pl.when(by_code)
            .then(pl.col("_code_owner").cast(pl.String) + pl.lit(":") + pl.col("seg_code"))
            .otherwise(pl.col("seg_id").cast(pl.String)),
        )
        expiration = pl.col("expiration")
        given = expiration.is_not_null() & (expiration != EXPIRATION_MEMBER_DEFAULT)
        effective = (
            pl.when(given)
            .then(expiration)
            .when(pl.col("_seg_expire").is_not_null())
            .then(pl.col("_seg_expire"))
            .otherwise(pl.lit(self.config.default_expiration, pl.Int64))
        )
        start = (
            pl.when(pl.col("timestamp").is_not_null() & (pl.col("timestamp") > 0))
            .then(pl.col("timestamp"))
            .otherwise(pl.lit(now, pl.Int64))
        )
        pairs = pairs.with_columns(
            removed=pl.col("removal") | (effective == EXPIRATION_REMOVE),
            timestamp=start,
            # 0 means the maximum lifetime from now; nothing lives past it; a removal's
            # tombstone lives that long too.
            expires_at=pl.when((effective <= 0) | pl.col("removal"))
            .then(pl.lit(max_expiry, pl.Int64))
            .otherwise(pl.min_horizontal(start + effective * 60, pl.lit(max_expiry, pl.Int64))),
        )
        status = (
            pl.when(~pl.col("_found"))
            .then(pl.lit(INVALID_SEGMENT))
            .when(~pl.col("_owner").is_in(self.owners))
            .then(pl.lit(UNAUTH_SEGMENT))
            .when(pl.col("_state") != "active")
            .then(pl.lit(INACTIVE_SEGMENT))
            .when(pl.col("timestamp_invalid"))
            .then(pl.lit(INVALID_TIMESTAMP))
            .when(pl.col("value_invalid") | pl.col("expiration_invalid"))
            .then(pl.lit(OTHER_ERROR))
            .when(~pl.col("removed") & (pl.col("expires_at") <= now))
            .then(pl.lit(PAST_EXPIRATION))
            .otherwise(pl.lit(VALID))
        )
        return pairs.with_columns(status=status)


def store_batch(valid: pl.DataFrame, seq: pl.Expr) -> pa.Table:
    """Valid pairs as the store takes them (APPLY_SCHEMA), each with the seq `seq` gives it."""
    batch = valid.select(
        "user_kind",
        "user_key",
        "segment_id",
        "value",
        "timestamp",
        "expires_at",
        "removed",
        seq=seq,
    )
    return batch.to_arrow().cast(APPLY_SCHEMA)


def problem_reason() -> pl.Expr:
    """Why a resolved pair whose status is not VALID was rejected (the error report's text)."""
    return (
        pl.when(pl.col("status") == INVALID_SEGMENT)
        .then(pl.lit("segment ") + pl.col("_segment_ref") + pl.lit(" does not exist"))
        .when(pl.col("status") == UNAUTH_SEGMENT)
        .then(pl.lit("segment ") + pl.col("_segment_ref") + pl.lit(" is not yours to write"))
        .when(pl.col("status") == INACTIVE_SEGMENT)
        .then(pl.lit("segment ") + pl.col("_segment_ref") + pl.lit(" is inactive"))
        .when(pl.col("status") == INVALID_TIMESTAMP)
        .then(pl.lit("TIMESTAMP is not whole UNIX seconds"))
        .when(pl.col("value_invalid"))
        .then(pl.lit("VALUE outside -2147483648..2147483647"))
        .when(pl.col("expiration_invalid"))
        .then(pl.lit("EXPIRATION below -2"))
        .when(pl.col("status") == OPTED_OUT)
        .then(pl.lit("the user opted out"))
        .otherwise(
            pl.lit("segment ") + pl.col("_segment_ref") + pl.lit(" expired before processing")
        )
    )


class _Job:
    """The state of one file's ingestion across chunks."""

    def __init__(
        self,
        *,
        member_id: int,
        seq_base: int,
        config: BatchSegmentConfig,
        registry: SegmentRegistry,
        store: MembershipStore,
        now: int,
        report: ErrorReport,
        on_applied: Callable[[pl.DataFrame], None] | None = None,
        write_progress: Callable[[float], None] | None = None,
        suppress: Suppress | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        self.member_id = member_id
        self.suppress = suppress
        self.config = config
        self.writer = _StoreWriter(store, write_progress, written)
        self.now = now
        self.report = report
        self.result = IngestResult()
        self.seq_base = seq_base
        self.pairs_seen = 0
        self.invalid_lines = 0
        self.seen = _SeenLines()
        self.problem_segments: dict[str, set[str]] = {name: set() for name in DEDUPLICATED}
        self.added: Counter[int] = Counter()
        self.removed: Counter[int] = Counter()
        self.rules = PairRules(member_id, config, registry)
        self.on_applied = on_applied

    # -- lines ---------------------------------------------------------------------------

    def _mark_duplicates(self, lines: pl.DataFrame, given: pl.Series | None) -> pl.DataFrame:
        well_formed = lines["format_error"].is_null().to_numpy()
        hashes = (lines["raw"].hash(seed=0) if given is None else given).to_numpy()
        repeats = np.zeros(len(lines), dtype=bool)
        repeats[well_formed] = self.seen.mark_repeats(hashes[well_formed])
        if not repeats.any():
            return lines
        return lines.with_columns(
            format_error=pl.when(pl.Series(repeats))
            .then(pl.lit(REASON_DUPLICATE))
            .otherwise(pl.col("format_error"))
        )

    def _cut_at_invalid_limit(
        self, lines: pl.DataFrame, pairs: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
        """Keep lines up to the one that takes the invalid count past num_invalid_before_error."""
        limit = self.config.num_invalid_before_error
        if limit is None:
            return lines, pairs, False
        invalid = (lines["format_error"].is_not_null() | lines["user_error"].is_not_null()).cast(
            pl.Int64
        )
        running = invalid.cum_sum() + self.invalid_lines
        over = (running > limit).arg_true()
        if over.is_empty():
            return lines, pairs, False
        last_line = lines["line_no"][int(over[0])]
        return (
            lines.filter(pl.col("line_no") <= last_line),
            pairs.filter(pl.col("line_no") <= last_line),
            True,
        )

    # -- pairs ---------------------------------------------------------------------------

    def _resolve(self, pairs: pl.DataFrame) -> pl.DataFrame:
        return self.rules.resolve(pairs, self.now)

    def process(self, chunk: ParsedChunk) -> bool:
        """Validate and apply one chunk; True when the job must stop here."""
        lines = self._mark_duplicates(chunk.lines, chunk.line_hashes)
        lines, pairs, stop = self._cut_at_invalid_limit(lines, chunk.pairs)
        counters = self.result.counters
        self.result.lines_read += len(lines)
        format_bad = lines["format_error"].is_not_null()
        user_bad = ~format_bad & lines["user_error"].is_not_null()
        n_format, n_user = int(format_bad.sum()), int(user_bad.sum())
        counters.num_invalid_format += n_format
        counters.num_invalid_user += n_user
        counters.num_valid_user += len(lines) - n_format - n_user
        self.invalid_lines += n_format + n_user

        good_lines = lines.filter(~format_bad & ~user_bad).select(
            "line_no", "user_kind", "user_key"
        )
        if not pairs.is_empty() and not pairs["line_no"].is_sorted():
            pairs = pairs.sort("line_no", "pos")
        # File order index of every pair, before any is dropped, so that seq is stable.
        pairs = pairs.with_row_index("_index", offset=self.pairs_seen)
        self.pairs_seen += len(pairs)
        pairs = self._resolve(pairs.join(good_lines, on="line_no", how="inner"))
        if self.suppress is not None and not pairs.is_empty():
            pairs = self._mark_opted_out(pairs, good_lines)

        valid = pairs.filter(pl.col("status") == VALID)
        self._apply(valid)
        if self.on_applied is not None and not valid.is_empty():
            self.on_applied(valid.select("segment_id", "user_kind", "user_key", "removed"))
        self._count_pairs(pairs, valid)
        self._report(lines, format_bad, user_bad, pairs, chunk.render_raw)
        return stop

    def _mark_opted_out(self, pairs: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
        """Valid pairs an opt-out suppresses at their seq become OPTED_OUT. The lines' IDs
        are sifted first, as Arrow in numpy (a line's pairs share its ID): only the pairs of
        the few lines left are checked, with a Python string each."""
        assert self.suppress is not None
        flagged = self.suppress.candidates(
            lines["user_kind"].to_numpy(), lines["user_key"].to_arrow()
        )
        if not flagged.any():
            return pairs
        rows = pairs["line_no"].is_in(lines["line_no"].filter(pl.Series(flagged))).arg_true()
        checked = pairs[rows]
        seq = (checked["_index"].cast(pl.Int64) + self.seq_base).to_numpy()
        hit = self.suppress(checked["user_kind"].to_numpy(), checked["user_key"].to_list(), seq)
        hit &= (checked["status"] == VALID).to_numpy()
        if not hit.any():
            return pairs
        mask = np.zeros(len(pairs), dtype=bool)
        mask[rows.to_numpy()[hit]] = True
        return pairs.with_columns(
            status=pl.when(pl.Series(mask)).then(pl.lit(OPTED_OUT)).otherwise(pl.col("status"))
        )

    def _apply(self, valid: pl.DataFrame) -> None:
        if valid.is_empty():
            return
        self.writer.put(store_batch(valid, pl.col("_index").cast(pl.Int64) + self.seq_base))

    def _count_pairs(self, pairs: pl.DataFrame, valid: pl.DataFrame) -> None:
        counters = self.result.counters
        counters.num_valid += len(valid)
        per_segment = valid.group_by("segment_id", "removed").len()
        for segment_id, removed, n in per_segment.iter_rows():
            (self.removed if removed else self.added)[segment_id] += n
            if removed:
                self.result.pairs_removed += n
            else:
                self.result.pairs_added += n
        problems = pairs.filter(pl.col("status") != VALID)
        if problems.is_empty():
            return
        for status, n in problems.group_by("status").len().iter_rows():
            if status == OPTED_OUT:
                self.result.num_opted_out += n
            elif status not in DEDUPLICATED:
                setattr(counters, status, getattr(counters, status) + n)
        for status in DEDUPLICATED:
            refs = problems.filter(pl.col("status") == status)["_segment_ref"].unique()
            self.problem_segments[status].update(refs.to_list())
            setattr(counters, status, len(self.problem_segments[status]))

    def _report(
        self,
        lines: pl.DataFrame,
        format_bad: pl.Series,
        user_bad: pl.Series,
        pairs: pl.DataFrame,
        render_raw: Callable[[pl.Series], pl.Series] | None,
    ) -> None:
        line_entries = pl.concat(
            [
                lines.filter(format_bad).select(
                    "line_no",
                    pos=pl.lit(-1, pl.Int32),
                    counter=pl.lit("num_invalid_format"),
                    reason="format_error",
                    raw="raw",
                ),
                lines.filter(user_bad).select(
                    "line_no",
                    pos=pl.lit(-1, pl.Int32),
                    counter=pl.lit("num_invalid_user"),
                    reason="user_error",
                    raw="raw",
                ),
            ]
        )
        problems = pairs.filter(pl.col("status") != VALID)
        if not problems.is_empty():
            reasons = problem_reason()
            raw_of = lines.select("line_no", "raw")
            pair_entries = problems.select("line_no", "pos", counter="status", reason=reasons).join(
                raw_of, on="line_no", how="left"
            )
            line_entries = pl.concat([line_entries, pair_entries])
        if line_entries.is_empty():
            return
        if render_raw is not None:  # the reader builds `raw` only for the lines reported
            needed = line_entries["line_no"].unique(maintain_order=True)
            rendered = pl.DataFrame({"line_no": needed, "_raw": render_raw(needed)})
            line_entries = (
                line_entries.join(rendered, on="line_no", how="left")
                .with_columns(raw=pl.col("_raw"))
                .drop("_raw")
            )
        self.report.add(line_entries.sort("line_no", "pos").drop("pos"))

    # -- results -------------------------------------------------------------------------

    def finish(self) -> IngestResult:
        self.writer.close()
        self.result.error_log_lines = self.report.log_lines() if self.report.total else None
        self.result.segment_log_lines = segment_log(self.added, self.removed)
        self.result.added_by_segment = self.added
        self.result.removed_by_segment = self.removed
        return self.result


def segment_log(added: Counter[int], removed: Counter[int]) -> str:
    """`added:` and `removed:` lists of SEG_ID:COUNT, by count descending, each capped."""

    def ranked(counts: Counter[int]) -> list[str]:
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [f"{seg}:{n}" for seg, n in order[:DEFAULT_SEGMENT_LOG_LINES]]

    return "\n".join(["added:", *ranked(added), "removed:", *ranked(removed)])


def ingest_file(
    path: Path,
    *,
    member_id: int,
    seq_base: int,
    config: BatchSegmentConfig,
    registry: SegmentRegistry,
    store: MembershipStore,
    now: int,
    error_report_path: Path | None = None,
    max_decompressed_bytes: int,
    chunk_bytes: int = 4 << 20,
    progress: Callable[[float], None] | None = None,
    write_progress: Callable[[float], None] | None = None,
    on_applied: Callable[[pl.DataFrame], None] | None = None,
    suppress: Suppress | None = None,
    written: WrittenKeys | None = None,
) -> IngestResult:
    """Validate and apply one uploaded file; never raises for bad input.

    `progress` hears the fraction of the file read, `write_progress` the fraction written of
    what the store held back until the file was read (see `MembershipStore.apply_many`);
    an exception either raises stops the job (what is written stays written).

    Pair i of the file (in file order, counting pairs that are not applied) is written with
    seq `seq_base + i`: the job's reserved range (bss.store.base.JOB_SEQ_SPAN), so a replay
    with the same base rewrites the same entries and changes nothing.

    `suppress` (bss.lifecycle.optout) tells which valid pairs an opt-out suppresses at
    their seq: they are not applied, counted in `num_opted_out` and reported.

    `written` (a replace job's, from the store's `written_keys`) keeps the keys the store
    writes, for its `drop_below`.

    A file that cannot be read (corrupt, refused compression, too large once decompressed)
    or that passes num_invalid_before_error ends with `error_code` set; what was applied
    before that stays applied, as documented.
    """
    with ErrorReport(error_report_path, config.num_error_log_lines) as report:
        job = _Job(
            member_id=member_id,
            seq_base=seq_base,
            config=config,
            registry=registry,
            store=store,
            now=now,
            report=report,
            on_applied=on_applied,
            write_progress=write_progress,
            suppress=suppress,
            written=written,
        )
        try:
            with open_input(path, max_decompressed_bytes) as source:
                chunks = read_chunks(
                    source, config=config, member_id=member_id, chunk_bytes=chunk_bytes
                )
                for chunk in chunks:
                    stop = job.process(chunk)
                    if progress is not None:
                        progress(source.fraction_read())
                    if stop:
                        job.result.error_code = TOO_MANY_INVALID
                        job.result.error_message = (
                            "more than num_invalid_before_error "
                            f"({config.num_invalid_before_error}) invalid lines"
                        )
                        break
        except InputError as exc:
            job.result.error_code = exc.error_code
            job.result.error_message = exc.message
        except BaseException:
            with contextlib.suppress(BaseException):
                job.writer.abort()  # stop the writer thread; the original error matters
            raise
        return job.finish()
