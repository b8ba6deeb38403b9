"""The Avro reader: an Avro object container file -> ParsedChunk records.

One Avro record is one "line": a user (`uid`, a union of ID types) and its `segments`.

    avro_container   header, blocks, sync markers, codecs: checked and bounded
    avro_schema      the writer schema: checked, and the plan for reading its records
    avro_native      the fast path: DuckDB's avro extension decodes batches of blocks,
                     Polars applies the rules, `raw` is built only for reported records
    avro_reference   fastavro decodes record by record; the rules run per record
    avro_rules       the rules themselves (user IDs, segments)

`iter_avro_chunks` reads the framing once and sends each batch of checked blocks to the
native reader when it can take it, to the reference reader otherwise (see avro_native);
both give the same lines, pairs, duplicates and errors.
"""

from __future__ import annotations

import itertools
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from bss.formats.avro_container import (
    CORRUPT,
    DEFAULT_MAX_BLOCK_BYTES,
    SUPPORTED_CODECS,
    ByteSource,
    DecompressionBudget,
    Header,
    iter_blocks,
    read_header,
)
from bss.formats.avro_native import (
    BATCH_BYTES,
    Block,
    NativeDecoder,
    RawRenderer,
    extension_path,
    native_chunk,
)
from bss.formats.avro_reference import open_records, reference_chunks
from bss.formats.avro_schema import (
    PUBLISHED_SCHEMA_FILE,
    SCHEMA_INVALID,
    UID_BRANCHES,
    ReadPlan,
    plan_reading,
    published_schema,
)
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError
from bss.formats.records import ParsedChunk
from bss.read_ahead import read_ahead

#: Batches decoded at the same time, each by a DuckDB connection on a thread of its own.
DECODERS = 2

__all__ = [
    "CORRUPT",
    "DEFAULT_MAX_BLOCK_BYTES",
    "PUBLISHED_SCHEMA_FILE",
    "SCHEMA_INVALID",
    "SUPPORTED_CODECS",
    "UID_BRANCHES",
    "iter_avro_chunks",
    "published_schema",
]


def _batches(blocks: Iterator[Block]) -> Iterator[tuple[list[Block], InputError | None]]:
    """Blocks gathered up to BATCH_BYTES; a framing error ends the last batch, with it.

    The first DECODERS batches are smaller, so that the engine gets its first batch
    sooner instead of waiting with a core idle while the decoders fill the pipeline.
    """
    batch: list[Block] = []
    size = 0
    made = 0
    while True:
        try:
            block = next(blocks, None)
        except InputError as exc:
            yield batch, exc
            return
        if block is None:
            if batch:
                yield batch, None
            return
        batch.append(block)
        size += len(block[1])
        if size >= (BATCH_BYTES if made >= DECODERS else BATCH_BYTES // 4):
            yield batch, None
            batch, size, made = [], 0, made + 1


def _then_raise(blocks: Iterable[Block], error: InputError | None) -> Iterator[Block]:
    yield from blocks
    if error is not None:
        raise error


def iter_avro_chunks(
    stream: BinaryIO,
    config: BatchSegmentConfig,
    member_id: int,
    records_per_chunk: int = 100_000,
    *,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    max_decompressed_bytes: int | None = None,
    native: bool = True,
) -> Iterator[ParsedChunk]:
    """Parse an Avro object container file into chunks of records, in file order.

    The reference reader makes chunks of up to `records_per_chunk` records (fewer when they
    are heavy); the native reader makes one chunk per batch of blocks, with `raw` left to
    the chunk's `render_raw`. `native=False` reads with the reference reader only.

    Raises InputError: "corrupt_avro" (bad header, bad or truncated block, sync marker
    mismatch, undecodable record), "avro_schema_invalid" (no `uid` / `segments`, or a uid
    with no recognisable ID type), "unsupported_compression" (an unknown codec),
    "decompression_limit_exceeded" (a block or the file expands past the limits).
    Records already yielded stay valid: an error ends the file where it is found.
    """
    if records_per_chunk < 1:
        raise ValueError("records_per_chunk must be at least 1")
    src = ByteSource(stream)
    header = read_header(src)
    plan = plan_reading(header.schema_json)
    blocks = iter_blocks(src, header, DecompressionBudget(max_block_bytes, max_decompressed_bytes))

    def offset() -> int:
        return src.offset

    extension = extension_path() if native and plan.not_native is None else None
    if extension is None:
        yield from reference_chunks(
            header, plan, blocks, config, member_id, records_per_chunk, input_offset=offset
        )
        return

    open_records(header, iter(()))  # the same schema check the reference reader makes
    # The batches are decoded on a thread of their own while the engine validates the
    # previous one (DuckDB, Polars and zlib release the GIL): the two cores both work.
    yield from read_ahead(
        _native_chunks(
            header, plan, blocks, extension, config, member_id, records_per_chunk, offset
        )
    )


def _native_chunks(
    header: Header,
    plan: ReadPlan,
    blocks: Iterator[Block],
    extension: Path,
    config: BatchSegmentConfig,
    member_id: int,
    records_per_chunk: int,
    offset: Callable[[], int],
) -> Iterator[ParsedChunk]:
    """The file's chunks in order; DECODERS batches are decoded at the same time.

    Each batch goes to a worker thread of its own (DuckDB, Polars and numpy release the
    GIL, so the workers and the engine share both cores); the batches are handed on in
    file order. When a batch cannot be read natively, the batches decoded after it are
    dropped and the reference reader reads from that batch on.
    """
    idle: queue.SimpleQueue[NativeDecoder] = queue.SimpleQueue()
    decoders = [NativeDecoder(header, plan, extension) for _ in range(DECODERS)]
    for decoder in decoders:
        idle.put(decoder)
    branches = decoders[0].branches

    def decode(batch: list[Block], first_line_no: int) -> tuple[Any, ...] | None:
        if not batch:  # a framing error right after the previous batch
            return None
        decoder = idle.get()
        try:
            table = decoder.decode(batch)
        finally:
            idle.put(decoder)
        if table is None:
            return None
        return native_chunk(table, branches, first_line_no, config, member_id)

    pending: deque[tuple[Future[tuple[Any, ...] | None], list[Block], InputError | None, int]]
    pending = deque()
    line_no = 0
    pool = ThreadPoolExecutor(DECODERS, thread_name_prefix="bss-avro-decode")
    try:
        batches = _batches(blocks)
        while True:
            # Keep every decoder busy: the next batches are framed while they decode.
            while len(pending) < DECODERS:
                item = next(batches, None)
                if item is None:
                    break
                batch, error = item
                pending.append((pool.submit(decode, batch, line_no), batch, error, line_no))
                line_no += sum(count for count, _ in batch)
            if not pending:
                return
            future, batch, error, first = pending.popleft()
            decoded = future.result()
            if decoded is None:
                # DuckDB could not read this batch (a damaged record, or something it does
                # not support): the reference reader takes it from here, to the record.
                later = [b for _, bs, _, _ in pending for b in bs]
                last_error = pending[-1][2] if pending else error
                ended = last_error is not None
                rest = itertools.chain(batch, later, () if ended else blocks)
                yield from reference_chunks(
                    header,
                    plan,
                    _then_raise(rest, last_error),
                    config,
                    member_id,
                    records_per_chunk,
                    first_line_no=first,
                    input_offset=offset,
                    hash_bytes=not decoders[0].hash_in_query,
                )
                return
            lines, pairs, hashes = decoded
            yield ParsedChunk(
                lines=lines,
                pairs=pairs,
                input_offset=offset(),
                line_hashes=hashes,
                render_raw=RawRenderer(header, plan, batch, first),
            )
            if error is not None:
                raise error
    finally:
        for future, *_ in pending:
            future.cancel()
        pool.shutdown(wait=True)
        for decoder in decoders:
            decoder.close()
