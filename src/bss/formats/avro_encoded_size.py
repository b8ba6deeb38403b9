"""How many bytes values take in Avro's binary encoding, computed from their decoded form.

The native reader takes DuckDB's decoding of a block only when the records it decoded take
up exactly the block's bytes: a damaged block that DuckDB decodes anyway (where fastavro,
the reference, would stop) decodes to values of other sizes. Everything is vectorized over
Arrow arrays; a null where the schema allows none makes the sizes unknown (None).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Sizes = np.ndarray | None


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each long in zig-zag varint encoding."""
    values = values.astype(np.int64, copy=False)
    sizes = np.ones(len(values), dtype=np.int64)
    if not len(values) or (values.min() >= -64 and values.max() <= 63):
        return sizes  # all one byte (zeros, small counts): the common case, no zig-zag
    zigzag = ((values << 1) ^ (values >> 63)).view(np.uint64)
    largest = int(zigzag.max())
    for k in range(1, 10):
        bound = 1 << (7 * k)
        if largest < bound:
            break
        sizes += zigzag >= np.uint64(bound)
    return sizes


def _ints(array: pa.Array) -> np.ndarray:
    if array.null_count:
        array = array.fill_null(0)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)


def _without_nulls(array: pa.Array, allow_null: bool) -> bool:
    return allow_null or array.null_count == 0


def value_sizes(  # noqa: C901  one branch per Avro type, as the spec's encoding table lists them
    array: pa.Array, schema: Any, named: dict[str, Any], allow_null: bool = False
) -> Sizes:
    """Encoded size of each value of `array` (0 where null, if `allow_null`)."""
    if isinstance(schema, str) and schema in named:
        return value_sizes(array, named[schema], named, allow_null)
    if isinstance(schema, list):
        return _union_sizes(array, schema, named, allow_null)
    kind = schema if isinstance(schema, str) else schema.get("type")
    if isinstance(kind, (dict, list)):
        return value_sizes(array, kind, named, allow_null)
    n = len(array)
    if kind == "null":
        return np.zeros(n, dtype=np.int64)
    if not _without_nulls(array, allow_null):
        return None
    if kind == "boolean":
        return np.ones(n, dtype=np.int64)
    if kind in ("int", "long"):
        return varint_sizes(_ints(array))
    if kind in ("string", "bytes"):
        lengths = _ints(pc.binary_length(array))
        return varint_sizes(lengths) + lengths
    if kind == "fixed":
        size = int(schema["size"])
        if (
            _ints(pc.binary_length(array))[array.is_valid().to_numpy(zero_copy_only=False)] != size
        ).any():
            return None
        return np.full(n, size, dtype=np.int64)
    if kind == "enum":
        if isinstance(array.type, pa.DictionaryType):
            return varint_sizes(_ints(array.indices))
        symbols = {s: i for i, s in enumerate(schema["symbols"])}
        indices = [symbols.get(v, -1) for v in array.to_pylist()]
        return varint_sizes(np.array(indices, dtype=np.int64))
    if kind == "array":
        return _array_sizes(array, schema["items"], named)
    if kind == "record":
        total = np.zeros(n, dtype=np.int64)
        children = array.flatten()
        for field, child in zip(schema["fields"], children, strict=True):
            sizes = value_sizes(child, field["type"], named, allow_null or array.null_count > 0)
            if sizes is None:
                return None
            total += sizes
        return total
    return None


def _union_sizes(
    array: pa.Array, branches: list[Any], named: dict[str, Any], allow_null: bool
) -> Sizes:
    """A union of null and one other type (DuckDB gives it as a nullable value)."""
    real = [(i, b) for i, b in enumerate(branches) if b != "null"]
    nulls = [i for i, b in enumerate(branches) if b == "null"]
    if len(real) != 1:
        return None
    index, branch = real[0]
    sizes = value_sizes(array, branch, named, allow_null=True)
    if sizes is None:
        return None
    present = varint_sizes(np.array([index]))[0] + sizes
    if not nulls:
        return present if _without_nulls(array, allow_null) else None
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return np.where(valid, present, varint_sizes(np.array([nulls[0]]))[0])


def _array_sizes(array: pa.Array, items: Any, named: dict[str, Any]) -> Sizes:
    counts = _ints(pc.list_value_length(array))
    flat = pc.list_flatten(array)
    item_sizes = value_sizes(flat, items, named)
    if item_sizes is None:
        return None
    # Items of consecutive arrays are consecutive: per-array sums from a running total.
    running = np.concatenate([[0], np.cumsum(item_sizes, dtype=np.int64)])
    ends = np.cumsum(counts, dtype=np.int64)
    sums = running[ends] - running[ends - counts]
    # A non-empty array is one block: its count, its items, then the 0 that ends it.
    return np.where(counts == 0, 1, varint_sizes(counts) + sums + 1)


def union_by_tag_sizes(
    tags: pa.Array, branches: dict[int, pa.Array], schema: list[Any], named: dict[str, Any]
) -> Sizes:
    """A union of several non-null types, given as its branch index per row (null for the
    null branch) and one array per branch (null on the other branches' rows)."""
    tag = np.asarray(tags.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    total = np.full(len(tag), -1, dtype=np.int64)
    for index, array in branches.items():
        sizes = value_sizes(array, schema[index], named, allow_null=True)
        if sizes is None:
            return None
        rows = tag == index
        total[rows] = varint_sizes(np.array([index]))[0] + sizes[rows]
    nulls = [i for i, b in enumerate(schema) if b == "null"]
    if nulls:
        total[tag == -1] = varint_sizes(np.array([nulls[0]]))[0]
    return None if (total < 0).any() else total


def blocks_match(record_sizes: np.ndarray, counts: list[int], lengths: list[int]) -> bool:
    """Whether each block's records add up to exactly the block's bytes."""
    if len(record_sizes) != sum(counts):
        return False
    if not counts:
        return True
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    nonempty = np.array(counts) > 0
    per_block = np.zeros(len(counts), dtype=np.int64)
    per_block[nonempty] = np.add.reduceat(record_sizes, starts[nonempty])
    return bool((per_block == np.array(lengths, dtype=np.int64)).all())
