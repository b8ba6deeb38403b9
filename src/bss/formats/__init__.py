"""File formats: uploaded bytes -> ParsedChunk records (legacy text and Avro)."""

from __future__ import annotations

from collections.abc import Iterator

from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError, InputFile, open_input
from bss.formats.records import ParsedChunk

__all__ = ["InputError", "InputFile", "ParsedChunk", "open_input", "read_chunks"]


def read_chunks(
    source: InputFile, *, config: BatchSegmentConfig, member_id: int, chunk_bytes: int
) -> Iterator[ParsedChunk]:
    """Parse an opened file chunk by chunk, whichever format it is in. Raises InputError."""
    if source.kind == "avro":
        from bss.formats.avro import iter_avro_chunks

        yield from iter_avro_chunks(
            source.stream, config, member_id, max_decompressed_bytes=source.max_decompressed_bytes
        )
    else:
        from bss.formats.legacy import iter_legacy_chunks
        from bss.read_ahead import read_ahead

        # The next chunk is parsed on a thread of its own while the engine validates this
        # one: each step alone leaves part of the two cores idle.
        yield from read_ahead(iter_legacy_chunks(source.stream, config, member_id, chunk_bytes))
