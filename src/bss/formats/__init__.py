"""File formats: uploaded bytes -> ParsedChunk records (legacy text and Avro)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError, open_input
from bss.formats.records import ParsedChunk

__all__ = ["InputError", "ParsedChunk", "read_chunks"]


def read_chunks(
    path: Path,
    *,
    config: BatchSegmentConfig,
    member_id: int,
    max_decompressed_bytes: int,
    chunk_bytes: int,
) -> Iterator[ParsedChunk]:
    """Parse a file chunk by chunk, whichever format it is in. Raises InputError."""
    with open_input(path, max_decompressed_bytes) as (kind, stream, _size):
        if kind == "avro":
            from bss.formats.avro import iter_avro_chunks

            yield from iter_avro_chunks(stream, config, member_id)
        else:
            from bss.formats.legacy import iter_legacy_chunks

            yield from iter_legacy_chunks(stream, config, member_id, chunk_bytes)
